"""A credential or card number split across two prompts of one conversation is found (issue 14 item 5).

The window is in the inspector's memory only: bounded, expiring, never written. A finding counts
only when it crosses the join between prompts, so the second prompt does not re-report what the
first already showed.
"""

from __future__ import annotations

import json
import logging

import pytest
from aiohttp.test_utils import TestClient, TestServer

from classifiers.conversation_window import ConversationRef, ConversationWindow, looks_secret_like
from classifiers.engine import SPLIT_EXPLANATION, InspectionEngine
from classifiers.registry import build_detectors
from classifiers.service import build_app
from promptfence.config import Config, ConversationWindowConfig
from promptfence.core import Identity, Inspection, Operation, OperationKind, Topic

# Not AWS's documented example key (the secrets detector rightly ignores that one).
KEY = "AKIAZ3MHQ7RXN4YPLWQD"
TOKEN = "ghp_R8x2kLmN4pQ7vT1wZ9yB3cD5fG6hJ0aS2eU4"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def op(prompt: str, conversation: str | None = "c-1", user: str = "alice", app: str = "chatgpt") -> Operation:
    return Operation(
        app=app,
        app_type="chat",
        operation_id="SendPrompt",
        kind=OperationKind.SEND_PROMPT,
        identity=Identity(user),
        prompt=prompt,
        conversation_id=conversation,
    )


@pytest.fixture(scope="module")
def detectors() -> list[object]:
    return [d for d in build_detectors(Config()) if d.name in ("secrets", "presidio")]


def engine(detectors: list[object], window: ConversationWindow | None) -> InspectionEngine:
    return InspectionEngine(detectors, window=window)  # type: ignore[arg-type]


async def run(eng: InspectionEngine, *prompts: tuple[str, str | None]) -> list[Inspection]:
    results = []
    for text, conversation in prompts:
        results.append(await eng.inspect(text, ConversationRef.of(op(text, conversation))))
    return results


def split_findings(inspection: Inspection) -> list[str]:
    return [f.kind for f in inspection.findings if SPLIT_EXPLANATION in f.explanation]


