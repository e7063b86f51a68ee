"""The WebSocket guard with mitmproxy's test helpers: what it holds, drops, closes and records."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from policies.policy import DEFAULT_POLICY_FILE, load_policies
from promptfence.core import (
    Action,
    Decision,
    DetectorRun,
    DetectorStatus,
    Finding,
    Inspection,
    LogRecord,
    Operation,
    OperationKind,
    Topic,
)
from promptfence.errors import RecordNotDurable
from proxy.catalogue import load_catalogue
from proxy.websocket_guard import (
    CLOSE_INTERNAL_ERROR,
    CLOSE_POLICY_VIOLATION,
    MAX_JSON_DEPTH,
    MitmproxyCloser,
    WebSocketGuard,
    close_reason,
    message_text,
)
from tests.support.addon import ListRecorder

SSN_TEXT = "Update the file of Jane Roe, SSN 219-09-9999, born 1970"
PII_INSPECTION = Inspection(
    findings=(Finding("presidio", "pii.US_SSN", Topic.PII, 0.9, None, "rule US_SSN"),),
    topics={Topic.PII: 0.9},
    runs=(DetectorRun("presidio", DetectorStatus.OK, 3.0),),
)
CLEAN_INSPECTION = Inspection(findings=(), topics={}, runs=(DetectorRun("presidio", DetectorStatus.OK, 2.0),))


class FakeInspector:
    """Finds PII in any prompt holding the SSN, nothing elsewhere; or raises / never answers."""

    def __init__(self, error: Exception | None = None, hang: bool = False) -> None:
        self.error = error
        self.hang = hang
        self.seen: list[Operation] = []

    async def inspect(self, operation: Operation) -> Inspection:
        self.seen.append(operation)
        if self.hang:
            await asyncio.Event().wait()
        if self.error is not None:
            raise self.error
        return PII_INSPECTION if "219-09-9999" in operation.prompt else CLEAN_INSPECTION


class FakeCloser:
    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def close(self, flow: http.HTTPFlow, code: int, reason: str) -> None:
        self.calls.append((code, reason))


class StaticPolicy:
    def __init__(self, action: Action | Exception) -> None:
        self.action = action

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        if isinstance(self.action, Exception):
            raise self.action
        return Decision(self.action, ("r1",), "static", message=f"Policy says {self.action.value}.")


class FailingRecorder(ListRecorder):
    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    async def record(self, record: LogRecord) -> None:
        raise self.error


def _guard(
    inspector: FakeInspector | None = None,
    policy: StaticPolicy | None = None,
    recorder: ListRecorder | None = None,
    **kw: object,
) -> tuple[WebSocketGuard, FakeInspector, ListRecorder, FakeCloser]:
    inspector = inspector or FakeInspector()
    recorder = recorder if recorder is not None else ListRecorder()
    closer = FakeCloser()
    guard = WebSocketGuard(
        load_catalogue(),
        inspector,
        policy or load_policies([DEFAULT_POLICY_FILE]),
        recorder,
        closer=closer,
        **kw,  # type: ignore[arg-type]
    )
    return guard, inspector, recorder, closer


def _ws_flow(
    host: str = "chatgpt.com", path: str = "/backend-api/conversation", sni: str | None = None
) -> http.HTTPFlow:
    flow = tflow.twebsocketflow()
    flow.request.host = host
    flow.request.port = 443
    flow.request.scheme = "https"
    flow.request.path = path
    flow.request.headers["Host"] = host
    flow.client_conn.sni = sni if sni is not None else host
    flow.server_conn.sni = sni if sni is not None else host
    flow.server_conn.address = ("127.0.0.1", 4443)  # a resolve pin, as in a deployment
    assert flow.websocket is not None
    flow.websocket.messages = []
    return flow


def _send(
    flow: http.HTTPFlow, content: bytes | str, *, from_client: bool = True, text: bool = True
) -> WebSocketMessage:
    assert flow.websocket is not None
    raw = content.encode() if isinstance(content, str) else content
    message = WebSocketMessage(Opcode.TEXT if text else Opcode.BINARY, from_client, raw)
    flow.websocket.messages.append(message)
    return message


def _frame(text: str) -> str:
    return json.dumps({"type": "message", "conversation_id": "c-1", "content": {"parts": [text]}})


async def test_ssn_frame_is_dropped_recorded_and_closes_the_socket_under_the_default_policy(
    caplog: pytest.LogCaptureFixture,
) -> None:
    guard, inspector, recorder, closer = _guard()
    flow = _ws_flow()
    caplog.set_level(logging.DEBUG)
    with taddons.context(guard):
        message = _send(flow, _frame(SSN_TEXT))
        await guard.websocket_message(flow)
    assert message.dropped
    assert SSN_TEXT in inspector.seen[0].prompt.split("\n")
    [record] = recorder.records
    assert record.operation.operation_id == "chatgpt.websocket_message"
    assert record.operation.kind is OperationKind.UNKNOWN
    assert (record.operation.host, record.operation.path) == ("chatgpt.com", "/backend-api/conversation")
    assert record.decision.action is Action.BLOCK and "block-pii-in-prompts" in record.decision.rule_ids
    assert record.answer_status == "none"
    assert SSN_TEXT in record.payload.prompt
    [(code, reason)] = closer.calls
    assert code == CLOSE_POLICY_VIOLATION
    assert reason.startswith("PromptFence blocked this prompt") and len(reason.encode()) <= 123
    assert all("219-09-9999" not in r.getMessage() for r in caplog.records)


async def test_benign_frame_is_forwarded_and_recorded() -> None:
    guard, inspector, recorder, closer = _guard()
    flow = _ws_flow()
    with taddons.context(guard):
        message = _send(flow, _frame("Write a haiku about autumn"))
        await guard.websocket_message(flow)
    assert not message.dropped and not closer.calls
    assert [r.decision.action for r in recorder.records] == [Action.ALLOW]
    assert recorder.records[0].answer_status == "none"
    keys_and_values = ["type", "message", "conversation_id", "c-1", "content", "parts", "Write a haiku about autumn"]
    assert inspector.seen[0].prompt.split("\n") == keys_and_values


async def test_server_messages_and_other_hosts_pass_untouched() -> None:
    guard, inspector, recorder, closer = _guard()
    chatgpt, other = _ws_flow(), _ws_flow("ws.example.net")
    with taddons.context(guard):
        from_server = _send(chatgpt, _frame(SSN_TEXT), from_client=False)
        await guard.websocket_message(chatgpt)
        elsewhere = _send(other, _frame(SSN_TEXT))
        await guard.websocket_message(other)
    assert not from_server.dropped and not elsewhere.dropped
    assert not inspector.seen and not recorder.records and not closer.calls


@pytest.mark.parametrize(
    ("host_header", "sni"),
    [("other.example", "chatgpt.com"), ("chatgpt.com", "other.example")],
)
async def test_the_tunnel_or_the_host_naming_a_catalogue_app_is_enough(host_header: str, sni: str) -> None:
    guard, _, recorder, _ = _guard()
    flow = _ws_flow(host_header, sni=sni)
    with taddons.context(guard):
        message = _send(flow, _frame(SSN_TEXT))
        await guard.websocket_message(flow)
    assert message.dropped
    assert recorder.records[0].operation.app == "chatgpt"
    assert recorder.records[0].operation.host == "chatgpt.com"


async def test_the_connect_target_names_the_app_whatever_sni_and_host_say() -> None:
    guard, _, recorder, _ = _guard()
    connect = tflow.tflow()
    connect.request.method, connect.request.host = "CONNECT", "chatgpt.com"
    flow = _ws_flow("other.example")
    flow.client_conn = connect.client_conn
    with taddons.context(guard):
        guard.http_connect(connect)
        message = _send(flow, _frame(SSN_TEXT))
        await guard.websocket_message(flow)
        guard.client_disconnected(connect.client_conn)
        later = _ws_flow("other.example")
        later.client_conn = connect.client_conn
        after = _send(later, _frame(SSN_TEXT))
        await guard.websocket_message(later)
    assert message.dropped and recorder.records[0].operation.host == "chatgpt.com"
    assert not after.dropped and len(recorder.records) == 1


async def test_binary_utf8_is_inspected_and_non_utf8_binary_is_uninspectable() -> None:
    guard, inspector, recorder, closer = _guard()
    flow = _ws_flow()
    with taddons.context(guard):
        utf8 = _send(flow, SSN_TEXT.encode(), text=False)
        await guard.websocket_message(flow)
    assert utf8.dropped and inspector.seen[0].prompt == SSN_TEXT

    guard, inspector, recorder, closer = _guard()
    flow = _ws_flow()
    with taddons.context(guard):
        binary = _send(flow, b"\xff\xfe" + SSN_TEXT.encode("utf-16-le"), text=False)
        await guard.websocket_message(flow)
    assert binary.dropped and not inspector.seen
    [record] = recorder.records
    assert [(r.status, r.error) for r in record.inspection.runs] == [
        (DetectorStatus.UNINSPECTABLE, "message is not UTF-8")
    ]
    assert record.decision.action is Action.BLOCK  # on_uninspectable: block
    assert closer.calls[0][0] == CLOSE_POLICY_VIOLATION


async def test_oversize_and_too_deep_messages_are_uninspectable_and_blocked() -> None:
    deep = "[" * (MAX_JSON_DEPTH + 5) + json.dumps(SSN_TEXT) + "]" * (MAX_JSON_DEPTH + 5)
    very_deep = "[" * 5000 + json.dumps(SSN_TEXT) + "]" * 5000  # past Python's own recursion limit
    for content, error in [
        (_frame(SSN_TEXT + " " * 2000), "message over 1000 bytes"),
        (deep, f"JSON nested deeper than {MAX_JSON_DEPTH}"),
        (very_deep, f"JSON nested deeper than {MAX_JSON_DEPTH}"),
    ]:
        guard, inspector, recorder, _ = _guard(max_message_bytes=1000 if "over" in error else 10**6)
        flow = _ws_flow()
        with taddons.context(guard):
            message = _send(flow, content)
            await guard.websocket_message(flow)
        assert message.dropped and not inspector.seen
        assert [r.error for r in recorder.records[0].inspection.runs] == [error]
        assert recorder.records[0].decision.action is Action.BLOCK


def test_message_text_reads_every_leaf_and_key_and_sanitises_lone_surrogates() -> None:
    read = message_text(b'{"a": [1, 2.5, true, null, {"SSN 219-09-9999": "x"}], "b": "\\ud800 left"}', max_bytes=10**6)
    assert read.error is None
    assert read.text.split("\n") == ["a", "1", "2.5", "SSN 219-09-9999", "x", "b", "\ufffd left"]
    read.text.encode("utf-8")  # no lone surrogate survives
    huge_number = b'{"n": ' + b"7" * 5000 + b"}"  # past int()'s digit limit: still JSON, still read
    assert message_text(huge_number, max_bytes=10**6).text == "n\n" + "7" * 5000
    assert message_text(b"[not json", max_bytes=100).text == "[not json"
    assert message_text(b"plain text", max_bytes=100).text == "plain text"


async def test_unrecordable_message_is_dropped_and_the_socket_closed() -> None:
    guard, _, _, closer = _guard(recorder=FailingRecorder(RecordNotDurable("ENOSPC")))
    flow = _ws_flow()
    with taddons.context(guard):
        message = _send(flow, _frame("Write a haiku about autumn"))
        await guard.websocket_message(flow)
    assert message.dropped
    assert [code for code, _ in closer.calls] == [CLOSE_INTERNAL_ERROR]


async def test_inspector_failure_and_timeout_fall_to_on_error() -> None:
    for inspector, timeout, status in [
        (FakeInspector(error=ConnectionError("down")), 10.0, DetectorStatus.UNAVAILABLE),
        (FakeInspector(hang=True), 0.0, DetectorStatus.TIMEOUT),  # never answers: no clock involved
    ]:
        guard, _, recorder, _ = _guard(inspector, inspect_timeout_s=timeout)
        flow = _ws_flow()
        with taddons.context(guard):
            message = _send(flow, _frame("Write a haiku about autumn"))
            await guard.websocket_message(flow)
        assert message.dropped
        assert [r.status for r in recorder.records[0].inspection.runs] == [status]
        assert recorder.records[0].decision.action is Action.BLOCK  # the default's on_error: block


async def test_unexpected_errors_drop_the_message_without_logging_it(caplog: pytest.LogCaptureFixture) -> None:
    guard, _, recorder, closer = _guard(policy=StaticPolicy(RuntimeError(SSN_TEXT)))
    flow = _ws_flow()
    caplog.set_level(logging.DEBUG)
    with taddons.context(guard):
        message = _send(flow, _frame(SSN_TEXT))
        await guard.websocket_message(flow)
    assert message.dropped and not recorder.records
    assert [code for code, _ in closer.calls] == [CLOSE_INTERNAL_ERROR]
    assert any("RuntimeError" in r.getMessage() for r in caplog.records)
    assert all("219-09-9999" not in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("action", [Action.WARN, Action.REDACT])
async def test_warn_and_redact_block_on_a_socket(action: Action) -> None:
    guard, _, recorder, closer = _guard(policy=StaticPolicy(action))
    flow = _ws_flow()
    with taddons.context(guard):
        message = _send(flow, _frame("anything"))
        await guard.websocket_message(flow)
    assert message.dropped
    assert recorder.records[0].decision.action is Action.BLOCK
    assert recorder.records[0].decision.outcome.startswith("blocked:")
    assert closer.calls == [(CLOSE_POLICY_VIOLATION, f"Policy says {action.value}.")]


async def test_after_a_block_later_client_messages_are_dropped_uninspected() -> None:
    guard, inspector, recorder, closer = _guard()
    flow = _ws_flow()
    assert flow.websocket is not None
    with taddons.context(guard):
        _send(flow, _frame(SSN_TEXT))
        await guard.websocket_message(flow)
        from_client = _send(flow, _frame("hello"))
        await guard.websocket_message(flow)
        trigger = WebSocketMessage(Opcode.TEXT, False, b"", injected=True)  # the close's trigger
        flow.websocket.messages.append(trigger)
        await guard.websocket_message(flow)
        from_server = _send(flow, "still on its way", from_client=False)
        await guard.websocket_message(flow)
    assert from_client.dropped and trigger.dropped and not from_server.dropped
    assert len(inspector.seen) == 1 and len(recorder.records) == 1 and len(closer.calls) == 1


def test_close_reason_fits_a_close_frame_on_a_character_boundary() -> None:
    reason = close_reason("é" * 100)
    assert len(reason.encode()) == 122 and reason == "é" * 61
    assert close_reason("short") == "short"


async def test_a_non_websocket_upgrade_on_a_catalogue_host_is_killed() -> None:
    guard, *_ = _guard()
    with taddons.context(guard):
        chatgpt, other, websocket = _ws_flow(), _ws_flow("ws.example.net"), _ws_flow()
        for flow in (chatgpt, other):
            flow.websocket = None
            assert flow.response is not None
            flow.response.headers["Upgrade"] = "not-websocket"
            guard.response(flow)
        guard.response(websocket)
    assert chatgpt.error is not None and chatgpt.error.msg == "Connection killed."
    assert other.error is None and websocket.error is None


async def test_closer_kills_the_flow_when_no_websocket_layer_can_be_found() -> None:
    flow = _ws_flow()
    with taddons.context():
        MitmproxyCloser().close(flow, CLOSE_POLICY_VIOLATION, "blocked")
    assert flow.error is not None and flow.error.msg == "Connection killed."
