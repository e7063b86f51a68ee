"""WebSocket messages to GenAI apps: inspected, decided and recorded like prompts, before forwarding.

A second mitmproxy addon next to :class:`~proxy.addon.PromptFenceAddon`, built from the same
catalogue, inspector, policy, recorder and identity. Once a connection to a catalogue host is
upgraded, every client-to-server message (text, or binary that decodes as UTF-8) is

1. turned into text: every string leaf (and key, and number) of a JSON message, else the text;
   a message over the size bound, not UTF-8, or JSON nested past the depth bound is
   *uninspectable* (``DetectorStatus.UNINSPECTABLE``) and the policy decides on that;
2. inspected as operation ``<app>.websocket_message`` of kind ``Unknown`` (with a timeout),
   decided by the policy, and recorded (``answer_status`` "none") while the message is held:
   mitmproxy awaits the ``websocket_message`` hook before it relays the message;
3. forwarded only when the decision allows it. ``block``, ``warn`` (no resend on a socket) and
   ``redact`` (a frame is not rewritten) drop the message and close the socket with 1008 and the
   decision's message as the close reason; a record that cannot be made durable, or any
   unexpected error, drops the message and closes with 1011.

Server-to-client messages pass untouched; so does every message of a host outside the catalogue.
A copy of each server message of an app with a socket answer decoder (``<app>.websocket`` in
:data:`proxy.registry.SOCKET_DECODERS`: ChatGPT's WebSocket delivery, Perplexity's socket.io)
is decoded into the same :class:`~proxy.wire.base.Answer` as a streamed answer; each finished
turn (and each turn still open when the socket ends) is recorded as operation
``<app>.websocket_answer`` with its conversation id, and counted by the drift alarm.
The app is the tunnel's (CONNECT target, client SNI, upstream SNI) before the Host header: any
catalogue host among them makes the socket guarded. A 101 on a catalogue host that mitmproxy does not relay as
a WebSocket (it would become a raw TCP tunnel) is killed.

Plain logs get flow ids, app and operation ids, sizes, topics, actions and exception *types*;
never message text (nor a digest of it).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

import wsproto.events
from mitmproxy import connection, ctx, http
from mitmproxy.proxy.layers.websocket import WebsocketLayer
from mitmproxy.websocket import WebSocketMessage

from promptfence.core import (
    Action,
    Decision,
    DetectorStatus,
    Inspection,
    LogRecord,
    Operation,
    OperationKind,
    Payload,
)
from promptfence.errors import RecordNotDurable
from proxy.addon import DecisionPort, RecordPort
from proxy.canonical import canonical_host
from proxy.catalogue import AppSpec, Catalogue
from proxy.drift import DriftMonitor
from proxy.flowmap import scrub
from proxy.identity import ClientAddressIdentity, IdentityResolver
from proxy.inspection_call import InspectionPort, inspect_within
from proxy.registry import SOCKET_DECODERS
from proxy.wire.base import Answer, SocketAnswerDecoder

log = logging.getLogger("promptfence.proxy")

CLOSE_POLICY_VIOLATION = 1008
CLOSE_INTERNAL_ERROR = 1011
MAX_CLOSE_REASON_BYTES = 123  # a close frame's payload is at most 125 bytes: 2 for the code
DEFAULT_INSPECT_TIMEOUT_S = 10.0
DEFAULT_MAX_MESSAGE_BYTES = 8 * 1024 * 1024
MAX_JSON_DEPTH = 64
CLOSED_KEY = "promptfence.websocket_closed"  # flow.metadata: why the guard closed this socket
ANSWERS_KEY = "promptfence.websocket_answers"  # flow.metadata: the socket's answer decoder
DETECTOR = "websocket"  # the name an uninspectable message's failed run carries

NOT_RECORDED_MESSAGE = "PromptFence stopped this message: it could not be recorded. Try again later."
INTERNAL_ERROR_MESSAGE = "PromptFence stopped this message: it could not be checked. Try again later."


# -- from a message to text ------------------------------------------------------------------


@dataclass(frozen=True)
class MessageText:
    """What a message says, or why it cannot be read (``error``, never quoting the message)."""

    text: str = ""
    error: str | None = None


class _TooDeep(Exception):
    pass


def _leaves(value: object) -> Iterator[str]:
    """Every key, string and number of a parsed JSON value, depth-first, iteratively."""
    stack: list[tuple[object, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            raise _TooDeep
        if isinstance(node, dict):
            items = list(node.items())
            for key, child in reversed(items):
                stack.append((child, depth + 1))
                stack.append((key, depth + 1))
        elif isinstance(node, list):
            stack.extend((child, depth + 1) for child in reversed(node))
        elif isinstance(node, str):
            yield node  # numbers arrive as their source text too (parse_int/parse_float=str)


# A string, or an unterminated one to the end: every quote starts a match, so this stays linear.
_JSON_STRING = re.compile(r'"(?:[^"\\]++|\\.)*+\\?(?:"|\Z)', re.DOTALL)
_NOT_BRACKET = re.compile(r"[^\[\]{}]++")
_BRACKET_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _json_depth(text: str) -> int:
    """How deep brackets nest outside strings, measured before parsing: a parser that hits
    Python's recursion limit leaves CPython 3.11's recursion accounting off (SystemError later)."""
    brackets = _NOT_BRACKET.sub("", _JSON_STRING.sub("", text))
    return max(accumulate(map(_BRACKET_STEP.__getitem__, brackets)), default=0)


def message_text(content: bytes, *, max_bytes: int) -> MessageText:
    """The text of a client message, bounded: JSON's string leaves, or the UTF-8 text."""
    if len(content) > max_bytes:
        return MessageText(error=f"message over {max_bytes} bytes")
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError:
        return MessageText(error="message is not UTF-8")
    if text.lstrip()[:1] not in ("{", "[", '"'):
        return MessageText(text)
    if _json_depth(text) > MAX_JSON_DEPTH:
        return MessageText(error=f"JSON nested deeper than {MAX_JSON_DEPTH}")
    try:
        value = json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except RecursionError:
        return MessageText(error=f"JSON nested deeper than {MAX_JSON_DEPTH}")
    except ValueError:  # not JSON after all: what the bytes say is what is inspected
        return MessageText(text)
    try:
        return MessageText(scrub("\n".join(_leaves(value))))
    except _TooDeep:
        return MessageText(error=f"JSON nested deeper than {MAX_JSON_DEPTH}")


