"""Gemini (gemini.google.com): request extractors, the frame decoder, the block reply.

Wire format: ``shared/design/apps/gemini.md``. Requests are forms whose ``f.req`` is JSON
holding JSON (``[null, "<inner>"]``; the prompt at inner[0][0]). Answers start with the
anti-XSSI guard ``)]}'`` and then repeat ``<length>\\n<JSON>\\n`` frames, the length counting
UTF-16 code units of the newline after the digits, the JSON and the trailing newline. Each
``wrb.fr`` envelope holds another JSON string whose candidates carry the **whole answer so
far**: the last snapshot wins; snapshots are never concatenated.

What the real responses add to that: a body may hold a bare JSON array with no length line
(``)]}'``, a blank line, then one array, possibly over several lines, when the request did not
ask for chunks); an error envelope ``["wrb.fr",null,null,null,null,[N]]`` has its code at
``[5][0]`` (or, with error details, at ``[5][2][0][1][0]``); a body that ends with the
``di`` / ``af.httprm`` trailer and no ``e`` frame is complete.
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
    DEFAULT_MAX_EVENT,
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
_WS = re.compile(r"[ \t\r\n]*")
_PARTIAL_LENGTH = re.compile(r"\d{0,12}\Z")
_JSON = json.JSONDecoder()


# Bookkeeping envelopes that end a response: the ``e`` frame, or ``di`` / ``af.httprm`` without it.
TRAILER_TAGS = frozenset({"e", "di", "af.httprm"})


def _cut_short(buf: str, exc: json.JSONDecodeError) -> bool:
    """The JSON failed only because the text ends too soon (more may come), not because it is wrong."""
    return exc.pos >= len(buf.rstrip()) or exc.msg.startswith("Unterminated string")


def _skip_ws(text: str, pos: int) -> int:
    match = _WS.match(text, pos)
    return pos if match is None else match.end()


def _utf16_end(text: str, start: int, units: int) -> int | None:
    """The index in ``text`` after ``units`` UTF-16 code units from ``start``, or None if shorter."""
    stop = start + units
    window = text[start:stop]
    if len(window.encode("utf-16-le", "surrogatepass")) == 2 * len(window):  # all BMP: one unit each
        return stop if len(window) == units else None
    count = 0
    for index in range(start, len(text)):
        if count >= units:
            return index
        count += 2 if ord(text[index]) > 0xFFFF else 1
    return len(text) if count >= units else None


class GeminiFrameDecoder:
    """Length-prefixed frames, decoded in linear time whatever the upstream sends.

    Unparsed text is kept as parts (joined only when a parse can make progress), a parse that must
    wait for more text sets how much more (the declared frame, or twice what is pending when the
    length is unknown), positions move through the buffer instead of re-slicing it, a length over
    ``max_frame`` is treated as wrong (the JSON that is there is parsed instead), and failed
    re-synchronisation is charged to a work budget proportional to the input. Past ``max_frame``
    characters pending, decoding stops and the answer's error says so.
    """

    def __init__(self, *, max_frame: int = DEFAULT_MAX_EVENT) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_frame
        self._parts: list[str] = []
        self._pending = 0  # characters in _parts
        self._need = 0  # no new parse before this many characters are pending
        self._received = 0
        self._work = 0  # characters scanned by parses that failed
        self._stopped: str | None = None
        self._guard_checked = False
        self._answer = Answer()
        self._final_status = False
        self._trailer = False
        self._bad_frames = 0
        self._app_error: int | None = None
        self.unknown_shapes = 0  # envelopes of a tag we do not know (the drift alarm's signal)

    def feed(self, data: bytes) -> None:
        if self._stopped is not None:
            return
        self._add(self._utf8.decode(data))
        if self._pending >= self._need and self._pending:
            self._frames(final=False)

    def _add(self, text: str) -> None:
        if not text:
            return
        self._parts.append(text)
        self._pending += len(text)
        self._received += len(text)
        if self._pending > self._max + 64:
            self._stop(f"frame longer than {self._max} characters: not decoded past it")

    def _stop(self, reason: str) -> None:
        self._stopped = self._stopped or reason
        self._parts, self._pending = [], 0

    def close(self) -> Answer:
        if self._stopped is None:
            self._add(self._utf8.decode(b"", final=True))
        if self._stopped is None:
            self._frames(final=True)
        answer = self._answer
        answer.unknown_shapes = self.unknown_shapes
        # An error reply is a whole body but not a whole answer.
        answer.complete = (self._final_status or self._trailer) and self._app_error is None
        notes = []
        if any(part.strip() for part in self._parts):
            notes.append("truncated frame at end of body")
        if self._bad_frames:
            notes.append(f"{self._bad_frames} undecodable frames")
        if self._app_error is not None:
            notes.append(f"the app reported error code {self._app_error}")
        if self._stopped is not None:
            notes.append(self._stopped)
        if answer.text is None and not notes:
            notes.append("no answer candidate in the body")
        if not answer.complete and not notes:
            notes.append("answer not marked complete")
        answer.error = "; ".join(notes) or None
        return answer

    def _frames(self, *, final: bool) -> None:
        buf = self._parts[0] if len(self._parts) == 1 else "".join(self._parts)
        self._need = 0
        pos = self._parse(buf, final)
        if self._stopped is None:
            rest = buf[pos:]
            self._parts, self._pending = ([rest] if rest else []), len(rest)

    def _wait(self, buf: str, pos: int, need: int | None = None) -> int:
        """Stop parsing at ``pos`` until ``need`` characters (default: twice the rest) are pending."""
        pending = len(buf) - pos
        self._need = need if need is not None else 2 * pending + 1
        return pos

    def _parse(self, buf: str, final: bool) -> int:
        pos = 0
        if not self._guard_checked:
            ws = _skip_ws(buf, 0)
            if not final and len(buf) - ws < len(GUARD) and GUARD.startswith(buf[ws:]):
                return self._wait(buf, 0)
            if buf.startswith(GUARD, ws):
                pos = ws + len(GUARD)
            self._guard_checked = True
        while pos < len(buf) and self._stopped is None:
            match = _LENGTH.match(buf, pos)
            if match is None:
                pos = _skip_ws(buf, pos)
                if _PARTIAL_LENGTH.match(buf, pos):  # only the digits of a length so far
                    return pos if final else self._wait(buf, pos, len(buf) - pos + 1)
                progressed, pos = self._fallback(buf, pos, final)
                if not progressed:
                    return pos
                continue
            units = int(match.group(1))
            start = match.end() - 1  # the newline after the digits counts
            end = _utf16_end(buf, start, units) if units <= self._max else None
            if end is None and not final and units <= self._max:
                return self._wait(buf, pos, start - pos + units)  # units >= characters: enough
            frame = None if end is None else loads_or_none(buf[start:end].strip())
            if end is None or frame is None:
                # A wrong length (or a truncated last frame): parse the JSON that is there.
                progressed, pos = self._fallback(buf, start, final)
                if not progressed:
                    return pos
                continue
            pos = end
            self._frame(frame)
        return pos

    def _fallback(self, buf: str, at: int, final: bool) -> tuple[bool, int]:
        at = _skip_ws(buf, at)
        if at == len(buf):
            return False, at
        try:
            frame, end = _JSON.raw_decode(buf, at)
        except json.JSONDecodeError as exc:
            if not final and _cut_short(buf, exc):
                return False, self._wait(buf, at)  # a bare array still arriving: wait, do not skip it
            return self._resync(buf, at, final, max(exc.pos - at, 1))
        except RecursionError:
            return self._resync(buf, at, final, len(buf) - at)
        self._frame(frame)
        return True, end

    def _resync(self, buf: str, at: int, final: bool, scanned: int) -> tuple[bool, int]:
        """Skip one line: an undecodable frame must not stall the rest. False: wait for more."""
        self._work += scanned
        if self._work > 4 * self._received + (1 << 20):
            self._stop("undecodable frames: gave up re-synchronising")
            return False, at
        newline = buf.find("\n", at)
        if newline < 0 and not final:
            return False, self._wait(buf, at)
        self._bad_frames += 1
        if newline < 0:
            return False, len(buf)
        return True, newline + 1

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
                    if not isinstance(code, int):
                        code = dig(envelope, 5, 0)
                    self._app_error = code if isinstance(code, int) and not isinstance(code, bool) else -1
            elif tag in TRAILER_TAGS:
                self._trailer = True
            else:
                self.unknown_shapes += 1

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
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = {}
