"""App-independent pieces: file-upload extractors and the plain block replies."""

from __future__ import annotations

import codecs
import email.parser
import email.policy
import json
import re
from collections.abc import Mapping
from urllib.parse import parse_qsl

from proxy.wire.base import (
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    ExtractionError,
    Extractor,
    RequestData,
    SocketDecoderFactory,
    json_403,
)

TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-yaml", "application/csv")


def _is_text(content_type: str, data: bytes) -> bool:
    """Inspect a file's bytes as text when its type says so or it decodes cleanly as UTF-8."""
    if content_type.lower().startswith(TEXT_TYPES):
        return True
    if not data or b"\x00" in data[:4096]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def multipart_files(request: RequestData, *, include_fields: bool = False) -> Extraction:
    """``multipart/form-data`` uploads: file names become attachments, text files the prompt
    (and, with ``include_fields``, every text field without a file name too)."""
    content_type = request.content_type
    if not content_type.lower().startswith("multipart/"):
        raise ExtractionError("body is not multipart")
    parser = email.parser.BytesParser(policy=email.policy.HTTP)
    try:
        message = parser.parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + request.body)
    except (UnicodeEncodeError, ValueError, TypeError, LookupError):
        raise ExtractionError("multipart body could not be parsed") from None
    if not message.is_multipart():
        raise ExtractionError("multipart body has no parts")
    names: list[str] = []
    texts: list[str] = []
    for part in message.iter_parts():
        try:
            filename = part.get_filename()
            payload = part.get_payload(decode=True)
        except (ValueError, TypeError, LookupError):
            continue
        data = payload if isinstance(payload, bytes) else b""
        if not filename:
            if include_fields and _is_text(part.get_content_type(), data):
                texts.append(data.decode("utf-8", "replace"))
            continue
        names.append(str(filename))
        if _is_text(part.get_content_type(), data):
            texts.append(data.decode("utf-8", "replace"))
    return Extraction(prompt="\n".join(texts), attachments=tuple(names))


def raw_file(request: RequestData) -> Extraction:
    """A raw upload body (a blob PUT): inspected as text when it is text; no name is known."""
    if request.content_type.lower().startswith("multipart/"):
        return multipart_files(request)
    text = request.body.decode("utf-8", "replace") if _is_text(request.content_type, request.body) else ""
    return Extraction(prompt=text)


MAX_LEAVES = 100_000


def _charset(content_type: str) -> str:
    for param in content_type.split(";")[1:]:
        key, _, value = param.partition("=")
        if key.strip().lower() == "charset":
            name = value.strip().strip('"').lower()
            try:
                return codecs.lookup(name).name
            except LookupError:
                return "utf-8"
    return "utf-8"


class _Key(str):
    """A JSON object key on the walk stack (keys can carry text too)."""


MAX_EMBEDDED_JSON = 4


def _embedded_json(text: str) -> object | None:
    """JSON carried inside a JSON string (Gemini's ``f.req``, many SPAs' envelopes), or None."""
    stripped = text.strip()
    if stripped[:1] not in ("{", "[") or stripped[-1:] not in ("}", "]"):
        return None
    try:
        return _parse_json(stripped)
    except (ValueError, ExtractionError):
        return None


def _json_leaves(document: object, *, keys: bool = True, skip: frozenset[str] = frozenset()) -> list[str]:
    """Every key and scalar of a JSON document in document order, walked without recursion
    (any depth is fine); a string that is itself JSON is opened up to :data:`MAX_EMBEDDED_JSON`
    levels deep."""
    leaves: list[str] = []
    stack: list[tuple[object, int]] = [(document, 0)]
    while stack and len(leaves) < MAX_LEAVES:
        node, level = stack.pop()
        if isinstance(node, dict):
            for key, value in reversed(list(node.items())):
                if key in skip:
                    continue
                stack.append((value, level))
                stack.append((_Key(key), level))
        elif isinstance(node, list):
            stack.extend((item, level) for item in reversed(node))
        elif isinstance(node, _Key):
            if node and keys:
                leaves.append(str(node))
        elif isinstance(node, str):
            inner = _embedded_json(node) if level < MAX_EMBEDDED_JSON else None
            if inner is not None:
                stack.append((inner, level + 1))
            elif node:
                leaves.append(node)
        elif node is not None and not isinstance(node, bool):
            leaves.append(str(node))
    if stack:
        raise ExtractionError(f"more than {MAX_LEAVES} values in the body")
    return leaves


def _parse_json(text: str) -> object:
    # Numbers stay text: a 5000-digit "number" is inspected, not an int-conversion error, and an
    # SSN sent as a JSON number is still digits the detectors see.
    try:
        return json.loads(text, parse_int=str, parse_float=str, parse_constant=str)
    except RecursionError:
        raise ExtractionError("JSON nested too deep to parse") from None