def close_reason(message: str) -> str:
    """``message`` cut to what a close frame carries (123 bytes of UTF-8, on a character boundary)."""
    return message.encode("utf-8")[:MAX_CLOSE_REASON_BYTES].decode("utf-8", "ignore")


# -- closing a socket ------------------------------------------------------------------------


def _drop(message: WebSocketMessage) -> None:
    message.drop()  # type: ignore[no-untyped-call]


def _kill(flow: http.HTTPFlow) -> None:
    if flow.killable:
        flow.kill()  # type: ignore[no-untyped-call]


class WebSocketCloser(Protocol):
    """Ends a guarded socket; the guard has already dropped the message that caused it."""

    def close(self, flow: http.HTTPFlow, code: int, reason: str) -> None: ...


def _websocket_layer(flow: http.HTTPFlow) -> WebsocketLayer | None:
    """The layer relaying ``flow``'s messages, found from the proxy server's connection handler.

    mitmproxy 11 has no API to close a WebSocket from an addon (mitmproxy#4773, and
    ``flow.kill()`` is not checked once a socket is upgraded), so this walks a bounded number of
    layer objects; ``None`` when their shape is not what this version of mitmproxy has."""
    proxyserver = ctx.master.addons.get("proxyserver")  # type: ignore[no-untyped-call]
    connections = getattr(proxyserver, "connections", None)
    handler = connections.get(flow.client_conn.id) if isinstance(connections, dict) else None
    todo: list[object] = [getattr(handler, "layer", None)]
    seen: set[int] = set()
    while todo and len(seen) < 64:
        node = todo.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, WebsocketLayer):
            if node.flow is flow:
                return node
            continue
        todo.extend(getattr(node, name, None) for name in ("layer", "child_layer"))
        streams = getattr(node, "streams", None)
        if isinstance(streams, dict):
            todo.extend(streams.values())
        owner = getattr(getattr(node, "_handle_event", None), "__self__", None)
        if owner is not node:  # HttpProxy keeps its child only in a bound method
            todo.append(owner)
    return None


