"""ChatGPT (chatgpt.com): request extractors, the answer-stream decoder, the block reply.

Wire format: ``shared/design/apps/chatgpt.md``. The answer stream is SSE in one of two
encodings: delta encoding v1 (``event: delta`` with ``{p, o, v, c}`` JSON-Pointer edits whose
missing ``p``/``o``/``c`` are inherited from the previous delta) and the legacy full-snapshot
format (every event a whole ``{message, conversation_id, error}``; the user's prompt is echoed,
so only ``assistant`` messages count). Both end with ``data: [DONE]``.

``[DONE]`` ends the stream, not necessarily the answer: an answer is complete only when its
message says so (``status: finished_successfully``, ``end_turn: true`` or
``metadata.is_complete``); a stream cut after an ``in_progress`` snapshot is noted as such.
"""

from __future__ import annotations

import base64
import binascii
import copy
import time
import uuid
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

from proxy.wire import jsonpatch
from proxy.wire.base import (
    DEFAULT_ANSWER_LIMIT,
    DEFAULT_MAX_EVENT,
    MAX_OPEN_TURNS,
    Answer,
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    ExtractionError,
    Extractor,
    RequestData,
    SocketDecoderFactory,
    answer_reply,
    dict_get,
    json_object,
    loads_or_none,
    opt_str,
    sse_event,
    sse_json,
)
from proxy.wire.sse import SSEAnswerDecoder, SSEEvent

# -- requests ----------------------------------------------------------------------------------


def conversation(request: RequestData) -> Extraction:
    """SendPrompt: join the string parts of every non-assistant message.

    Object parts (images) are skipped as text but kept as attachment references, and
    ``metadata.attachments`` names are kept too (documents appear only there).
    """
    data = json_object(request.body)
    messages = data.get("messages") or []
    if not isinstance(messages, list):
        raise ExtractionError("messages is not a list")
    texts: list[str] = []
    attachments: list[str] = []
    last_id: str | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = dict_get(message.get("author"), "role")
        if role == "assistant":
            continue
        last_id = opt_str(message.get("id")) or last_id
        parts = dict_get(message.get("content"), "parts")
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("asset_pointer"), str):
                attachments.append(part["asset_pointer"])
        files = dict_get(message.get("metadata"), "attachments")
        for item in files if isinstance(files, list) else []:
            if isinstance(item, dict):
                name = opt_str(item.get("name")) or opt_str(item.get("id"))
                if name:
                    attachments.append(name)
    return Extraction(
        prompt="\n".join(texts),
        conversation_id=opt_str(data.get("conversation_id")),
        message_id=last_id,
        parent_message_id=opt_str(data.get("parent_message_id")),
        model=opt_str(data.get("model")),
        attachments=tuple(dict.fromkeys(attachments)),
    )


def prepare(request: RequestData) -> Extraction:
    """Draft text sent before the prompt: ``partial_query`` is a message or a string."""
    data = json_object(request.body)
    partial = data.get("partial_query")
    prompt = ""
    if isinstance(partial, str):
        prompt = partial
    elif isinstance(partial, dict):
        parts = dict_get(partial.get("content"), "parts")
        prompt = "\n".join(p for p in (parts if isinstance(parts, list) else []) if isinstance(p, str))
    return Extraction(
        prompt=prompt,
        conversation_id=opt_str(data.get("conversation_id")),
        model=opt_str(data.get("model")),
    )


def share(request: RequestData) -> Extraction:
    data = json_object(request.body)
    return Extraction(
        conversation_id=opt_str(data.get("conversation_id")),
        message_id=opt_str(data.get("current_node_id")),
    )


def share_update(request: RequestData) -> Extraction:
    """``PATCH /backend-api/share/{share_id}`` (``is_public``): the share id is in the path."""
    data = json_object(request.body) if request.body.strip() else {}
    return Extraction(
        message_id=opt_str(data.get("highlighted_message_id")),
        attachments=(f"share:{request.path.rstrip('/').rsplit('/', 1)[-1]}",),
    )


