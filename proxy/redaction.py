"""Request rewriters for the ``redact`` action: detected spans become ``[TYPE]`` placeholders.

A rewriter exists only where an app's request can be rewritten *safely*: it is looked up by
the operation's extractor name in :data:`REWRITERS`. Spans are offsets into the prompt the
extractor produced, so every rewriter walks the body the way its extractor does, and
:func:`rewrite_request` then proves the result: it re-extracts the rewritten body and requires
exactly the redacted prompt. Anything else (an unknown shape, a prompt that does not match,
an operation without a rewriter) raises :class:`RedactionError`, and the addon blocks instead:
a redaction that might have missed something is never sent.

Error messages never quote the body or the prompt.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from promptfence.core import Redaction
from proxy.extraction import EXTRACTORS, ExtractionError, RequestData

if TYPE_CHECKING:
    from mitmproxy import http


class RedactionError(ValueError):
    """The request cannot be rewritten safely; the caller must not send the original."""


def redact_text(text: str, redactions: Sequence[Redaction]) -> str:
    """Replace each span (non-overlapping, inside ``text``) with its placeholder."""
    out: list[str] = []
    cursor = 0
    for red in sorted(redactions, key=lambda r: r.start):
        if red.start < cursor or red.end > len(text) or red.start >= red.end:
            raise RedactionError("redaction spans overlap or fall outside the prompt")
        out.append(text[cursor : red.start])
        out.append(red.placeholder)
        cursor = red.end
    out.append(text[cursor:])
    return "".join(out)


def _redact_segments(segments: list[str], redactions: Sequence[Redaction], joiner: str = "\n") -> list[str]:
    """Redact ``joiner.join(segments)`` segment by segment; a span across segments is cut at
    each boundary and every piece gets the placeholder (the joiner itself stays)."""
    result: list[str] = []
    offset = 0
    for segment in segments:
        start, end = offset, offset + len(segment)
        local = [
            Redaction(max(r.start, start) - start, min(r.end, end) - start, r.label)
            for r in redactions
            if r.start < end and r.end > start
        ]
        result.append(redact_text(segment, local))
        offset = end + len(joiner)
    return result


def _json(body: bytes) -> Any:
    try:
        return json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise RedactionError("body is not JSON") from None


def _dump(data: Any) -> bytes:
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _chatgpt_conversation(body: bytes, redactions: Sequence[Redaction]) -> bytes:
    """SendPrompt: the string parts of every non-assistant message, joined by newlines."""
    data = _json(body)
    if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
        raise RedactionError("no messages list")
    slots: list[tuple[list[Any], int]] = []
    for message in data["messages"]:
        if not isinstance(message, dict):
            continue
        author = message.get("author")
        if isinstance(author, dict) and author.get("role") == "assistant":
            continue
        content = message.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        if isinstance(parts, list):
            slots.extend((parts, i) for i, part in enumerate(parts) if isinstance(part, str))
    new = _redact_segments([parts[i] for parts, i in slots], redactions)
    for (parts, i), text in zip(slots, new, strict=True):
        parts[i] = text
    return _dump(data)


def _chatgpt_prepare(body: bytes, redactions: Sequence[Redaction]) -> bytes:
    """The draft sent before SendPrompt: ``partial_query`` as a string or a message."""
    data = _json(body)
    if not isinstance(data, dict):
        raise RedactionError("not a JSON object")
    partial = data.get("partial_query")
    if isinstance(partial, str):
        data["partial_query"] = _redact_segments([partial], redactions)[0]
        return _dump(data)
    content = partial.get("content") if isinstance(partial, dict) else None
    parts = content.get("parts") if isinstance(content, dict) else None
    if not isinstance(parts, list):
        raise RedactionError("no partial query")
    index = [i for i, p in enumerate(parts) if isinstance(p, str)]
    for i, text in zip(index, _redact_segments([parts[i] for i in index], redactions), strict=True):
        parts[i] = text
    return _dump(data)


Rewriter = Callable[[bytes, Sequence[Redaction]], bytes]

# Keyed by extractor name (as in the app catalogue): one rewriter per body shape.
REWRITERS: Mapping[str, Rewriter] = {
    "chatgpt.conversation": _chatgpt_conversation,
    "chatgpt.prepare": _chatgpt_prepare,
}


def can_redact(extractor: str | None) -> bool:
    return extractor is not None and extractor in REWRITERS and extractor in EXTRACTORS


def request_data(flow: http.HTTPFlow) -> RequestData:
    """What an extractor sees of the flow's request (content-decoded body)."""
    try:
        body = flow.request.get_content(strict=True) or b""
    except ValueError:
        raise RedactionError("request body has an undecodable content-encoding") from None
    path, _, query = flow.request.path.partition("?")
    headers = {k.lower(): flow.request.headers[k] for k in flow.request.headers}
    return RequestData(body=body, path=path, query=query, headers=headers)


def rewrite_request(extractor: str | None, request: RequestData, prompt: str, redactions: Sequence[Redaction]) -> bytes:
    """The body with every span replaced, verified by extracting it again."""
    if extractor is None or not can_redact(extractor):
        raise RedactionError(f"no request rewriter for {extractor or 'this operation'}")
    expected = redact_text(prompt, redactions)
    extract = EXTRACTORS[extractor]
    try:
        if extract(request).prompt != prompt:
            raise RedactionError("the body does not hold the inspected prompt")
        rewritten = REWRITERS[extractor](request.body, redactions)
        if extract(dataclasses.replace(request, body=rewritten)).prompt != expected:
            raise RedactionError("the rewritten body does not hold the redacted prompt")
    except ExtractionError as exc:
        raise RedactionError(f"could not decode request: {exc}") from None
    return rewritten


def apply_to_flow(flow: http.HTTPFlow, extractor: str | None, prompt: str, redactions: Sequence[Redaction]) -> None:
    """Rewrite the flow's request body in place (content-encoding and length follow)."""
    flow.request.content = rewrite_request(extractor, request_data(flow), prompt, redactions)
