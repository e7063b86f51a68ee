"""Claude (claude.ai): request extractors, the answer-stream decoder, the block replies.

Wire format: ``shared/design/apps/claude.md``. The prompt is ``prompt`` plus every
``attachments[].extracted_content`` (pastes and text files arrive there as full text);
``personalized_styles[].prompt`` is style instructions, not the user's prompt. The
conversation id is always the path segment after ``chat_conversations/``. The answer is SSE:
``message_start`` / ``content_block_*`` / ``message_delta`` / ``message_stop`` (current) or
``{"completion": ...}`` increments (legacy), told apart by content, not by event name.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from typing import Any

from proxy.wire.base import (
    DEFAULT_ANSWER_LIMIT,
    DEFAULT_MAX_EVENT,
    Answer,
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    Extractor,
    RequestData,
    SocketDecoderFactory,
    answer_reply,
    dict_get,
    json_403,
    json_object,
    loads_or_none,
    opt_str,
    sse_json,
)
from proxy.wire.sse import SSEAnswerDecoder, SSEEvent

_CONVERSATION_IN_PATH = re.compile(r"/(?:chat_)?conversations/([^/]+)")


def _conversation_from_path(path: str) -> str | None:
    match = _CONVERSATION_IN_PATH.search(path)
    return match.group(1) if match else None


def _attachments(data: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    texts: list[str] = []
    names: list[str] = []
    items = data.get("attachments")
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict):
            continue
        content = item.get("extracted_content")
        if isinstance(content, str) and content:
            texts.append(content)
        name = opt_str(item.get("file_name"))
        if name:
            names.append(name)
    files = data.get("files")
    for file_id in files if isinstance(files, list) else []:
        if isinstance(file_id, str) and file_id:
            names.append(file_id)
        elif isinstance(file_id, dict):
            ref = opt_str(file_id.get("file_name")) or opt_str(file_id.get("file_uuid"))
            if ref:
                names.append(ref)
    return texts, names


def completion(request: RequestData) -> Extraction:
    """``POST .../chat_conversations/{conv}/completion`` (and ``retry_completion``)."""
    data = json_object(request.body)
    texts, names = _attachments(data)
    prompt = data.get("prompt")
    create = data.get("create_conversation_params")
    turn = data.get("turn_message_uuids")
    return Extraction(
        prompt="\n".join(([prompt] if isinstance(prompt, str) and prompt else []) + texts),
        conversation_id=_conversation_from_path(request.path),
        message_id=opt_str(dict_get(turn, "human_message_uuid")),
        parent_message_id=opt_str(data.get("parent_message_uuid")),
        model=opt_str(data.get("model")) or opt_str(dict_get(create, "model")),
        attachments=tuple(dict.fromkeys(names)),
    )


def append_message(request: RequestData) -> Extraction:
    """Legacy ``POST /api/append_message``: ids in the body, the prompt in ``completion``."""
    data = json_object(request.body)
    inner = data.get("completion")
    prompt = dict_get(inner, "prompt")
    if not isinstance(prompt, str):
        prompt = data.get("text") if isinstance(data.get("text"), str) else ""
    texts, names = _attachments(data)
    return Extraction(
        prompt="\n".join(([prompt] if prompt else []) + texts),
        conversation_id=opt_str(data.get("conversation_uuid")),
        model=opt_str(dict_get(inner, "model")),
        attachments=tuple(dict.fromkeys(names)),
    )


def title(request: RequestData) -> Extraction:
    """Title generation carries ``message_content`` (prompt or answer text): inspect it."""
    data = json_object(request.body)
    text = data.get("message_content")
    return Extraction(
        prompt=text if isinstance(text, str) else "",
        conversation_id=_conversation_from_path(request.path) or opt_str(data.get("conversation_uuid")),
    )


def conversation_ref(request: RequestData) -> Extraction:
    """Share and other conversation-level operations: the id is in the path."""
    return Extraction(conversation_id=_conversation_from_path(request.path))


# Event types that carry no answer text (ignored, never "unknown shapes").
KNOWN_TYPES = frozenset({"content_block_stop", "message_delta", "ping", "message_limit"})


class ClaudeStreamDecoder(SSEAnswerDecoder):
    """Joins ``text_delta`` text per content block (index order); thinking and tool JSON stay out."""

    def __init__(self, *, answer_limit: int = DEFAULT_ANSWER_LIMIT, max_event: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(answer_limit=answer_limit, max_event=max_event)
        self._blocks: dict[int, list[str]] = {}
        self._legacy: list[str] = []
        self._stopped = False
        self._app_error = False

    def _finish(self) -> Answer:
        answer = self._answer
        if self._blocks:
            answer.text = "".join("".join(self._blocks[i]) for i in sorted(self._blocks))
        elif self._legacy:
            answer.text = "".join(self._legacy)
        answer.complete = self._stopped
        app = ["the app reported an error"] if self._app_error else []
        answer.error = self._notes(ended=self._stopped, end="before message_stop", app=app)
        return answer

    def _event(self, event: SSEEvent) -> None:
        value = loads_or_none(event.data)
        if not isinstance(value, dict):
            if event.data.strip():
                self._undecodable += 1
            return
        kind = value.get("type")
        if kind == "message_start":
            message = value.get("message")
            self._answer.message_id = opt_str(dict_get(message, "uuid")) or opt_str(dict_get(message, "id"))
        elif kind == "conversation_ready":
            cid = (
                opt_str(dict_get(value.get("conversation"), "uuid"))
                or opt_str(value.get("conversation_uuid"))
                or opt_str(value.get("uuid"))
            )
            self._answer.conversation_id = self._answer.conversation_id or cid
        elif kind == "content_block_start":
            index = value.get("index")
            block = value.get("content_block")
            if isinstance(index, int) and dict_get(block, "type") == "text":
                initial = dict_get(block, "text")
                self._blocks[index] = [initial] if isinstance(initial, str) and self._grow(len(initial)) else []
        elif kind == "content_block_delta":
            index = value.get("index")
            delta = value.get("delta")
            text = dict_get(delta, "text")
            if dict_get(delta, "type") == "text_delta" and isinstance(text, str) and self._grow(len(text)):
                self._blocks.setdefault(index if isinstance(index, int) else 0, []).append(text)
        elif kind == "message_stop":
            self._stopped = True
        elif kind == "error":
            self._app_error = True
        elif kind is None and isinstance(value.get("completion"), str):
            if self._grow(len(value["completion"])):
                self._legacy.append(value["completion"])
            if value.get("stop_reason") is not None:
                self._stopped = True
        elif kind is None and isinstance(value.get("error"), dict):
            self._app_error = True
        elif kind not in KNOWN_TYPES:
            self._unknown += 1


def error_403(message: str, extraction: Extraction) -> BlockReply:
    """Option A of the design notes: claude.ai's own refusal shape, as a permission error."""
    return json_403({"type": "error", "error": {"type": "permission_error", "message": message}})


def assistant_notice(message: str, extraction: Extraction) -> BlockReply:
    """Option B: a stream with one assistant text block holding the notice."""
    assistant, human = str(uuid.uuid4()), extraction.message_id or str(uuid.uuid4())
    events: list[tuple[str, dict[str, object]]] = [
        (
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": f"chatcompl_{uuid.uuid4().hex[:24]}",
                    "type": "message",
                    "role": "assistant",
                    "model": "",
                    "uuid": assistant,
                    "parent_uuid": human,
                    "content": [],
                    "stop_reason": None,
                },
            },
        ),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        ),
        (
            "content_block_delta",
            {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": message}},
        ),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": None}}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return answer_reply("".join(sse_json(data, name) for name, data in events).encode())


EXTRACTORS: Mapping[str, Extractor] = {
    "claude.completion": completion,
    "claude.append_message": append_message,
    "claude.title": title,
    "claude.conversation": conversation_ref,
}
DECODERS: Mapping[str, DecoderFactory] = {"claude.sse": ClaudeStreamDecoder}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {
    "claude.error_403": error_403,
    "claude.assistant_notice": assistant_notice,
}
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = {}
