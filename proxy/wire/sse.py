"""An incremental Server-Sent Events parser (WHATWG HTML, "Parsing an event stream").

Bytes in, events out, for any chunking: a UTF-8 sequence, a CRLF pair or a field may be split
anywhere between two ``feed`` calls. Lines end in CRLF, LF or CR; a leading BOM is dropped;
``:`` lines are comments; several ``data:`` lines join with LF; an event is dispatched on a
blank line only when its data buffer is not empty; ``id`` with NUL is ignored; ``retry`` must
be all digits. At end of stream an unterminated event is discarded, as the standard says, and
:attr:`SSEDecoder.truncated` reports it so callers can note "truncated".

**At close, the apps' way.** Real answer streams often end ``data: [DONE]\n`` and then close the
connection, without the blank line that would dispatch the event. ``close(dispatch_pending=True)``
(what :class:`SSEAnswerDecoder` uses) dispatches such a pending event when it has data, the last
line too when it has no line end; :attr:`SSEDecoder.truncated` still says the stream ended inside
an event, and :attr:`SSEDecoder.tail_unterminated` that the dispatched event's last line had no
end (it may be cut), so a decoder can tell "cut" from "undecodable".

**Bounded and linear.** The upstream decides how long a line is; a 16 MB line without a newline
must not cost 16 MB x chunks. Only newly fed text is scanned for line ends, an unterminated line
is kept as a list of parts joined once, and a line or an event's data longer than ``max_event``
characters is not kept at all: that event is dropped and counted in :attr:`SSEDecoder.oversized`.
"""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from proxy.wire.base import DEFAULT_ANSWER_LIMIT, DEFAULT_MAX_EVENT, Answer

_EOL = re.compile(r"\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    event: str = "message"
    data: str = field(default="", repr=False)
    id: str = ""
    retry: int | None = None


class SSEDecoder:
    def __init__(self, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._max = max_event
        self._parts: list[str] = []  # the unterminated line, in the pieces it arrived in
        self._line_len = 0
        self._line_over = False  # the unterminated line passed max_event: its text is not kept
        self._skip_lf = False
        self._started = False
        self._data: list[str] = []
        self._data_len = 0
        self._has_data = False
        self._event_over = False  # the current event passed max_event: it is dropped
        self._event = ""
        self._last_id = ""
        self._retry: int | None = None
        self._pending_fields = False
        self._closed_truncated: bool | None = None
        self.tail_unterminated = False
        self.oversized = 0

    @property
    def max_event(self) -> int:
        return self._max

    @property
    def truncated(self) -> bool:
        """True when the stream ended inside a line or inside an event (after :meth:`close`)."""
        if self._closed_truncated is not None:
            return self._closed_truncated
        return bool(self._parts) or self._line_over or self._pending_fields

    def feed(self, data: bytes) -> list[SSEEvent]:
        return self._text(self._utf8.decode(data))

    def close(self, *, dispatch_pending: bool = False) -> list[SSEEvent]:
        """Flush the UTF-8 decoder; an unterminated event is not dispatched (WHATWG) unless
        ``dispatch_pending``: then a pending event with data is, its unterminated last line too."""
        events = self._text(self._utf8.decode(b"", final=True))
        self._closed_truncated = self.truncated
        if not dispatch_pending:
            return events
        if self._line_over:  # the unterminated last line was too long: its event is dropped (counted)
            self._line_over, self._pending_fields, self._event_over = False, True, True
        elif self._parts:
            line = "".join(self._parts)
            self._parts, self._line_len = [], 0
            self.tail_unterminated = True
            self._line_done(line, events)
        if self._pending_fields and (self._event_over or self._has_data):
            self._dispatch(events)
        return events

    def _text(self, text: str) -> list[SSEEvent]:
        if not text:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if text[0] == "\n":
                text = text[1:]
        if not self._started and text:
            self._started = True
            if text[0] == "\ufeff":
                text = text[1:]
        events: list[SSEEvent] = []
        pos = 0
        for match in _EOL.finditer(text):
            piece = text[pos : match.start()]
            pos = match.end()
            if match.group() == "\r" and pos == len(text):
                self._skip_lf = True  # a CRLF pair may be split across chunks
            over = self._line_over or self._line_len + len(piece) > self._max
            line = "" if over else ("".join(self._parts) + piece if self._parts else piece)
            self._parts, self._line_len, self._line_over = [], 0, False
            if over:
                self._pending_fields = self._event_over = True
            else:
                self._line_done(line, events)
        rest = text[pos:]
        if rest and not self._line_over:
            self._line_len += len(rest)
            if self._line_len > self._max:
                self._parts, self._line_over = [], True
            else:
                self._parts.append(rest)
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
            self._data_len += len(value) + 1
            if self._data_len > self._max:
                self._data, self._event_over = [], True
            elif not self._event_over:
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
        if self._event_over:
            self.oversized += 1
        elif self._has_data:
            events.append(SSEEvent(self._event or "message", "\n".join(self._data), self._last_id, self._retry))
        self._data, self._data_len, self._has_data, self._event_over = [], 0, False, False
        self._event = ""


class SSEAnswerDecoder:
    """The second stage's common part: SSE events to :meth:`_event`, then the app's :meth:`_finish`.

    Subclasses fold events into ``self._answer``, count what they could not read in
    ``self._undecodable`` and well-formed events of a shape they do not know in
    ``self._unknown`` (the drift alarm's signal: not an error of this answer);
    :meth:`_notes` words what went wrong the same way for every app.
    Text that accumulates across events goes through :meth:`_grow` first: past ``answer_limit``
    characters nothing more is added, and the answer's error says so.
    """

    def __init__(self, *, answer_limit: int = DEFAULT_ANSWER_LIMIT, max_event: int = DEFAULT_MAX_EVENT) -> None:
        self._sse = SSEDecoder(max_event)
        self._answer = Answer()
        self._undecodable = 0
        self._unknown = 0
        self._answer_limit = answer_limit
        self._answer_chars = 0
        self._capped = False

    def _grow(self, chars: int) -> bool:
        """Account for ``chars`` more answer text; False (and capped for good) past the limit."""
        if not self._capped and self._answer_chars + chars <= self._answer_limit:
            self._answer_chars += chars
            return True
        self._capped = True
        return False

    def feed(self, data: bytes) -> None:
        for event in self._sse.feed(data):
            self._event(event)

    def close(self) -> Answer:
        events = self._sse.close(dispatch_pending=True)
        for index, event in enumerate(events):
            before = self._undecodable
            self._event(event)
            cut = self._sse.tail_unterminated and index == len(events) - 1
            if cut and self._undecodable > before:
                self._undecodable = before  # a cut last line: "truncated event" says it, not "undecodable"
        answer = self._finish()
        answer.unknown_shapes = self._unknown
        return answer

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
        if self._sse.oversized:
            notes.append(f"{self._sse.oversized} events over {self._sse.max_event} characters skipped")
        if self._capped:
            notes.append(f"answer longer than {self._answer_limit} characters: not decoded past it")
        notes.extend(app)
        if no_answer is not None and self._answer.text is None and not notes:
            notes.append(no_answer)
        return "; ".join(notes) or None
