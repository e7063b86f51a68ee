"""The types every app module shares: request views, extractions, answers, block replies."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs

# Bounds on what a decoder keeps of one answer stream (see ``proxy/tap.py`` for the byte limit):
DEFAULT_ANSWER_LIMIT = 8 * 1024 * 1024  # characters of answer text accumulated across events
# Characters in one SSE line / event, or one Gemini frame. An event is parsed whole once it ends
# (join, partition, json.loads): at 4 MiB that is tens of milliseconds on the event loop, at
# 16 MiB ~70 ms; real events (snapshots of a whole answer included) stay far below it.
DEFAULT_MAX_EVENT = 4 * 1024 * 1024


class ExtractionError(ValueError):
    """The body did not have the shape the catalogue promised (the message never quotes it)."""


@dataclass(frozen=True)
class RequestData:
    """What an extractor sees of a request: decoded body, bare path, query, lower-case headers."""

    body: bytes = field(default=b"", repr=False)
    path: str = field(default="", repr=False)
    query: str = field(default="", repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def query_values(self, name: str) -> list[str]:
        return parse_qs(self.query, keep_blank_values=True).get(name, [])


@dataclass(frozen=True)
class Extraction:
    prompt: str = field(default="", repr=False)
    conversation_id: str | None = None
    message_id: str | None = None
    parent_message_id: str | None = None
    model: str | None = None
    attachments: tuple[str, ...] = field(default=(), repr=False)
    # Text elsewhere in the body that the app's extractor did not take as the prompt (a field
    # the app may read that we do not model): inspected with the prompt, never a hiding place.
    other_text: str = field(default="", repr=False)


Extractor = Callable[[RequestData], Extraction]


@dataclass
class Answer:
    """What a decoder reconstructed from a streamed answer.

    ``text`` is None when no answer text was found; ``error`` says why decoding was incomplete
    (never quoting the body), e.g. "truncated frame" or "unknown event shape".
    ``unknown_shapes`` counts well-formed events of a shape the decoder does not know: not an
    error of this answer (the app may have added a harmless event), but the drift alarm's signal
    that the app is changing; it takes no part in comparisons.
    """

    text: str | None = field(default=None, repr=False)
    conversation_id: str | None = None
    message_id: str | None = None
    title: str | None = field(default=None, repr=False)
    complete: bool = False
    error: str | None = None
    unknown_shapes: int = field(default=0, compare=False)


class AnswerDecoder(Protocol):
    """An accumulator fed the (content-decoded) response body in arbitrary chunks."""

    def feed(self, data: bytes) -> None: ...

    def close(self) -> Answer: ...


DecoderFactory = Callable[[], AnswerDecoder]


class SocketAnswerDecoder(Protocol):
    """Answers that arrive over a WebSocket: fed every server-to-client message of one socket.

    :meth:`message` returns the answers that message completed (one socket can carry several
    turns); :meth:`close` returns those still open when the socket ended (incomplete, noted so).
    Bounded like the stream decoders: a message is at most ``DEFAULT_MAX_EVENT`` characters and
    only a few turns are open at once."""

    def message(self, content: bytes) -> list[Answer]: ...

    def close(self) -> list[Answer]: ...


SocketDecoderFactory = Callable[[], SocketAnswerDecoder]
MAX_OPEN_TURNS = 8  # turns decoded at once on one socket; the oldest is closed past it


@dataclass(frozen=True)
class BlockReply:
    status: int
    headers: Mapping[str, str]
    body: bytes


BlockReplyMaker = Callable[[str, Extraction], BlockReply]

SSE_CONTENT_TYPE = "text/event-stream; charset=utf-8"


def json_403(body: object) -> BlockReply:
    """A 403 whose body is ``body`` as JSON: the apps show it in their error toasts, never retry."""
    return BlockReply(
        status=403,
        headers={"Content-Type": "application/json", "X-PromptFence": "blocked"},
        body=json.dumps(body).encode(),
    )


def answer_reply(body: bytes, content_type: str = SSE_CONTENT_TYPE) -> BlockReply:
    """A 200 that stands in for the app's (streamed) answer: the notice renders as the answer."""
    return BlockReply(
        status=200,
        headers={"Content-Type": content_type, "Cache-Control": "no-cache", "X-PromptFence": "blocked"},
        body=body,
    )


def sse_event(data: str, event: str | None = None, *, eol: str = "\n") -> str:
    """One SSE event as text: an optional ``event:`` line, one ``data:`` line, a blank line."""
    head = f"event: {event}{eol}" if event is not None else ""
    return f"{head}data: {data}{eol}{eol}"


def sse_json(value: object, event: str | None = None, *, eol: str = "\n") -> str:
    """:func:`sse_event` whose data is ``value`` as one line of JSON (non-ASCII kept as is)."""
    return sse_event(json.dumps(value, ensure_ascii=False), event, eol=eol)


# -- small tolerant helpers ------------------------------------------------------------------


def json_value(body: bytes | str) -> Any:
    """Parse JSON or raise :class:`ExtractionError` (without quoting the body)."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        return json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise ExtractionError("body is not JSON") from None


def json_object(body: bytes | str) -> Mapping[str, Any]:
    data = json_value(body)
    if not isinstance(data, dict):
        raise ExtractionError("body is not a JSON object")
    return data


def loads_or_none(text: object) -> Any:
    """``json.loads`` for nested JSON-in-a-string fields; None when it is not JSON."""
    if not isinstance(text, str):
        return None
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError):
        return None


def opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def dig(value: Any, *path: int | str) -> Any:
    """Safe nested indexing: ``dig(x, 4, 0, 1, 0)``; None as soon as a step does not fit."""
    for step in path:
        if isinstance(step, int) and isinstance(value, list):
            if -len(value) <= step < len(value):
                value = value[step]
                continue
            return None
        if isinstance(step, str) and isinstance(value, dict):
            value = value.get(step)
            continue
        return None
    return value


def dict_get(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
