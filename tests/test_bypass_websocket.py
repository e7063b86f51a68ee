"""Issue 11 item 4 through the real proxy: WebSocket frames to a GenAI app over real TLS.

A real ``promptfence proxy`` with the shipped default policy, in front of a WebSocket stand-in
upstream (tests.support.ws) for chatgpt.com and ws.example.net, and the stand-in inspector
(topics come from ``[[topic:NAME=score]]`` markers). An SSN frame on an upgraded
``/backend-api/conversation`` never reaches upstream and the socket closes with the policy's
reason; a benign frame does reach it; both are recorded; other hosts are not touched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from logs.store import load_or_create_digest_key, prompt_hmac
from proxy.websocket_guard import message_text
from tests.support.procs import wait_for
from tests.support.ws import SERVER_PUSH, WsDeployment, start_ws_proxy

pytestmark = pytest.mark.slow

URL = "wss://chatgpt.com/backend-api/conversation"
SSN = "219-09-9999"


def _frame(text: str) -> str:
    return json.dumps({"type": "conversation.item.create", "item": {"role": "user", "content": [{"text": text}]}})


SSN_FRAME = _frame(f"Update Jane Roe's file: SSN {SSN} [[topic:PII=0.95]]")
BENIGN_FRAME = _frame("Write a haiku about autumn leaves.")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WsDeployment]:
    deployment = start_ws_proxy(tmp_path_factory.mktemp("bypass-ws"), hosts=["chatgpt.com", "ws.example.net"])
    try:
        yield deployment
    finally:
        deployment.stop()


def _records(dep: WsDeployment) -> list[dict[str, Any]]:
    result = dep.cli("logs", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _record_of(dep: WsDeployment, frame: str | bytes) -> dict[str, Any]:
    """The record of a frame: found by the keyed HMAC of the text the guard read from it."""
    raw = frame.encode() if isinstance(frame, str) else frame
    key = load_or_create_digest_key(dep.home / "keys" / "log-digest.key")
    digest = prompt_hmac(key, message_text(raw, max_bytes=len(raw)).text)
    wait_for(lambda: any(r.get("prompt_hmac") == digest for r in _records(dep)), 30, "the frame's record")
    return next(r for r in _records(dep) if r.get("prompt_hmac") == digest)


def _upstream_saw(dep: WsDeployment, needle: str) -> bool:
    return any(needle in m["data"] for m in dep.received_messages())


def test_benign_frame_reaches_upstream_and_is_recorded(dep: WsDeployment) -> None:
    result = dep.exchange(URL, [BENIGN_FRAME], expect_replies=2)
    assert result.upgraded
    assert result.received == ["ack:1", SERVER_PUSH]  # server-to-client messages pass untouched
    assert [m["data"] for m in dep.received_messages() if m["data"] == BENIGN_FRAME] == [BENIGN_FRAME]
    record = _record_of(dep, BENIGN_FRAME)
    assert record["operation_id"] == "chatgpt.websocket_message" and record["operation"] == "Unknown"
    assert record["decision"]["action"] == "allow"
    assert record["answer_status"] == "none"


@pytest.mark.parametrize("binary", [False, True], ids=["text", "binary-utf8"])
def test_ssn_frame_never_reaches_upstream_and_closes_with_the_policy_reason(dep: WsDeployment, binary: bool) -> None:
    frame: str | bytes = SSN_FRAME.encode() if binary else SSN_FRAME
    after = _frame(f"sent after the blocked frame ({'binary' if binary else 'text'})")
    result = dep.exchange(URL, [frame, after], expect_replies=1)
    assert result.upgraded and result.received == []
    assert result.close_code == 1008
    assert result.close_reason.startswith("PromptFence blocked this prompt")
    record = _record_of(dep, frame)
    assert record["operation_id"] == "chatgpt.websocket_message"
    assert record["decision"]["action"] == "block"
    assert "block-pii-in-prompts" in record["decision"]["rule_ids"]
    assert not _upstream_saw(dep, SSN)
    assert not _upstream_saw(dep, after)  # nothing after a block goes through either
    log = dep.proxy_log.read_text(errors="replace")
    assert SSN not in log
    assert "websocket layer not found" not in log and "has crashed" not in log  # a real close frame, cleanly


def test_a_conversation_is_cut_at_the_first_ssn_frame(dep: WsDeployment) -> None:
    first = _frame("What is the capital of France?")
    result = dep.exchange(URL, [first, SSN_FRAME], expect_replies=4, replies_each=2)
    assert result.received == ["ack:1", SERVER_PUSH]
    assert result.close_code == 1008
    assert _upstream_saw(dep, "capital of France")
    assert not _upstream_saw(dep, SSN)


def test_a_frame_that_is_not_utf8_is_uninspectable_and_blocked(dep: WsDeployment) -> None:
    frame = b"\xff\xfe" + f"SSN {SSN}".encode("utf-16-le")
    result = dep.exchange(URL, [frame], expect_replies=1)
    assert result.received == [] and result.close_code == 1008
    record = _record_of(dep, b"")  # nothing could be read from it
    assert record["decision"]["action"] == "block"
    assert record["detectors_failed"] == ["websocket"]
    assert not any(m["type"] == "BINARY" for m in dep.received_messages())  # every binary frame here is stopped


def test_websockets_of_other_hosts_are_untouched(dep: WsDeployment) -> None:
    result = dep.exchange("wss://ws.example.net/socket", [SSN_FRAME], expect_replies=2)
    assert result.received == ["ack:1", SERVER_PUSH] and result.close_code is None
    assert any(m["host"] == "ws.example.net" and m["data"] == SSN_FRAME for m in dep.received_messages())
    assert not any(r.get("host") == "ws.example.net" for r in _records(dep))