def file_metadata(request: RequestData) -> Extraction:
    data = json_object(request.body)
    name = opt_str(data.get("file_name"))
    return Extraction(attachments=(name,) if name else ())


# -- the answer stream ---------------------------------------------------------------------------


# Typed side events of the stream that carry no answer text (ignored, never "unknown shapes").
KNOWN_TYPES = frozenset(
    {
        "title_generation",
        "message_stream_complete",
        "conversation_detail_metadata",
        "resume_conversation_token",
        "input_message",
        "stream_handoff",
        "server_ste_metadata",
        "message_marker",
        "moderation",
        "url_moderation",
        "conversation_async_status",
    }
)


def _finished(message: Any) -> bool:
    """The message says it is whole: finished status, end of turn, or ``is_complete``."""
    text = jsonpatch.text
    if not isinstance(message, dict):
        return False
    return (
        text(message.get("status")) == "finished_successfully"
        or message.get("end_turn") is True
        or dict_get(message.get("metadata"), "is_complete") is True
    )


def _message_text(message: Any) -> str | None:
    """The text of an answer-bearing assistant message, else None (tool, thinking, user echo).

    Strings may be :class:`~proxy.wire.jsonpatch.TextBuilder` (appended to): read via ``text``."""
    text = jsonpatch.text
    if not isinstance(message, dict):
        return None
    if text(dict_get(message.get("author"), "role")) != "assistant":
        return None
    if message.get("recipient") is not None and text(message.get("recipient")) != "all":
        return None
    if message.get("channel") is not None and text(message.get("channel")) != "final":
        return None
    content = message.get("content")
    if text(dict_get(content, "content_type")) not in ("text", "multimodal_text"):
        return None
    parts = dict_get(content, "parts")
    if not isinstance(parts, list):
        return None
    return "".join(t for t in map(text, parts) if t is not None)


