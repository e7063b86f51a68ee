"""The proxy believes an inspector's answer only when it is complete (issue 11, item 5).

A real aiohttp server stands in for the inspector and answers whatever a case says; the real
:class:`InspectorClient` reads it. Every incomplete or malformed answer must raise
:class:`InspectorInvalidAnswer` naming the field, transport failures :class:`InspectorUnavailable`,
and a timeout must stay a :class:`TimeoutError` for the addon to map.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from classifiers.client import InspectorClient, InspectorUnreachable, parse_answer
from classifiers.registry import build_detectors, expected_detector_names
from promptfence.config import Config, InspectorConfig, LLMConfig, MemoryConfig, PromptGuardConfig, TopicsConfig
from promptfence.core import (
    DetectorRun,
    DetectorStatus,
    Finding,
    Identity,
    Inspection,
    Operation,
    OperationKind,
    Span,
    Topic,
)
from promptfence.errors import InspectorInvalidAnswer, InspectorUnavailable
from tests.support.procs import free_port

PROMPT = "my SSN is 219-09-9999, keep it secret"
DEFAULT_DETECTORS = expected_detector_names(InspectorConfig(), MemoryConfig())


def operation(prompt: str = PROMPT) -> Operation:
    return Operation("chatgpt", "genai_chat", "chatgpt.conversation", OperationKind.SEND_PROMPT, Identity("u"), prompt)


def complete(**changes: Any) -> dict[str, Any]:
    """A complete answer for the default detectors, as the real inspector writes it."""
    inspection = Inspection(
        findings=(Finding("presidio", "pii.US_SSN", Topic.PII, 0.9, Span(10, 21), "rule US_SSN"),),
        topics={Topic.PII: 0.9},
        runs=tuple(DetectorRun(name, DetectorStatus.OK, 1.5) for name in DEFAULT_DETECTORS),
        elapsed_ms=3.0,
        transforms=("unicode",),
        uncovered=(Topic.CUSTOMER_DATA,),
        notes=("invalid_unicode_replaced",),
    )
    data = inspection.to_dict()
    data.update(changes)
    return data


@dataclass
class Inspector:
    """What the stand-in inspector answers next, and what it was sent."""

    status: int = 200
    body: bytes = b"{}"
    hang: bool = False
    release: asyncio.Event = field(default_factory=asyncio.Event)
    received: list[bytes] = field(default_factory=list)

    def answer(self, data: Any, status: int = 200) -> None:
        self.status, self.body = status, data if isinstance(data, bytes) else json.dumps(data).encode()


@pytest.fixture
async def inspector() -> AsyncIterator[tuple[Inspector, str]]:
    state = Inspector()

    async def handle(request: web.Request) -> web.Response:
        state.received.append(await request.read())
        if state.hang:
            await state.release.wait()
        return web.Response(status=state.status, body=state.body, content_type="application/json")

    app = web.Application()
    app.router.add_post("/v1/inspect", handle)
    server = TestServer(app)
    await server.start_server()
    try:
        yield state, str(server.make_url("/"))
    finally:
        state.release.set()
        await server.close()


async def ask(url: str, *, expected: tuple[str, ...] = DEFAULT_DETECTORS, timeout_s: float = 10.0) -> Inspection:
    client = InspectorClient(url, timeout_s=timeout_s, expected_detectors=expected)
    try:
        return await client.inspect(operation())
    finally:
        await client.close()


# --- complete answers are believed ------------------------------------------------------------


async def test_a_complete_answer_is_read_back_whole(inspector: tuple[Inspector, str]) -> None:
    state, url = inspector
    state.answer(complete())
    inspection = await ask(url)
    assert inspection.detectors_run == DEFAULT_DETECTORS
    assert inspection.topics == {Topic.PII: 0.9}
    assert inspection.findings[0].span == Span(10, 21)
    assert inspection.notes == ("invalid_unicode_replaced",)


async def test_extra_runs_and_failed_runs_are_a_complete_answer(inspector: tuple[Inspector, str]) -> None:
    """A failed detector is a complete answer (the policy's on_error decides), not a broken one."""
    state, url = inspector
    runs = complete()["runs"]
    runs[0] = {"detector": "presidio", "status": "timeout", "elapsed_ms": 5000.0, "error": "deadline 5s"}
    runs.append({"detector": "llm", "status": "ok", "elapsed_ms": 1.0, "error": None})
    state.answer(complete(runs=runs))
    inspection = await ask(url)
    assert inspection.failed_detectors == ("presidio",)


# --- incomplete or malformed answers are failures ----------------------------------------------


def without_runs(*names: str) -> dict[str, Any]:
    return complete(runs=[r for r in complete()["runs"] if r["detector"] not in names])


def with_topic(value: Any) -> dict[str, Any]:
    return complete(topics={"PII": value})


def with_finding(**changes: Any) -> dict[str, Any]:
    finding = {**complete()["findings"][0], **changes}
    return complete(findings=[finding])


def with_run(**changes: Any) -> dict[str, Any]:
    runs = complete()["runs"]
    runs[1] = {**runs[1], **changes}
    return complete(runs=runs)


def nested(depth: int) -> bytes:
    return b'{"topics": ' + b"[" * depth + b"]" * depth + b', "findings": [], "runs": []}'


MALFORMED: list[tuple[str, Any, str]] = [
    ("empty object", {}, "answer missing field topics"),
    ("no runs", {"topics": {}, "findings": [], "runs": []}, f"answer missing runs for {', '.join(DEFAULT_DETECTORS)}"),
    ("two runs missing", without_runs("presidio", "secrets"), "answer missing runs for presidio, secrets"),
    ("runs missing", {"topics": {}, "findings": []}, "answer missing field runs"),
    ("findings missing", {"topics": {}, "runs": complete()["runs"]}, "answer missing field findings"),
    ("not an object", [complete()], "answer is not a JSON object"),
    ("null", None, "answer is not a JSON object"),
    ("not JSON", b"<html>502 Bad Gateway</html>", "answer is not JSON"),
    ("not UTF-8", b'{"topics": "\xff"}', "answer is not JSON"),
    ("truncated", json.dumps(complete()).encode()[:-20], "answer is not JSON"),
    ("too deep", nested(100_000), "answer is not JSON"),
    ("a 5000-digit number", b'{"topics": {"PII": 1' + b"0" * 5000 + b"}}", "answer is not JSON"),
    ("NaN", b'{"topics": {"PII": NaN}, "findings": [], "runs": []}', "answer has a non-finite number (NaN or Infinity)"),
    ("score not a number", with_topic({"score": "high", "confidence": "high"}), "field topics.PII.score is not a number"),
    ("score missing", with_topic({"confidence": "high"}), "answer missing field topics.PII.score"),
    ("score a boolean", with_topic(True), "answer field topics.PII is not a number"),
    ("score above 1", with_topic(1.5), "answer field topics.PII is not between 0 and 1"),
    ("score below 0", with_topic({"score": -0.1}), "answer field topics.PII.score is not between 0 and 1"),
    ("score overflows", json.dumps(with_topic("X")).replace('"X"', "1e400").encode(), "answer field topics.PII is not a finite number"),
    ("topics a list", complete(topics=[["PII", 0.9]]), "answer field topics is not an object"),
    ("unknown topic", complete(topics={"HOBBIES": 0.9}), "answer field topics has an unknown topic name"),
    ("findings an object", complete(findings={}), "answer field findings is not a list"),
    ("finding not an object", complete(findings=["PII"]), "answer field findings[0] is not an object"),
    ("finding topic unknown", with_finding(topic="pii"), "answer field findings[0].topic is not a known topic"),
    ("finding score missing", with_finding(score=None), "answer field findings[0].score is not a number"),
    ("finding score above 1", with_finding(score=7), "answer field findings[0].score is not between 0 and 1"),
    ("finding kind missing", with_finding(kind=None), "answer field findings[0].kind is not a string"),
    ("span reversed", with_finding(span=[21, 10]), "answer field findings[0].span is not a valid range"),
    ("span of floats", with_finding(span=[1.0, 2.0]), "answer field findings[0].span is not an integer"),
    ("span of three", with_finding(span=[1, 2, 3]), "answer field findings[0].span is not a [start, end] pair"),
    ("runs an object", complete(runs={"presidio": "ok"}), "answer field runs is not a list"),
    ("run status unknown", with_run(status="fine"), "answer field runs[1].status is not a known status"),
    ("run status missing", with_run(status=None), "answer field runs[1].status is not a known status"),
    ("run detector empty", with_run(detector=""), "answer field runs[1].detector is empty"),
    ("run detector a number", with_run(detector=7), "answer field runs[1].detector is not a string"),
    ("run elapsed negative", with_run(elapsed_ms=-1), "answer field runs[1].elapsed_ms is not at least 0"),
    ("run error a list", with_run(error=["x"]), "answer field runs[1].error is not a string"),
    ("run twice", complete(runs=[*complete()["runs"], complete()["runs"][0]]), "answer has more than one run for presidio"),
    ("elapsed a string", complete(elapsed_ms="3"), "answer field elapsed_ms is not a number"),
    ("transforms a string", complete(transforms="base64"), "answer field transforms is not a list"),
    ("uncovered unknown", complete(uncovered=["X"]), "answer field uncovered[0] is not a known topic"),
    ("notes of numbers", complete(notes=[1]), "answer field notes[0] is not a string"),
    ("memory a string", complete(memory="acme"), "answer field memory is not an object"),
    ("centroid a float", complete(memory={"tenant": "a", "centroids": [1.5]}), "answer field memory.centroids[0] is not an integer"),
    ("neighbour id missing", complete(neighbours=[{"similarity": 0.5, "topic": "PII"}]), "answer field neighbours[0].id is not an integer"),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "message"), [c[1:] for c in MALFORMED], ids=[c[0] for c in MALFORMED])