def text_leaves(request: RequestData) -> Extraction:
    """Any body a known app's host receives on a path the catalogue does not map (``Unknown``):
    every string leaf of JSON, every form field, every text part of a multipart body, or the
    text itself. Unknown endpoints get the widest reading, not the narrowest."""
    content_type = request.content_type.lower()
    body = request.body
    if not body:
        return Extraction()
    if content_type.startswith("multipart/"):
        return multipart_files(request, include_fields=True)
    if not _is_text(content_type, body):
        return Extraction()
    text = body.decode(_charset(content_type), "replace")
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_LEAVES)
        except ValueError:
            raise ExtractionError(f"more than {MAX_LEAVES} form fields") from None
        return Extraction(prompt="\n".join(_json_leaves([v for pair in pairs for v in pair])))
    stripped = text.lstrip()
    if stripped[:1] in ("{", "[", '"'):
        try:
            document = _parse_json(stripped)
        except ValueError:
            return Extraction(prompt=text)  # not JSON after all: the text is what we inspect
        return Extraction(prompt="\n".join(_json_leaves(document)))
    return Extraction(prompt=text)


_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE)
MAX_SUBSTRING_CHECKS = 1000
MAX_SUBSTRING_PROMPT = 1 << 20


_PLAIN_NUMBER = re.compile(r"^-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?$")


def _worth_inspecting(leaf: str) -> bool:
    """A value that can carry data: words, a long token (keys, blobs), digits with separators
    (SSNs, phone numbers), a card-length number, an address. Enum-like values of the app's own
    schema ("next", "auto", "v1"), ids, and sizes or timestamps are not."""
    if _UUID.match(leaf):
        return False
    if _PLAIN_NUMBER.match(leaf):
        return sum(c.isdigit() for c in leaf) >= 13
    return (
        len(leaf) >= 16
        or "@" in leaf
        or any(c.isspace() for c in leaf.strip())
        or sum(c.isdigit() for c in leaf) >= 4
    )


def _value_leaves(request: RequestData, skip: frozenset[str]) -> list[str]:
    """The values (not keys) of a JSON or form body, or the text fields of a multipart one."""
    content_type = request.content_type.lower()
    if content_type.startswith("multipart/"):
        fields = multipart_files(RequestData(request.body, headers=request.headers), include_fields=True)
        return fields.prompt.split("\n") if fields.prompt else []
    if not _is_text(content_type, request.body):
        return []
    text = request.body.decode(_charset(content_type), "replace")
    if content_type.startswith("application/x-www-form-urlencoded"):
        try:
            pairs = parse_qsl(text, keep_blank_values=True, max_num_fields=MAX_LEAVES)
        except ValueError:
            return [text]
        return _json_leaves([value for name, value in pairs if name not in skip], keys=False, skip=skip)
    try:
        document = _parse_json(text.lstrip())
    except (ValueError, ExtractionError):
        return []
    return _json_leaves(document, keys=False, skip=skip)


def other_fields_text(request: RequestData, extraction: Extraction, opaque: frozenset[str] = frozenset()) -> str:
    """What else the body says, besides the prompt the app's extractor found (see
    :attr:`Extraction.other_text`). Over-inspecting costs detector time, never a bypass.
    ``opaque`` names fields that hold the app's own tokens (Gemini's ``at``): not inspected."""
    prompt = extraction.prompt
    prompt_lines = set(prompt.split("\n"))
    known = {
        v for v in (extraction.conversation_id, extraction.message_id, extraction.parent_message_id, extraction.model)
        if v
    } | set(extraction.attachments)
    out: list[str] = []
    seen: set[str] = set()
    checks = 0
    for leaf in _value_leaves(request, opaque):
        if leaf in seen or leaf in known or leaf in prompt_lines or not _worth_inspecting(leaf):
            continue
        if "\n" in leaf and checks < MAX_SUBSTRING_CHECKS and len(prompt) <= MAX_SUBSTRING_PROMPT:
            checks += 1
            if leaf in prompt:
                continue
        seen.add(leaf)
        out.append(leaf)
    return "\n".join(out)


def json_detail_403(message: str, extraction: Extraction) -> BlockReply:
    """``{"detail": ...}`` with 403: shown by the apps' error toasts and never retried."""
    return json_403({"detail": {"message": message, "code": "blocked_by_promptfence"}})


def plain_text_403(message: str, extraction: Extraction) -> BlockReply:
    return BlockReply(
        status=403,
        headers={"Content-Type": "text/plain; charset=utf-8", "X-PromptFence": "blocked"},
        body=message.encode(),
    )


EXTRACTORS: Mapping[str, Extractor] = {
    "upload.multipart": multipart_files,
    "upload.raw": raw_file,
    "generic.text_leaves": text_leaves,
}
DECODERS: Mapping[str, DecoderFactory] = {}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {
    "json.detail_403": json_detail_403,
    "text.plain_403": plain_text_403,
}
DEFAULT_BLOCK_REPLY = "text.plain_403"
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = {}