class ChatGPTStreamDecoder(SSEAnswerDecoder):
    """Folds a ChatGPT answer stream (delta v1 or legacy snapshots) into the final answer."""

    def __init__(self, *, answer_limit: int = DEFAULT_ANSWER_LIMIT, max_event: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(answer_limit=answer_limit, max_event=max_event)
        self._docs: dict[object, Any] = {}  # v1: channel -> root document; legacy: message id -> event
        self._p: Any = None
        self._o: Any = None
        self._c: Any = None
        self._encoding: str | None = None
        self._done = False
        self._failed_ops = 0
        self._app_error = False

    def _finish(self) -> Answer:
        answer = self._answer
        finished = False
        status: str | None = None
        for doc in reversed(self._docs.values()):
            message = dict_get(doc, "message")
            text = _message_text(message)
            if text is not None:
                answer.text = text
                answer.message_id = opt_str(jsonpatch.text(dict_get(message, "id")))
                finished = _finished(message)
                status = jsonpatch.text(dict_get(message, "status"))
                break
        answer.complete = self._done and finished
        app = []
        if self._done and answer.text is not None and not finished:
            app.append(f"[DONE] before the answer finished (status {status or 'missing'})")
        if self._failed_ops:
            app.append(f"{self._failed_ops} delta operations did not apply")
        if self._app_error:
            app.append("the app reported an error")
        answer.error = self._notes(
            ended=self._done, end="without [DONE]", app=app, no_answer="no assistant answer in the stream"
        )
        return answer

    @property
    def done(self) -> bool:
        """``[DONE]`` arrived: the stream (not necessarily the answer) is over."""
        return self._done

    def _conversation(self, value: Any) -> None:
        cid = opt_str(value)
        if cid and self._answer.conversation_id is None:
            self._answer.conversation_id = cid

    def _event(self, event: SSEEvent) -> None:
        data = event.data.strip()
        if data == "[DONE]":
            self._done = True
            return
        value = loads_or_none(data)
        if event.event == "delta_encoding":
            self._encoding = value if isinstance(value, str) else None
            if self._encoding != "v1":
                self._undecodable += 1
            return
        if value is None and data not in ("null", ""):
            self._undecodable += 1
            return
        if event.event == "delta":
            self._delta(value)
        elif isinstance(value, dict):
            self._plain(value)
        elif value is not None:
            self._unknown += 1

    def _plain(self, value: Mapping[str, Any]) -> None:
        """A non-delta line: a legacy snapshot, a typed side event or an error."""
        message = value.get("message")
        if isinstance(message, dict):
            key = ("legacy", opt_str(message.get("id")) or "")
            self._docs.pop(key, None)  # the latest snapshot of a message is the last one
            self._docs[key] = {"message": message}
            self._conversation(value.get("conversation_id"))
            return
        kind = value.get("type")
        if kind == "title_generation":
            self._answer.title = opt_str(value.get("title")) or self._answer.title
        elif kind in ("message_stream_complete", "conversation_detail_metadata", "resume_conversation_token"):
            self._conversation(value.get("conversation_id"))
        elif kind is None and value.get("error"):
            self._app_error = True
        elif kind is None and self._encoding == "v1" and "v" in value:
            self._delta(value)  # a delta whose ``event: delta`` line was left out
        elif kind is None and "conversation_id" in value:
            self._conversation(value.get("conversation_id"))  # a snapshot with no message yet
        elif kind not in KNOWN_TYPES:
            self._unknown += 1

    def _delta(self, value: Any) -> None:
        if not isinstance(value, dict):
            self._undecodable += 1
            return
        v = value.get("v")
        if "p" not in value and "o" not in value and isinstance(v, dict) and "message" in v:
            self._c = value.get("c", self._c)
            self._p, self._o = "", "add"
            self._install(v)
            return
        self._c = value.get("c", self._c)
        self._p = value.get("p", self._p)
        self._o = value.get("o", self._o)
        if "v" not in value:
            self._failed_ops += 1
            return
        if self._o == "patch":
            self._patch(v)
        else:
            self._apply(self._o, self._p, v)

    def _patch(self, ops: Any) -> None:
        if not isinstance(ops, list):
            self._failed_ops += 1
            return
        p, o = self._p, "append"
        for op in ops:
            if not isinstance(op, dict) or "v" not in op:
                self._failed_ops += 1
                continue
            p, o = op.get("p", p), op.get("o", o)
            self._apply(o, p, op["v"])

    def _key(self) -> object:
        return ("v1", self._c if isinstance(self._c, (int, str)) else 0)

    def _install(self, root: Any) -> None:
        key = self._key()
        self._docs.pop(key, None)
        self._docs[key] = copy.deepcopy(root)
        self._conversation(dict_get(root, "conversation_id"))

    def _apply(self, op: Any, path: Any, v: Any) -> None:
        if not isinstance(op, str) or not isinstance(path, str):
            self._failed_ops += 1
            return
        if path == "" and op in ("add", "replace"):
            self._install(v)
            return
        key = self._key()
        current = self._docs.get(key)
        grows = len(v) if op in ("append", "add") and isinstance(v, str) else 0
        needed = grows + jsonpatch.cost(current, op, path)
        if needed and not self._grow(needed):
            return  # past the answer limit: noted once in the answer's error (O(1) edits still apply)
        doc, ok = jsonpatch.apply(current, op, path, v, builders=True)
        if key in self._docs or ok:
            self._docs[key] = doc
        if not ok:
            self._failed_ops += 1


# -- answers over a WebSocket ----------------------------------------------------------------------

_TURN_KEYS = ("conversation_id", "websocket_request_id", "topic_id", "response_id")


def _sse_pieces(value: Any, key: str = "", depth: int = 0) -> Iterator[tuple[str, bytes | None]]:
    """The SSE bytes a socket message carries, with the turn they belong to.

    2024: ``{type: "http.response.body", body: base64(SSE bytes), conversation_id}`` (inside an
    Azure Web PubSub ``{type: "message", data: {...}, sequenceId}`` envelope); 2025:
    ``encoded_item``, raw delta-v1 SSE text, under a ``conversation-turn-…`` topic. ``None`` as
    the bytes: a piece that is not valid base64 (counted as undecodable by the caller)."""
    if depth > 6 or not isinstance(value, dict):
        return
    for name in _TURN_KEYS:
        found = opt_str(value.get(name))
        if found:
            key = found
            break
    body = value.get("body")
    if isinstance(body, str) and (value.get("type") == "http.response.body" or "conversation_id" in value):
        try:
            yield key, base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            yield key, None
    item = value.get("encoded_item")
    if isinstance(item, str):
        yield key, item.encode("utf-8", "replace")
    for child in value.values():
        if isinstance(child, dict):
            yield from _sse_pieces(child, key, depth + 1)


class ChatGPTSocketDecoder:
    """ChatGPT's WebSocket delivery: each turn's SSE bytes fed to its own stream decoder.

    A turn ends with its ``[DONE]``; turns still open when the socket closes are returned
    incomplete ("stream ended without [DONE]"). Server messages that carry no answer (acks,
    pings, ``conversation-update``) are ignored; JSON that is not JSON is counted."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_EVENT) -> None:
        self._turns: OrderedDict[str, ChatGPTStreamDecoder] = OrderedDict()
        self._max = max_message
        self.undecodable = 0

    def message(self, content: bytes) -> list[Answer]:
        if len(content) > self._max:
            self.undecodable += 1
            return []
        value = loads_or_none(content.decode("utf-8", "replace"))
        if value is None:
            if content.strip():
                self.undecodable += 1
            return []
        done: list[Answer] = []
        for key, data in _sse_pieces(value):
            decoder = self._turns.get(key)
            if decoder is None:
                if len(self._turns) >= MAX_OPEN_TURNS:
                    done.append(self._end(next(iter(self._turns))))
                decoder = self._turns[key] = ChatGPTStreamDecoder()
            if data is None:
                decoder._undecodable += 1
                continue
            decoder.feed(data)
            if decoder.done:
                done.append(self._end(key))
        return done

    def _end(self, key: str) -> Answer:
        return self._turns.pop(key).close()

    def close(self) -> list[Answer]:
        return [self._end(key) for key in list(self._turns)]


# -- block reply ---------------------------------------------------------------------------------


def assistant_notice(message: str, extraction: Extraction) -> BlockReply:
    """A legacy full-snapshot stream holding one finished assistant message with the notice.

    The web client passes non-delta events through, so this renders as an ordinary answer;
    it must end with ``[DONE]`` or the client retries via ``/conversation/resume``.
    """
    conversation_id = extraction.conversation_id or str(uuid.uuid4())
    event: dict[str, object] = {
        "message": {
            "id": str(uuid.uuid4()),
            "author": {"role": "assistant", "name": None, "metadata": {}},
            "create_time": time.time(),
            "content": {"content_type": "text", "parts": [message]},
            "status": "finished_successfully",
            "end_turn": True,
            "weight": 1.0,
            "metadata": {"finish_details": {"type": "stop"}, "promptfence": "blocked"},
            "recipient": "all",
            "channel": None,
        },
        "conversation_id": conversation_id,
        "error": None,
    }
    return answer_reply((sse_json(event) + sse_event("[DONE]")).encode())


EXTRACTORS: Mapping[str, Extractor] = {
    "chatgpt.conversation": conversation,
    "chatgpt.prepare": prepare,
    "chatgpt.share": share,
    "chatgpt.share_update": share_update,
    "chatgpt.file_metadata": file_metadata,
}
DECODERS: Mapping[str, DecoderFactory] = {"chatgpt.sse": ChatGPTStreamDecoder}
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = {"chatgpt.websocket": ChatGPTSocketDecoder}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {"chatgpt.assistant_notice": assistant_notice}
