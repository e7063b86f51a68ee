"""Gemini (gemini.google.com): request extractors, the frame decoder, the block reply.

Wire format: ``shared/design/apps/gemini.md``. Requests are forms whose ``f.req`` is JSON
holding JSON (``[null, "<inner>"]``; the prompt at inner[0][0]). Answers start with the
anti-XSSI guard ``)]}'`` and then repeat ``<length>\\n<JSON>\\n`` frames, the length counting
UTF-16 code units of the newline after the digits, the JSON and the trailing newline. Each
``wrb.fr`` envelope holds another JSON string whose candidates carry the **whole answer so
far**: the last snapshot wins; snapshots are never concatenated.
"""

from __future__ import annotations

import codecs
import json
import re
import uuid
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs

from proxy.wire import generic
from proxy.wire.base import (
    Answer,
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    ExtractionError,
    Extractor,
    RequestData,
    answer_reply,
    dig,
    json_value,
    loads_or_none,
    opt_str,
)

GUARD = ")]}'"
SHARE_RPC = "fuVx7"
GEM_RPCS = frozenset({"oMH3Zd", "kHv0Vd"})  # create / update a Gem: free-text instructions
MODEL_HEADER = "x-goog-ext-525001261-jspb"


def _form_field(request: RequestData, name: str) -> str:
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError:
        raise ExtractionError("form body is not UTF-8") from None
    values = parse_qs(text, keep_blank_values=True).get(name)
    if not values:
        raise ExtractionError(f"form field {name} is missing")
    return values[0]


def _strings(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 40:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, depth + 1)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item, depth + 1)


def stream_generate(request: RequestData) -> Extraction:
    """``StreamGenerate``: ``json.loads(f.req)[1]`` is the inner request, parsed again."""
    outer = json_value(_form_field(request, "f.req"))
    inner = loads_or_none(dig(outer, 1))
    if not isinstance(inner, list):
        raise ExtractionError("f.req has no inner request")
    prompt = dig(inner, 0, 0)
    files = dig(inner, 0, 3)
    names: list[str] = []
    for item in files if isinstance(files, list) else []:
        ref = opt_str(dig(item, 1)) or opt_str(dig(item, 0, 0))
        if ref:
            names.append(ref)
    model = None
    header = loads_or_none(request.headers.get(MODEL_HEADER))
    if isinstance(dig(header, 4), str):
        model = dig(header, 4)
    return Extraction(
        prompt=prompt if isinstance(prompt, str) else "",
        conversation_id=opt_str(dig(inner, 2, 0)),
        message_id=opt_str(dig(inner, 59)),
        parent_message_id=opt_str(dig(inner, 2, 1)),
        model=model,
        attachments=tuple(dict.fromkeys(names)),
    )


def batchexecute(request: RequestData) -> Extraction:
    """``batchexecute`` RPCs: Gem instructions are prompt text; a share names its conversation."""
    outer = json_value(_form_field(request, "f.req"))
    calls = dig(outer, 0)
    if not isinstance(calls, list):
        raise ExtractionError("f.req holds no RPC list")
    texts: list[str] = []
    conversation: str | None = None
    for call in calls:
        rpc, payload = dig(call, 0), loads_or_none(dig(call, 1))
        if rpc in GEM_RPCS:
            instructions = dig(payload, 0, 2)
            if isinstance(instructions, str):
                texts.append(instructions)
        if conversation is None:
            conversation = next((s for s in _strings(payload) if s.startswith("c_")), None)
    return Extraction(prompt="\n".join(texts), conversation_id=conversation)


def upload(request: RequestData) -> Extraction:
    """``content-push.googleapis.com/upload``: multipart, or the resumable start / bytes."""
    if request.content_type.lower().startswith("multipart/"):
        return generic.multipart_files(request)
    command = request.headers.get("x-goog-upload-command", "").lower()
    if command == "start" or request.body.startswith(b"File name: "):
        name = request.body.removeprefix(b"File name: ").decode("utf-8", "replace").strip()
        return Extraction(attachments=(name,) if name else ())
    return generic.raw_file(request)


# -- the answer frames ---------------------------------------------------------------------------

_LENGTH = re.compile(r"[ \t\r\n]*(\d{1,12})\n")


def _utf16_index(text: str, units: int) -> int | None:
    """The index in ``text`` after ``units`` UTF-16 code units, or None if text is shorter."""
    if len(text.encode("utf-16-le")) // 2 < units:
        return None
    count = 0
    for index, char in enumerate(text):
        if count >= units:
            return index
        count += 2 if ord(char) > 0xFFFF else 1
    return len(text) if count >= units else None


