"""App-independent pieces: file-upload extractors and the plain block replies."""

from __future__ import annotations

import email.parser
import email.policy
from collections.abc import Mapping

from proxy.wire.base import (
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    ExtractionError,
    Extractor,
    RequestData,
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


def multipart_files(request: RequestData) -> Extraction:
    """``multipart/form-data`` uploads: file names become attachments, text files the prompt."""
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
        if not filename:
            continue
        names.append(str(filename))
        data = payload if isinstance(payload, bytes) else b""
        if _is_text(part.get_content_type(), data):
            texts.append(data.decode("utf-8", "replace"))
    return Extraction(prompt="\n".join(texts), attachments=tuple(names))


def raw_file(request: RequestData) -> Extraction:
    """A raw upload body (a blob PUT): inspected as text when it is text; no name is known."""
    if request.content_type.lower().startswith("multipart/"):
        return multipart_files(request)
    text = request.body.decode("utf-8", "replace") if _is_text(request.content_type, request.body) else ""
    return Extraction(prompt=text)


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
}
DECODERS: Mapping[str, DecoderFactory] = {}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {
    "json.detail_403": json_detail_403,
    "text.plain_403": plain_text_403,
}
DEFAULT_BLOCK_REPLY = "text.plain_403"