async def test_an_incomplete_or_malformed_answer_is_an_invalid_answer(
    inspector: tuple[Inspector, str], answer: Any, message: str
) -> None:
    state, url = inspector
    state.answer(answer)
    with pytest.raises(InspectorInvalidAnswer) as raised:
        await ask(url)
    assert message in str(raised.value)
    assert str(raised.value).startswith("answer ")
    assert "219-09-9999" not in str(raised.value)


def test_without_expected_detectors_an_answer_still_needs_a_run() -> None:
    with pytest.raises(InspectorInvalidAnswer, match=r"^answer has no detector runs$"):
        parse_answer(b'{"topics": {}, "findings": [], "runs": []}')
    only = parse_answer(json.dumps(complete(runs=[{"detector": "code", "status": "ok"}])).encode())
    assert only.detectors_run == ("code",)


def test_messages_never_quote_the_answer() -> None:
    """The inspector is not trusted to keep prompt text out of its answer: nothing is echoed."""
    leak = "my SSN is 219-09-9999"
    cases = [
        complete(topics={leak: 0.9}),
        with_finding(topic=leak),
        with_run(status=leak),
        complete(runs=[*complete()["runs"], {"detector": leak, "status": "ok"}, {"detector": leak, "status": "ok"}]),
        with_topic(leak),
    ]
    for case in cases:
        with pytest.raises(InspectorInvalidAnswer) as raised:
            parse_answer(json.dumps(case).encode(), DEFAULT_DETECTORS)
        assert "219" not in str(raised.value) and "SSN" not in str(raised.value)


