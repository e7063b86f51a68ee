"""Replies that stand in for the app's answer when a policy blocks an operation.

A blank failure makes users retry and file tickets; a reply in the app's own format shows the
reason where they are looking. One function per reply shape, chosen by name in the catalogue
(``block_reply: chatgpt.assistant_notice``), so an app's shape lives in exactly one place.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from proxy.extraction import Extraction


@dataclass(frozen=True)
class BlockReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


BlockReplyMaker = Callable[[str, Extraction], BlockReply]


def _sse(events: list[object]) -> bytes:
    return b"".join(f"data: {json.dumps(e, ensure_ascii=False)}\n\n".encode() for e in events) + b"data: [DONE]\n\n"


def chatgpt_assistant_notice(message: str, extraction: Extraction) -> BlockReply:
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
    return BlockReply(
        status=200,
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-PromptFence": "blocked",
        },
        body=_sse([event]),
    )


def json_detail_403(message: str, extraction: Extraction) -> BlockReply:
    """``{"detail": ...}`` with 403: shown by the apps' error toasts and never retried."""
    body = json.dumps({"detail": {"message": message, "code": "blocked_by_promptfence"}})
    return BlockReply(
        status=403,
        headers={"Content-Type": "application/json", "X-PromptFence": "blocked"},
        body=body.encode(),
    )


def plain_text_403(message: str, extraction: Extraction) -> BlockReply:
    return BlockReply(
        status=403,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-PromptFence": "blocked"},
        body=message.encode(),
    )


BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {
    "chatgpt.assistant_notice": chatgpt_assistant_notice,
    "json.detail_403": json_detail_403,
    "text.plain_403": plain_text_403,
}
DEFAULT_BLOCK_REPLY = "text.plain_403"
