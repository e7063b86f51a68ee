"""An incremental Server-Sent Events parser (WHATWG HTML, "Parsing an event stream").

Bytes in, events out, for any chunking: a UTF-8 sequence, a CRLF pair or a field may be split
anywhere between two ``feed`` calls. Lines end in CRLF, LF or CR; a leading BOM is dropped;
``:`` lines are comments; several ``data:`` lines join with LF; an event is dispatched on a
blank line only when its data buffer is not empty; ``id`` with NUL is ignored; ``retry`` must
be all digits. At end of stream an unterminated event is discarded, as the standard says, and
:attr:`SSEDecoder.truncated` reports it so callers can note "truncated".
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from proxy.wire.base import Answer

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str = "message"
    data: str = field(default="", repr=False)
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    def __init__(self) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._line = ""
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._has_data = False
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self._pending_fields = False

    @property
    def truncated(self) -> bool:
        """True when the stream ended inside a line or inside an event (after :meth:`close`)."""
        return bool(self._line) or self._pending_fields

    def feed(self, data: bytes) -> list[SSEEvent]:
        return self._text(self._utf8.decode(data))

    def close(self) -> list[SSEEvent]:
        """Flush the UTF-8 decoder; an unterminated event is not dispatched (WHATWG)."""
        return self._text(self._utf8.decode(b"", final=True))

    def _text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not self._started and (self._line or text):
            buf0 = self._line + text
            if buf0.startswith("\ufeff"):
                self._line, text = "", buf0[1:]
            else:
                self._line, text = "", buf0
            self._started = True
        buf = self._line + text
        events: list[SSEEvent] = []
        pos = 0
        for match in _EOL.finditer(buf):
            line = buf[pos : match.start()]
            pos = match.end()
            if match.group() == "\r" and pos == len(buf):
                self._skip_lf = True  # a CRLF pair may be split across chunks
            self._line_done(line, events)
        self._line = buf[pos:]
        return events

    def _line_done(self, line: str, events: list[SSEEvent]) -> None:
        if not line:
            self._dispatch(events)
            return
        if line[0] == ":":
            return
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        self._pending_fields = True
        if name == "data":
            self._data.append(value)
            self._has_data = True
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\x00" not in value:
                self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _dispatch(self, events: list[SSEEvent]) -> None:
        self._pending_fields = False
        if not self._has_data:
            self._event = ""
            return
        events.append(SSEEvent(self._event or "message", "\n".join(self._data), self._last_id, self._retry))
        self._data = []
        self._has_data = False
        self._event = ""


class SSEAnswerDecoder:
    """The second stage's common part: SSE events to :meth:`_event`, then the app's :meth:`_finish`.

    Subclasses fold events into ``self._answer`` and count what they could not read in
    ``self._undecodable``; :meth:`_notes` words what went wrong the same way for every app.
    """

    def __init__(self) -> None:
        self._sse = SSEDecoder()
        self._answer = Answer()
        self._undecodable = 0

    def feed(self, data: bytes) -> None:
        for event in self._sse.feed(data):
            self._event(event)

    def close(self) -> Answer:
        for event in self._sse.close():
            self._event(event)
        return self._finish()

    def _event(self, event: SSEEvent) -> None:
        raise NotImplementedError

    def _finish(self) -> Answer:
        raise NotImplementedError

    def _notes(self, *, ended: bool, end: str, app: list[str], no_answer: str | None = None) -> str | None:
        """``answer.error``: the stream ended before ``end``, undecodable events, the ``app`` notes,
        and ``no_answer`` when nothing else went wrong but no answer text was found."""
        notes = []
        if not ended:
            notes.append(f"stream ended {end}" + (" (truncated event)" if self._sse.truncated else ""))
        if self._undecodable:
            notes.append(f"{self._undecodable} undecodable events")
        notes.extend(app)
        if no_answer is not None and self._answer.text is None and not notes:
            notes.append(no_answer)
        return "; ".join(notes) or None