# --- transport failures -------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 400, 404])
async def test_a_non_200_answer_is_unavailable_not_invalid(inspector: tuple[Inspector, str], status: int) -> None:
    state, url = inspector
    state.answer(complete(), status=status)
    with pytest.raises(InspectorUnavailable) as raised:
        await ask(url)
    assert type(raised.value) is InspectorUnavailable
    assert str(raised.value) == f"inspector answered HTTP {status}"


async def test_a_closed_port_is_connection_refused() -> None:
    with pytest.raises(InspectorUnavailable) as raised:
        await ask(f"http://127.0.0.1:{free_port()}")
    # Unavailable, not an invalid answer; its own subclass tells an inspector pool that nothing
    # was sent, so another inspector may take the prompt (issue 17).
    assert type(raised.value) is InspectorUnreachable
    assert not isinstance(raised.value, InspectorInvalidAnswer)
    assert str(raised.value) == "inspector unreachable: connection refused"


async def test_a_timeout_stays_a_timeout_error(inspector: tuple[Inspector, str]) -> None:
    state, url = inspector
    state.hang = True
    with pytest.raises(TimeoutError) as raised:
        await ask(url, timeout_s=0.2)
    assert not isinstance(raised.value, InspectorUnavailable)


async def test_a_lone_surrogate_travels_as_an_ascii_escape(inspector: tuple[Inspector, str]) -> None:
    state, url = inspector
    state.answer(complete())
    client = InspectorClient(url, expected_detectors=DEFAULT_DETECTORS)
    try:
        await client.inspect(operation("SSN 219-09-9999 \ud800"))
    finally:
        await client.close()
    [body] = state.received
    assert body.isascii() and b"\\ud800" in body
    assert json.loads(body)["operation"]["prompt"] == "SSN 219-09-9999 \ud800"


# --- which detectors a complete answer has -------------------------------------------------------