class GeminiFrameDecoder:
    MAX_BUFFER = 64 * 1024 * 1024

    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buf = ""
        self._guard_checked = False
        self._answer = Answer()
        self._final_status = False
        self._trailer = False
        self._bad_frames = 0
        self._app_error: int | None = None
        self._overflow = False

    def feed(self, data: bytes) -> None:
        if self._overflow:
            return
        self._buf += self._utf8.decode(data)
        if len(self._buf) > self.MAX_BUFFER:
            self._overflow, self._buf = True, ""
            return
        self._frames(final=False)

    def close(self) -> Answer:
        self._buf += self._utf8.decode(b"", final=True)
        self._frames(final=True)
        answer = self._answer
        answer.complete = self._final_status or self._trailer
        notes = []
        leftover = self._buf.strip()
        if leftover:
            notes.append("truncated frame at end of body")
        if self._bad_frames:
            notes.append(f"{self._bad_frames} undecodable frames")
        if self._app_error is not None:
            notes.append(f"the app reported error code {self._app_error}")
        if self._overflow:
            notes.append("answer larger than the decode buffer")
        if answer.text is None and not notes:
            notes.append("no answer candidate in the body")
        if not answer.complete and not notes:
            notes.append("answer not marked complete")
        answer.error = "; ".join(notes) or None
        return answer

    def _frames(self, *, final: bool) -> None:
        if not self._guard_checked:
            stripped = self._buf.lstrip()
            if len(stripped) < len(GUARD) and GUARD.startswith(stripped) and not final:
                return
            if stripped.startswith(GUARD):
                self._buf = stripped[len(GUARD) :]
            self._guard_checked = True
        for _ in range(100_000):  # bounded: each pass consumes input or stops
            match = _LENGTH.match(self._buf)
            if match is None:
                if re.fullmatch(r"[ \t\r\n]*\d*", self._buf) or not self._resync(final):
                    return
                continue
            rest = self._buf[match.end() - 1 :]  # the newline after the digits counts
            end = _utf16_index(rest, int(match.group(1)))
            if end is None and not final:
                return
            frame = None if end is None else loads_or_none(rest[:end].strip())
            if frame is None:
                # A wrong length (or a truncated last frame): parse the JSON that is there.
                self._buf = rest
                if not self._fallback(final):
                    return
                continue
            self._buf = rest[end:]
            self._frame(frame)

    def _fallback(self, final: bool) -> bool:
        text = self._buf.lstrip()
        try:
            frame, end = json.JSONDecoder().raw_decode(text)
        except (json.JSONDecodeError, RecursionError):
            return self._resync(final)
        self._buf = text[end:]
        self._frame(frame)
        return True

    def _resync(self, final: bool) -> bool:
        """Skip one line: an undecodable frame must not stall the rest. False: wait for more."""
        text = self._buf.lstrip("\r\n")
        _, newline, tail = text.partition("\n")
        if not newline and not final:
            return False
        self._bad_frames += 1
        self._buf = tail
        return bool(tail.strip())

    def _frame(self, frame: Any) -> None:
        if not isinstance(frame, list):
            self._bad_frames += 1
            return
        for envelope in frame:
            if not isinstance(envelope, list) or not envelope:
                continue
            tag = envelope[0]
            if tag == "wrb.fr":
                payload = dig(envelope, 2)
                if isinstance(payload, str):
                    inner = loads_or_none(payload)
                    if inner is None:
                        self._bad_frames += 1
                    else:
                        self._inner(inner)
                elif isinstance(dig(envelope, 5), list):
                    code = dig(envelope, 5, 2, 0, 1, 0)
                    self._app_error = code if isinstance(code, int) else -1
            elif tag == "e":
                self._trailer = True

    def _inner(self, inner: Any) -> None:
        cid, rid = dig(inner, 1, 0), dig(inner, 1, 1)
        if isinstance(cid, str) and cid:
            self._answer.conversation_id = cid
        if isinstance(rid, str) and rid:
            self._answer.message_id = rid
        candidates = dig(inner, 4)
        text: Any = None
        if isinstance(candidates, list) and candidates:
            text = dig(candidates, 0, 1, 0)
            if dig(candidates, 0, 8, 0) == 2:
                self._final_status = True
        if not isinstance(text, str):
            text = _scan_candidate(inner)
        if not isinstance(text, str) and candidates is None and isinstance(dig(inner, 0, 0), str):
            text = dig(inner, 0, 0)  # the 2023 layout: inner[0][0] is the answer
        if isinstance(text, str):
            self._answer.text = text


def _scan_candidate(value: Any, depth: int = 0) -> str | None:
    """Index drift fallback: the first ``["rc_…", [text, …]]`` anywhere in the payload."""
    if depth > 12 or not isinstance(value, list):
        return None
    if len(value) >= 2 and isinstance(value[0], str) and value[0].startswith("rc_"):
        text = dig(value, 1, 0)
        if isinstance(text, str):
            return text
    for item in value:
        found = _scan_candidate(item, depth + 1)
        if found is not None:
            return found
    return None


# -- block reply ---------------------------------------------------------------------------------


def _utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le")) // 2


def frame(envelopes: list[Any]) -> str:
    """One length-prefixed frame: the length counts both newlines, in UTF-16 units."""
    body = json.dumps(envelopes, ensure_ascii=False, separators=(",", ":"))
    return f"{_utf16_len(body) + 2}\n{body}\n"


def answer_body(text: str, cid: str, rid: str, rcid: str) -> bytes:
    inner = [None, [cid, rid], None, None, [[rcid, [text], None, None, None, None, None, None, [2]]]]
    frames = frame([["wrb.fr", None, json.dumps(inner, ensure_ascii=False, separators=(",", ":"))]])
    frames += frame([["di", 25], ["af.httprm", 24, "", 1]])
    head = f"{GUARD}\n\n"
    total = _utf16_len(head + frames)
    frames += frame([["e", 4, None, None, total]])
    return (head + frames).encode()


def assistant_notice(message: str, extraction: Extraction) -> BlockReply:
    """One finished candidate (status 2) whose text is the notice, plus the usual trailer."""

    def made_up(prefix: str) -> str:
        return f"{prefix}{uuid.uuid4().hex[:16]}"

    cid = extraction.conversation_id or made_up("c_")
    rid = made_up("r_")
    return answer_reply(answer_body(message, cid, rid, made_up("rc_")), "application/json; charset=utf-8")


EXTRACTORS: Mapping[str, Extractor] = {
    "gemini.stream_generate": stream_generate,
    "gemini.batchexecute": batchexecute,
    "gemini.upload": upload,
}
DECODERS: Mapping[str, DecoderFactory] = {"gemini.frames": GeminiFrameDecoder}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {"gemini.assistant_notice": assistant_notice}