async def test_a_key_split_across_two_prompts_is_found_in_the_second(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    first, second = await run(
        eng,
        (f"Keep the first half of my key for later: {KEY[:9]}", "c-1"),
        (f"and here is the second half: {KEY[9:]} - join them please", "c-1"),
    )
    assert Topic.CREDENTIALS not in first.topics
    assert split_findings(second) == ["secret.aws-access-key-id"]
    assert second.topics[Topic.CREDENTIALS] > 0.5
    finding = next(f for f in second.findings if SPLIT_EXPLANATION in f.explanation)
    assert finding.span is None  # it is not inside the second prompt


async def test_without_the_window_the_split_key_is_missed(detectors: list[object]) -> None:
    eng = engine(detectors, None)
    _first, second = await run(eng, (f"first half: {KEY[:9]}", "c-1"), (f"second half: {KEY[9:]}", "c-1"))
    assert Topic.CREDENTIALS not in second.topics


async def test_a_key_in_three_pieces_and_a_card_number_in_two(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    *_, third = await run(
        eng, (f"part one {TOKEN[:14]}", "c-2"), (f"part two {TOKEN[14:27]}", "c-2"), (f"part three {TOKEN[27:]}", "c-2")
    )
    assert "secret.github-token" in split_findings(third)
    _a, card = await run(eng, ("my card number starts 4111 1111", "c-3"), ("1111 1111 is the rest of it", "c-3"))
    assert "pii.CREDIT_CARD" in split_findings(card)


async def test_the_opening_prompt_joins_the_conversation_id_the_app_assigned(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    _first, second = await run(eng, (f"first half {KEY[:10]}", None), (f"second half {KEY[10:]}", "assigned-7"))
    assert split_findings(second) == ["secret.aws-access-key-id"]


async def test_other_conversations_and_users_do_not_join(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    await eng.inspect(f"first half {KEY[:10]}", ConversationRef.of(op("", "c-1")))
    other_conversation = await eng.inspect(f"second half {KEY[10:]}", ConversationRef.of(op("", "c-2")))
    other_user = await eng.inspect(f"second half {KEY[10:]}", ConversationRef.of(op("", "c-1", user="bob")))
    other_app = await eng.inspect(f"second half {KEY[10:]}", ConversationRef.of(op("", "c-1", app="gemini")))
    assert not split_findings(other_conversation)
    assert not split_findings(other_user)
    assert not split_findings(other_app)


async def test_what_one_prompt_shows_is_not_reported_again_as_split(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    first, second = await run(eng, (f"here is {KEY} whole", "c-1"), (f"and again {TOKEN}", "c-1"))
    assert first.topics[Topic.CREDENTIALS] > 0.5
    assert not split_findings(second)  # the token is found in the prompt itself, the key is old news
    assert [f.kind for f in second.findings] == ["secret.github-token"]


async def test_prose_fragments_are_never_joined_into_a_false_secret(detectors: list[object]) -> None:
    eng = engine(detectors, ConversationWindow())
    prompts = [
        ("Could you summarise the meeting notes from Tuesday?", "c-9"),
        ("Then draft a polite reply to the vendor about the delay.", "c-9"),
        ("Order 1234 shipped on 2024-05-06, invoice 5678.", "c-9"),
        ("Ticket 9012 is still open; ETA 3456.", "c-9"),
    ]
    results = await run(eng, *prompts)
    assert all(not split_findings(r) for r in results)
    assert not looks_secret_like("second") and looks_secret_like("ODNN7EXAMPLE")


async def test_the_window_expires_and_is_bounded(detectors: list[object]) -> None:
    clock = Clock()
    window = ConversationWindow(ConversationWindowConfig(ttl_s=60.0, max_conversations=3), clock=clock)
    eng = engine(detectors, window)
    await eng.inspect(f"first half {KEY[:10]}", ConversationRef.of(op("", "c-1")))
    clock.now += 61.0
    late = await eng.inspect(f"second half {KEY[10:]}", ConversationRef.of(op("", "c-1")))
    assert not split_findings(late)
    for n in range(10):
        window.remember(ConversationRef.of(op("", f"c-{n}")).key, f"token part {n}A{n}B{n}C")
    assert len(window) == 3


def test_fragments_per_conversation_are_bounded() -> None:
    window = ConversationWindow(ConversationWindowConfig(max_fragments=4, max_fragment_chars=16))
    key = ConversationRef.of(op("")).key
    window.remember(key, " ".join(f"Frag{n}X{'y' * 40}" for n in range(100)))
    candidates = window.joins(key, "Next7Piece")
    assert candidates is not None
    # 4 earlier fragments (16 chars each at most) + a chain of the last two, joined to one head.
    assert len(candidates.joins) <= 4 + 1 + 1
    assert all(len(join.text) <= 2 * 16 + len("Next7Piece") + 1 or join.cut > 32 for _o, join in candidates.joins)


async def test_through_the_inspector_service_with_the_operation(
    detectors: list[object], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    app = build_app(engine(detectors, ConversationWindow()))
    client: TestClient = TestClient(TestServer(app))
    await client.start_server()
    try:
        answers = []
        for text in (f"first half {KEY[:10]}", f"second half {KEY[10:]}"):
            response = await client.post("/v1/inspect", data=json.dumps({"operation": op(text).to_dict()}))
            assert response.status == 200
            answers.append(Inspection.from_dict(await response.json()))
        # A bare prompt (no operation, so no conversation) is inspected alone.
        response = await client.post("/v1/inspect", data=json.dumps({"prompt": f"second half {KEY[10:]}"}))
        bare = Inspection.from_dict(await response.json())
    finally:
        await client.close()
    assert split_findings(answers[1]) == ["secret.aws-access-key-id"]
    assert not split_findings(bare)
    assert KEY[:10] not in caplog.text and KEY[10:] not in caplog.text