class MitmproxyCloser:
    """Close with ``code`` and ``reason`` to both sides, as if the server had sent that close.

    The close is queued on the layer's server-side connection and an empty message is injected
    towards the client to make the layer run: it sends the close both ways and ends the flow (the
    guard drops that empty message, the socket being closed). Where the layer cannot be found
    the flow is killed; either way the guard drops every later message of the socket."""

    def close(self, flow: http.HTTPFlow, code: int, reason: str) -> None:
        layer = _websocket_layer(flow)
        if layer is not None:
            layer.server_ws._events.append(wsproto.events.CloseConnection(code=code, reason=reason))
            ctx.master.commands.call("inject.websocket", flow, True, b"", True)
            return
        log.warning("flow=%s websocket layer not found: killing the flow", flow.id)
        _kill(flow)


# -- the addon -------------------------------------------------------------------------------


def tunnel_app(
    catalogue: Catalogue, flow: http.HTTPFlow, connect_target: str | None = None
) -> tuple[AppSpec, str] | None:
    """The catalogue app of a flow and the host that named it: the tunnel's names first (the
    CONNECT target, the SNI the client sent, the upstream SNI), then the request's host and Host
    header; any catalogue host among them counts, so no one name talks a socket out of inspection."""
    candidates = (
        connect_target,
        flow.client_conn.sni,
        flow.server_conn.sni,
        flow.request.host,
        flow.request.host_header,
        flow.server_conn.address[0] if flow.server_conn.address else None,
    )
    for name in candidates:
        host = canonical_host(name) if name else ""
        app = catalogue.app_for_host(host) if host else None
        if app is not None:
            return app, host
    return None


