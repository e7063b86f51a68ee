"""Input that detectors cannot digest is still inspected (issue 11, item 6).

A lone surrogate ("\\ud800") is valid in a Python str and in JSON ("\\ud800" escapes), but no
UTF-8 encoder accepts it, and Presidio, the secrets scanner and the intent head all encode. The
inspector replaces such code points once, before any detector, and says so in the Inspection's
notes; the real detectors then still find what the prompt holds.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import strategies as st

from classifiers.client import InspectorClient
from classifiers.code_detector import CodeDetector
from classifiers.engine import InspectionEngine
from classifiers.intent_detector import IntentDetector
from classifiers.normalize import analyse, replace_invalid_unicode
from classifiers.presidio_detector import PresidioDetector
from classifiers.secrets_detector import SecretsDetector
from classifiers.service import INVALID_UNICODE_NOTE, build_app
from inference.embedder import EmbedderSpec, SentenceTransformerEmbedder, default_minilm_path
from promptfence.core import Confidence, DetectorStatus, Identity, Operation, OperationKind, Topic, text_digest

AWS_KEY = "AKIA2JQ7V4XW5NPLR3TY"
PROMPTS = [
    "SSN 219-09-9999 \ud800",
    "\udfff my SSN is 219-09-9999",
    "my SSN is 219-09-9999 \udc00\ud800 and aws_access_key_id = " + AWS_KEY,
    "SSN\ud83d 219-09-9999",  # half of a surrogate pair
]


@pytest.fixture(scope="module")
def engine() -> Iterator[InspectionEngine]:
    embedder = SentenceTransformerEmbedder(EmbedderSpec(default_minilm_path()))
    engine = InspectionEngine([PresidioDetector(), CodeDetector(), SecretsDetector(), IntentDetector(embedder)])
    yield engine
    engine.close()


@pytest.fixture
async def inspector_url(engine: InspectionEngine) -> AsyncIterator[str]:
    app = build_app(engine)
    app.on_cleanup.clear()  # the module's engine outlives each test's server
    server = TestServer(app)
    await server.start_server()
    try:
        yield str(server.make_url("/"))
    finally:
        await server.close()


def test_lone_surrogates_are_replaced_one_for_one() -> None:
    assert replace_invalid_unicode("SSN 219-09-9999 \ud800") == ("SSN 219-09-9999 \ufffd", True)
    assert replace_invalid_unicode("a\udc00\ud800b") == ("a\ufffd\ufffdb", True)
    assert replace_invalid_unicode("plain ascii") == ("plain ascii", False)
    assert replace_invalid_unicode("emoji \U0001f600 and é") == ("emoji \U0001f600 and é", False)


@given(st.lists(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=60).map("".join))
def test_replacement_always_yields_encodable_text_of_the_same_length(text: str) -> None:
    fixed, replaced = replace_invalid_unicode(text)
    assert len(fixed) == len(text)
    fixed.encode("utf-8")  # never raises
    assert replaced == (fixed != text)


def test_analyse_never_hands_detectors_a_surrogate() -> None:
    """Defence in depth for callers of the engine that bypass the service (policy explain)."""
    analysis = analyse("SSN 219-09-9999 \ud800")
    analysis.text.encode("utf-8")
    assert analysis.original_span(0, 3) == (0, 3)


@pytest.mark.parametrize("prompt", PROMPTS)
async def test_the_engine_still_finds_the_ssn_and_no_detector_fails(engine: InspectionEngine, prompt: str) -> None:
    inspection = await engine.inspect(prompt)
    assert [r.status for r in inspection.runs] == [DetectorStatus.OK] * 4, inspection.runs
    assert inspection.confidence(Topic.PII) >= Confidence.MEDIUM
    [ssn] = [f for f in inspection.findings if f.kind == "pii.US_SSN"]
    assert ssn.span is not None and prompt[ssn.span.start : ssn.span.end] == "219-09-9999"


async def test_through_the_service_the_answer_is_complete_and_noted(
    inspector_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prompt = PROMPTS[2]
    client = InspectorClient(inspector_url, expected_detectors=("presidio", "code", "secrets", "intent"))
    operation = Operation(
        "chatgpt", "genai_chat", "chatgpt.conversation", OperationKind.SEND_PROMPT, Identity("u"), prompt
    )
    with caplog.at_level(logging.DEBUG, logger="promptfence.inspector"):
        try:
            inspection = await client.inspect(operation)
        finally:
            await client.close()
    assert inspection.failed_detectors == ()
    assert INVALID_UNICODE_NOTE in inspection.notes
    assert inspection.confidence(Topic.PII) >= Confidence.MEDIUM
    assert inspection.confidence(Topic.CREDENTIALS) >= Confidence.MEDIUM
    assert {f.kind for f in inspection.findings} >= {"pii.US_SSN"}
    assert any(f.detector == "secrets" for f in inspection.findings)
    # The inspector's log line (DEBUG since issue 18: the proxy logs the one line per operation): size, topics, time; no text.
    [line] = [r.getMessage() for r in caplog.records if r.getMessage().startswith("inspected")]
    assert f"chars={len(prompt)}" in line and "PII:" in line
    fixed = replace_invalid_unicode(prompt)[0]
    for secret in ("219-09-9999", AWS_KEY, "digest", text_digest(prompt), text_digest(fixed)):
        assert secret not in line


async def test_a_clean_prompt_gets_no_note(inspector_url: str) -> None:
    client = InspectorClient(inspector_url, expected_detectors=("presidio",))
    operation = Operation("chatgpt", "genai_chat", "c", OperationKind.SEND_PROMPT, Identity("u"), "hello there")
    try:
        inspection = await client.inspect(operation)
    finally:
        await client.close()
    assert INVALID_UNICODE_NOTE not in inspection.notes


async def test_the_legacy_prompt_body_is_sanitised_too(inspector_url: str) -> None:
    import aiohttp

    body = json.dumps({"prompt": "SSN 219-09-9999 \ud800"}).encode()
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{inspector_url}v1/inspect", data=body) as resp,
    ):
        assert resp.status == 200
        data = await resp.json()
    assert INVALID_UNICODE_NOTE in data["notes"]
    assert all(run["status"] == "ok" for run in data["runs"])


@pytest.mark.parametrize(
    "body",
    [b'{"operation": [1]}', b'{"prompt": 1' + b"0" * 5000 + b"}", b"[" * 100_000 + b"]" * 100_000],
    ids=["operation not an object", "5000-digit number", "nested too deep"],
)
async def test_bodies_the_service_cannot_read_are_400_not_500(inspector_url: str, body: bytes) -> None:
    import aiohttp

    async with aiohttp.ClientSession() as session, session.post(f"{inspector_url}v1/inspect", data=body) as resp:
        assert resp.status == 400
