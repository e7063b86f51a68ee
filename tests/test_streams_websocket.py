"""Issue 16, item 2: answers that arrive over a WebSocket decode into the same Answer and are logged.

ChatGPT's WebSocket delivery (2024: Azure Web PubSub frames whose ``body`` is base64 of the SSE
bytes; 2025: ``encoded_item`` holding raw delta-v1 SSE text) and Perplexity's socket.io
(``42["query_progress", {...}]`` envelopes, ``43<n>[...]`` acks, Labs' cumulative ``output``).
The guard is driven with mitmproxy's own test helpers; the server messages pass untouched.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow
from mitmproxy.websocket import WebSocketMessage
from wsproto.frame_protocol import Opcode

from policies.policy import DEFAULT_POLICY_FILE, load_policies
from promptfence.core import Action, OperationKind
from proxy.catalogue import load_catalogue
from proxy.drift import DriftMonitor
from proxy.tap import decode_whole
from proxy.websocket_guard import WebSocketGuard
from proxy.wire.base import MAX_OPEN_TURNS
from proxy.wire.chatgpt import ChatGPTSocketDecoder, ChatGPTStreamDecoder
from proxy.wire.perplexity import PerplexitySocketDecoder
from tests.support.addon import ListRecorder

STREAMS = Path(__file__).parent / "fixtures" / "streams"
SSE = (STREAMS / "chatgpt_metadata_append.body").read_bytes()  # a finished v1 stream, [DONE] at the end
EXPECTED = json.loads((STREAMS / "chatgpt_metadata_append.json").read_text())


def _pubsub(sse: bytes, conversation: str = "c-1001", sequence: int = 1) -> bytes:
    """One 2024 ChatGPT WebSocket message: a Web PubSub envelope around an http.response.body."""
    data = {
        "type": "http.response.body",
        "body": base64.b64encode(sse).decode(),
        "more_body": True,
        "conversation_id": conversation,
        "response_id": "wsr-1",
    }
    return json.dumps(
        {"type": "message", "from": "server", "dataType": "json", "data": data, "sequenceId": sequence}
    ).encode()


def _pieces(sse: bytes, parts: int = 3) -> list[bytes]:
    step = max(1, len(sse) // parts)
    return [sse[i : i + step] for i in range(0, len(sse), step)]


def test_chatgpt_pubsub_frames_decode_like_the_sse_stream() -> None:
    decoder = ChatGPTSocketDecoder()
    answers = []
    pieces = _pieces(SSE, 7)  # a UTF-8 character or an event may be split between two frames
    for index, piece in enumerate(pieces):
        answers += decoder.message(_pubsub(piece, sequence=index + 1))
        if index < len(pieces) - 1:
            assert not answers  # the turn ends only with its [DONE]
    [answer] = answers
    direct = decode_whole(ChatGPTStreamDecoder(), SSE)
    assert answer == direct
    assert (answer.text, answer.conversation_id, answer.complete, answer.error) == (
        EXPECTED["text"],
        EXPECTED["conversation_id"],
        True,
        None,
    )
    assert decoder.close() == []


def test_chatgpt_encoded_items_of_the_2025_handoff_decode_too() -> None:
    decoder = ChatGPTSocketDecoder()
    answers = []
    for event in SSE.decode().split("\n\n"):  # one SSE event per item, as text
        item = {"type": "message", "topic_id": "conversation-turn-77", "payload": {"encoded_item": event + "\n\n"}}
        answers += decoder.message(json.dumps(item).encode())
    [answer] = answers
    assert (answer.text, answer.conversation_id, answer.complete, answer.error) == (
        EXPECTED["text"],
        EXPECTED["conversation_id"],
        True,
        None,
    )


def test_chatgpt_turns_are_kept_apart_and_an_open_turn_at_close_is_noted() -> None:
    decoder = ChatGPTSocketDecoder()
    half = SSE[: len(SSE) // 2]
    assert decoder.message(_pubsub(half, "c-a")) == []
    assert decoder.message(_pubsub(SSE, "c-b"))[0].complete
    assert decoder.message(b'{"type": "ack", "ackId": 3, "success": true}') == []
    [open_turn] = decoder.close()
    assert not open_turn.complete and open_turn.error is not None and "without [DONE]" in open_turn.error
    assert decoder.message(b"not json {") == [] and decoder.undecodable == 1


def test_chatgpt_open_turns_are_bounded() -> None:
    decoder = ChatGPTSocketDecoder()
    closed = []
    for index in range(MAX_OPEN_TURNS + 3):
        closed += decoder.message(_pubsub(SSE[:40], f"c-{index}"))
    assert len(closed) == 3 and all(not a.complete for a in closed)
    assert len(decoder.close()) == MAX_OPEN_TURNS


def test_chatgpt_bad_base64_is_counted_not_raised() -> None:
    decoder = ChatGPTSocketDecoder()
    bad = json.dumps({"data": {"type": "http.response.body", "body": "!!not base64!!", "conversation_id": "c-9"}})
    assert decoder.message(bad.encode()) == []
    [answer] = decoder.close()
    assert answer.error is not None and "1 undecodable events" in answer.error


def _progress(event: str, payload: dict[str, object], ack: str = "") -> bytes:
    return f"42{ack}{json.dumps([event, payload])}".encode()


def test_perplexity_socketio_progress_events_decode_into_one_answer() -> None:
    decoder = PerplexitySocketDecoder()
    first = {
        "backend_uuid": "b-1",
        "context_uuid": "ctx-1",
        "status": "pending",
        "text": json.dumps({"answer": "Le ciel", "web_results": []}),
    }
    last = {
        "backend_uuid": "b-1",
        "context_uuid": "ctx-1",
        "status": "completed",
        "text": json.dumps({"answer": "Le ciel est bleu.", "web_results": []}),
    }
    for packet in (b'0{"sid":"x"}', b"40", b"2", b"3probe"):
        assert decoder.message(packet) == []  # engine.io / socket.io housekeeping
    assert decoder.message(_progress("query_progress", first)) == []
    [answer] = decoder.message(_progress("query_progress", last))
    assert (answer.text, answer.conversation_id, answer.message_id, answer.complete, answer.error) == (
        "Le ciel est bleu.",
        "ctx-1",
        "b-1",
        True,
        None,
    )


def test_perplexity_socketio_ack_and_query_answered_and_labs() -> None:
    decoder = PerplexitySocketDecoder()
    ack = b"431" + json.dumps([{"backend_uuid": "b-2", "status": "completed", "text": '{"answer": "Oui."}'}]).encode()
    [answer] = decoder.message(ack)
    assert answer.text == "Oui." and answer.complete
    labs = decoder.message(_progress("llama_query_progress", {"output": "Hi", "final": False}))
    assert labs == []
    [lab] = decoder.message(
        _progress("llama_query_progress", {"output": "Hi there", "final": True, "status": "completed"})
    )
    assert lab.text == "Hi there" and lab.complete
    assert (
        decoder.message(
            _progress("query_progress", {"backend_uuid": "b-3", "status": "pending", "text": '{"answer": "x"}'})
        )
        == []
    )
    [cut] = decoder.close()
    assert not cut.complete and cut.error is not None and "before end_of_stream" in cut.error


def _flow(host: str) -> http.HTTPFlow:
    flow = tflow.twebsocketflow()
    flow.request.host = host
    flow.request.port = 443
    flow.request.path = "/socket.io/?EIO=4&transport=websocket"
    flow.request.headers["Host"] = host
    flow.client_conn.sni = flow.server_conn.sni = host
    assert flow.websocket is not None
    flow.websocket.messages = []
    return flow


def _server(flow: http.HTTPFlow, content: bytes) -> WebSocketMessage:
    assert flow.websocket is not None
    message = WebSocketMessage(Opcode.TEXT, False, content)
    flow.websocket.messages.append(message)
    return message


def _guard() -> tuple[WebSocketGuard, ListRecorder, DriftMonitor]:
    recorder, drift = ListRecorder(), DriftMonitor()
    guard = WebSocketGuard(load_catalogue(), None, load_policies([DEFAULT_POLICY_FILE]), recorder, drift=drift)  # type: ignore[arg-type]
    return guard, recorder, drift


async def test_the_guard_records_a_chatgpt_websocket_answer_and_passes_every_message() -> None:
    guard, recorder, drift = _guard()
    flow = _flow("chatgpt.com")
    with taddons.context(guard):
        sent = []
        for index, piece in enumerate(_pieces(SSE, 5)):
            sent.append(_server(flow, _pubsub(piece, sequence=index)))
            await guard.websocket_message(flow)
        await guard.websocket_end(flow)
    assert not any(m.dropped for m in sent)
    [record] = recorder.records
    assert record.operation.operation_id == "chatgpt.websocket_answer"
    assert record.operation.kind is OperationKind.OTHER
    assert record.operation.conversation_id == EXPECTED["conversation_id"]
    assert record.payload.response == EXPECTED["text"] and record.payload.prompt == ""
    assert record.response_decode_error is None and record.answer_status == "complete"
    assert record.decision.action is Action.ALLOW
    op = drift.snapshot().get("chatgpt.websocket_answer")
    assert op is not None and op.decoded == 1


async def test_the_guard_records_an_unfinished_perplexity_turn_when_the_socket_ends() -> None:
    guard, recorder, drift = _guard()
    flow = _flow("www.perplexity.ai")
    payload = {"backend_uuid": "b-7", "context_uuid": "ctx-7", "status": "pending", "text": '{"answer": "Part"}'}
    with taddons.context(guard):
        _server(flow, _progress("query_progress", payload))
        await guard.websocket_message(flow)
        assert not recorder.records
        await guard.websocket_end(flow)
    [record] = recorder.records
    assert record.operation.operation_id == "perplexity.websocket_answer"
    assert record.payload.response == "Part" and record.operation.conversation_id == "ctx-7"
    assert (
        record.response_decode_error is not None
        and "socket closed before the turn ended" in record.response_decode_error
    )
    op = drift.snapshot().get("perplexity.websocket_answer")
    assert op is not None and op.decode_errors == 1


async def test_apps_without_a_socket_decoder_and_other_hosts_record_nothing() -> None:
    guard, recorder, _ = _guard()
    with taddons.context(guard):
        for host in ("claude.ai", "ws.example.net"):
            flow = _flow(host)
            _server(flow, _pubsub(SSE))
            await guard.websocket_message(flow)
            await guard.websocket_end(flow)
    assert not recorder.records