class WebSocketGuard:
    def __init__(
        self,
        catalogue: Catalogue,
        inspector: InspectionPort,
        policy: DecisionPort,
        recorder: RecordPort,
        identity: IdentityResolver | None = None,
        *,
        inspect_timeout_s: float | None = None,
        max_message_bytes: int | None = None,
        closer: WebSocketCloser | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.inspector = inspector
        self.policy = policy
        self.recorder = recorder
        self.identity = identity or ClientAddressIdentity()
        self.inspect_timeout_s = inspect_timeout_s
        self.max_message_bytes = max_message_bytes
        self.closer = closer or MitmproxyCloser()
        self.drift = drift or DriftMonitor()
        self._tunnels: dict[str, str] = {}  # client connection id -> its CONNECT target

    def _app(self, flow: http.HTTPFlow) -> tuple[AppSpec, str] | None:
        return tunnel_app(self.catalogue, flow, self._tunnels.get(flow.client_conn.id))

    # Both settings follow PromptFenceAddon's options when it is loaded; else the arguments.
    def _timeout(self) -> float:
        if self.inspect_timeout_s is not None:
            return self.inspect_timeout_s
        return float(getattr(ctx.options, "promptfence_inspect_timeout", DEFAULT_INSPECT_TIMEOUT_S))

    def _max_bytes(self) -> int:
        if self.max_message_bytes is not None:
            return self.max_message_bytes
        return int(getattr(ctx.options, "promptfence_max_body", DEFAULT_MAX_MESSAGE_BYTES))

    # -- hooks -------------------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._tunnels[flow.client_conn.id] = flow.request.host

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)

    def response(self, flow: http.HTTPFlow) -> None:
        """A switch of protocols that mitmproxy will not relay as a WebSocket becomes a raw TCP
        tunnel, where no message is seen: on a catalogue host it is killed instead."""
        try:
            if flow.response is None or flow.response.status_code != 101 or flow.websocket is not None:
                return
            if self._app(flow) is None:
                return
            log.warning("flow=%s upgrade to a protocol other than WebSocket on a GenAI host: killed", flow.id)
        except Exception as exc:  # fail closed
            log.error("flow=%s upgrade check failed (%s): killed", flow.id, type(exc).__name__)
        _kill(flow)

    def websocket_start(self, flow: http.HTTPFlow) -> None:
        try:
            found = self._app(flow)
        except Exception as exc:  # websocket_message decides again, and fails closed
            log.error("flow=%s websocket start check failed: %s", flow.id, type(exc).__name__)
            return
        if found is not None:
            log.info("flow=%s websocket to app=%s: client messages are inspected", flow.id, found[0].app)

    async def websocket_end(self, flow: http.HTTPFlow) -> None:
        if CLOSED_KEY in flow.metadata and flow.websocket is not None:
            log.info("flow=%s websocket closed by PromptFence (code %s)", flow.id, flow.websocket.close_code)
        decoder = flow.metadata.pop(ANSWERS_KEY, None)
        if decoder is not None:
            try:
                answers = decoder.close()
            except Exception as exc:  # a decoder bug costs the answer's copy only
                log.error("flow=%s websocket answers not decoded (%s)", flow.id, type(exc).__name__)
                return
            for answer in answers:
                await self._record_answer(flow, answer, socket_ended=True)

    async def websocket_message(self, flow: http.HTTPFlow) -> None:
        """Hold the newest message until it is inspected, decided and recorded; drop it unless
        the decision lets it through. Any unexpected error drops it and closes the socket."""
        message: WebSocketMessage | None = None
        try:
            if flow.websocket is None or not flow.websocket.messages:
                return
            message = flow.websocket.messages[-1]
            if CLOSED_KEY in flow.metadata and (message.from_client or message.injected):
                _drop(message)  # closing: nothing more from the client, nor the close's empty trigger
                return
            if not message.from_client:
                await self._answers(flow, message)
                return
            found = self._app(flow)
            if found is None:
                return
            await self._guard(flow, message, *found)
        except Exception as exc:  # fail closed, and never with the message in the log
            log.error("flow=%s websocket message check failed (%s): dropped", flow.id, type(exc).__name__)
            if message is not None:
                _drop(message)
            self._close(flow, CLOSE_INTERNAL_ERROR, INTERNAL_ERROR_MESSAGE)

    # -- answers from the server ---------------------------------------------------------------
    async def _answers(self, flow: http.HTTPFlow, message: WebSocketMessage) -> None:
        """Decode a copy of a server message; the message itself is already on its way."""
        if message.injected:
            return
        decoder: SocketAnswerDecoder | None = flow.metadata.get(ANSWERS_KEY)
        if decoder is None:
            found = self._app(flow)
            factory = SOCKET_DECODERS.get(f"{found[0].app}.websocket") if found is not None else None
            if factory is None:
                return
            decoder = flow.metadata[ANSWERS_KEY] = factory()
        try:
            answers = decoder.message(message.content)
        except Exception as exc:  # never into the socket: only our copy is lost
            log.error("flow=%s websocket answer not decoded (%s)", flow.id, type(exc).__name__)
            flow.metadata.pop(ANSWERS_KEY, None)
            return
        for answer in answers:
            await self._record_answer(flow, answer, socket_ended=False)

    async def _record_answer(self, flow: http.HTTPFlow, answer: Answer, *, socket_ended: bool) -> None:
        """One turn's answer as its own record (the prompt went over HTTP; the conversation id joins them)."""
        found = self._app(flow)
        if found is None:
            return
        app, host = found
        if socket_ended and not answer.complete:
            answer.error = "; ".join(filter(None, [answer.error, "socket closed before the turn ended"]))
        operation = Operation(
            app=app.app,
            app_type=app.app_type,
            operation_id=f"{app.app}.websocket_answer",
            kind=OperationKind.OTHER,
            identity=self.identity.identify(flow),
            prompt="",
            conversation_id=None if answer.conversation_id is None else scrub(answer.conversation_id),
            message_id=None if answer.message_id is None else scrub(answer.message_id),
            host=host,
            path=flow.request.path.split("?", 1)[0],
        )
        inspection = Inspection(findings=(), topics={}, runs=())
        decision = self.policy.decide(operation, inspection)
        self.drift.answer(
            app.app,
            operation.operation_id,
            decoded=answer.text is not None and answer.error is None,
            unknown_shapes=answer.unknown_shapes,
        )
        record = LogRecord(
            record_id=str(uuid.uuid4()),
            timestamp=time.time(),
            operation=operation,
            inspection=inspection,
            decision=decision,
            payload=Payload(prompt="", response=None if answer.text is None else scrub(answer.text)),
            response_decode_error=answer.error,
            answer_status="complete",
        )
        log.info(
            "flow=%s op=%s answer_chars=%s decode=%s",
            flow.id,
            operation.operation_id,
            "-" if answer.text is None else len(answer.text),
            answer.error or "ok",
        )
        try:
            await self.recorder.record(record)
        except Exception as exc:  # the answer already reached the user; the recorder spools
            log.error("flow=%s websocket answer record not written (%s)", flow.id, type(exc).__name__)

    # -- one client message ------------------------------------------------------------------
    async def _guard(self, flow: http.HTTPFlow, message: WebSocketMessage, app: AppSpec, host: str) -> None:
        content = message.content
        read = message_text(content, max_bytes=self._max_bytes())
        operation = Operation(
            app=app.app,
            app_type=app.app_type,
            operation_id=f"{app.app}.websocket_message",
            kind=OperationKind.UNKNOWN,
            identity=self.identity.identify(flow),
            prompt=read.text,
            host=host,
            path=flow.request.path.split("?", 1)[0],
        )
        if read.error is not None:
            inspection = Inspection.failure(DETECTOR, DetectorStatus.UNINSPECTABLE, read.error)
        elif operation.has_prompt:
            inspection = await self._inspect(operation)
        else:
            inspection = Inspection(findings=(), topics={}, runs=())
        decision = self._enforce(self.policy.decide(operation, inspection))
        log.info(
            "flow=%s op=%s ws_bytes=%d prompt_chars=%d topics=%s failed=%s action=%s rules=%s outcome=%s",
            flow.id,
            operation.operation_id,
            len(content),
            len(operation.prompt),
            ",".join(f"{t.value}:{c.name.lower()}" for t, c in inspection.detected().items()) or "-",
            ",".join(inspection.failed_detectors) or "-",
            decision.action.value,
            ",".join(decision.rule_ids) or "-",
            decision.outcome or "-",
        )
        record = LogRecord(
            record_id=str(uuid.uuid4()),
            timestamp=time.time(),
            operation=operation,
            inspection=inspection,
            decision=decision,
            payload=Payload(prompt=operation.prompt),
            answer_status="none",
        )
        try:
            await self.recorder.record(record)
        except RecordNotDurable as exc:
            log.error("flow=%s record %s not durable (%s): message dropped", flow.id, record.record_id, exc)
            _drop(message)
            self._close(flow, CLOSE_INTERNAL_ERROR, NOT_RECORDED_MESSAGE)
            return
        if decision.blocks:
            _drop(message)
            self._close(flow, CLOSE_POLICY_VIOLATION, decision.message or "PromptFence blocked this message.")

    def _enforce(self, decision: Decision) -> Decision:
        """A socket has no resend to confirm a warning and a frame is not rewritten: both block."""
        if decision.action is Action.WARN:
            return dataclasses.replace(decision, action=Action.BLOCK, outcome="blocked: warn on a websocket message")
        if decision.action is Action.REDACT:
            return dataclasses.replace(
                decision, action=Action.BLOCK, outcome="blocked: a websocket message cannot be redacted"
            )
        return decision

    async def _inspect(self, operation: Operation) -> Inspection:
        big = getattr(ctx.options, "promptfence_timeout_uninspectable_chars", None)
        return await inspect_within(self.inspector, operation, self._timeout(), uninspectable_chars=big)

    def _close(self, flow: http.HTTPFlow, code: int, message: str) -> None:
        if CLOSED_KEY in flow.metadata:
            return
        flow.metadata[CLOSED_KEY] = code
        try:
            self.closer.close(flow, code, close_reason(message))
        except Exception as exc:  # the flag above still drops every later message
            log.error("flow=%s websocket close failed: %s", flow.id, type(exc).__name__)