def test_default_configuration_expects_every_embedded_detector() -> None:
    assert DEFAULT_DETECTORS == ("presidio", "code", "secrets", "intent", "intent_multilingual", "neighbours")
    client = InspectorClient.for_config(Config())
    assert client.expected_detectors == DEFAULT_DETECTORS
    assert client.base_url == Config().inspector.base_url
    assert InspectorClient.for_config(Config(), base_url="http://10.0.0.9:1/").base_url == "http://10.0.0.9:1"
    lean = Config(inspector=InspectorConfig(intent_detector=False), memory=MemoryConfig(enabled=False))
    assert InspectorClient.for_config(lean).expected_detectors == ("presidio", "code", "secrets")


def test_with_custom_topics_configured_the_proxy_requires_their_run() -> None:
    # An inspector that silently skipped the company's topics would let them all through.
    with_topics = Config(topics=TopicsConfig(files=[Path("/etc/promptfence/topics")]))
    assert InspectorClient.for_config(with_topics).expected_detectors[-2:] == ("custom_topics", "neighbours")
    answer = json.dumps(
        {
            "findings": [],
            "topics": {},
            "runs": [{"detector": n, "status": "ok", "elapsed_ms": 1} for n in DEFAULT_DETECTORS],
        }
    ).encode()
    with pytest.raises(InspectorInvalidAnswer, match="custom_topics"):
        parse_answer(answer, InspectorClient.for_config(with_topics).expected_detectors)


@dataclass
class Stub:
    name: str
    version: str = "stub"


@pytest.fixture
def stub_detectors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """build_detectors' own conditions, with every detector replaced by a stub carrying the real
    class's name (nothing loads a model). The LLM builder is the real one (it contacts nothing)."""
    import classifiers.code_detector as code
    import classifiers.intent_detector as intent
    import classifiers.neighbour_detector as neighbour
    import classifiers.presidio_detector as presidio
    import classifiers.promptguard_detector as promptguard
    import classifiers.secrets_detector as secrets
    import inference.embedder as embedder
    import inference.factory as factory

    def stub_of(cls: type[Any]) -> Callable[..., Stub]:
        return lambda *args, **kwargs: Stub(cls.name)

    monkeypatch.setattr(presidio, "PresidioDetector", stub_of(presidio.PresidioDetector))
    monkeypatch.setattr(code, "CodeDetector", stub_of(code.CodeDetector))
    monkeypatch.setattr(secrets, "SecretsDetector", stub_of(secrets.SecretsDetector))
    monkeypatch.setattr(intent, "IntentDetector", stub_of(intent.IntentDetector))
    monkeypatch.setattr(embedder, "SentenceTransformerEmbedder", lambda spec: object())
    monkeypatch.setattr(embedder, "default_minilm_path", lambda: Path("/nonexistent"))
    monkeypatch.setattr(factory, "build_embedder", lambda config, data_dir: object())  # the encoder (issue 17)
    monkeypatch.setattr(neighbour, "build_neighbour_detector", lambda config, e: Stub(neighbour.NeighbourDetector.name))
    import classifiers.custom_topics as custom

    monkeypatch.setattr(custom, "build_custom_topic_detector", lambda files, builtin, e: Stub(custom.DETECTOR_NAME))
    # The real builder returns None without a path and would load the model with one.
    monkeypatch.setattr(
        promptguard,
        "build_promptguard_detector",
        lambda config: None if config.path is None else Stub(promptguard.PromptGuardDetector.name),
    )
    yield


CONFIGS = [
    ("defaults", InspectorConfig(), MemoryConfig()),
    ("no intent", InspectorConfig(intent_detector=False), MemoryConfig()),
    ("no memory", InspectorConfig(), MemoryConfig(enabled=False)),
    ("neither", InspectorConfig(intent_detector=False), MemoryConfig(enabled=False)),
    ("llm", InspectorConfig(llm=LLMConfig(url="http://127.0.0.1:1", model="m")), MemoryConfig()),
    ("prompt guard", InspectorConfig(prompt_guard=PromptGuardConfig(path=Path("/models/pg2"))), MemoryConfig()),
    (
        "everything",
        InspectorConfig(prompt_guard=PromptGuardConfig(path=Path("/m")), llm=LLMConfig(url="http://h:1", model="m")),
        MemoryConfig(),
    ),
]


@pytest.mark.parametrize(("inspector_config", "memory_config"), [c[1:] for c in CONFIGS], ids=[c[0] for c in CONFIGS])
def test_expected_names_are_what_build_detectors_builds(
    stub_detectors: None, inspector_config: InspectorConfig, memory_config: MemoryConfig
) -> None:
    config = Config(inspector=inspector_config, memory=memory_config)
    built = tuple(d.name for d in build_detectors(config))
    assert expected_detector_names(inspector_config, memory_config, config.topics) == built
