"""A short memory of each conversation's recent text, so a secret split across prompts is found.

"First half: AKIAIOSF" in one prompt and "second half: ODNN7EXAMPLE" in the next are each
harmless to a per-prompt detector. The inspector therefore keeps, per conversation, the last few
token-like fragments and the tail of the previous prompts' normalised text, and asks the secrets
and PII detectors about the joins between them and the new prompt: fragment + fragment (a key cut
in two), and tail + head (a card number or IBAN continued in the next message). A finding counts
only when it crosses a join, so what one prompt already showed is not reported twice.

What is kept is exactly what must never be written anywhere: it lives in this process's memory
only, bounded (conversations, fragments per conversation, characters per fragment) and expiring
(``ttl_s`` after the conversation's last prompt). Keys are digests of (user, app, conversation),
so the ids themselves are not held either. A prompt that opens a conversation carries no id yet
(the app assigns it in its answer); its text waits under the user's "new conversation" slot and
moves to the first conversation id that user sends on that app within the window.
"""

from __future__ import annotations

import hashlib
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from promptfence.config import ConversationWindowConfig
from promptfence.core import Operation

# A run of characters a credential is made of. Long runs are cut: a key is rarely longer, and a
# fragment is only ever joined to one other.
_FRAGMENT = re.compile(r"[A-Za-z0-9+/=_\-]{4,}")
# Digits with the separators people type inside card numbers, IBANs and phone numbers.
_DIGIT_RUN = re.compile(r"\d[\d \-.]{2,}\d")
SEPARATOR = "\n\n"


def looks_secret_like(fragment: str) -> bool:
    """A fragment a credential could be part of: not a plain lower-case word.

    Prose words ("second", "half") are never joined, which keeps the candidates few and stops
    two ordinary words from spelling a false "secret".
    """
    if any(c.isdigit() for c in fragment) or any(c in "+/=_-" for c in fragment):
        return True
    if any(c.isupper() for c in fragment[1:]):
        return True
    return len(fragment) >= 20


def secret_fragments(text: str, limit: int, max_chars: int) -> list[str]:
    """The secret-like fragments of ``text`` in order; the first and last ``limit`` only."""
    found = [m.group()[:max_chars] for m in _FRAGMENT.finditer(text) if looks_secret_like(m.group())]
    if len(found) > 2 * limit:
        found = found[:limit] + found[-limit:]
    return found


@dataclass
class _Entry:
    fragments: list[str] = field(default_factory=list)
    tail: str = ""
    seen: float = 0.0


@dataclass(frozen=True)
class Join:
    """One candidate text and where in it the earlier text ends (a finding must cross ``cut``)."""

    text: str
    cut: int


@dataclass(frozen=True)
class Candidates:
    """Joins laid out in one text (separated by blank lines) for one detector call."""

    text: str
    joins: tuple[tuple[int, Join], ...]  # (offset in text, join)

    def crosses(self, start: int, end: int) -> bool:
        """Whether a match at [start, end) of :attr:`text` spans a join's cut."""
        for offset, join in self.joins:
            if offset <= start < offset + len(join.text):
                return start < offset + join.cut < end
        return False


def layout(joins: Sequence[Join]) -> Candidates:
    parts: list[str] = []
    placed: list[tuple[int, Join]] = []
    position = 0
    for join in dict.fromkeys(joins):
        placed.append((position, join))
        parts.append(join.text)
        position += len(join.text) + len(SEPARATOR)
    return Candidates(SEPARATOR.join(parts), tuple(placed))


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


@dataclass(frozen=True)
class ConversationRef:
    """Which window a prompt reads and extends: its conversation's, and the user's opening slot."""

    key: str
    opening_key: str

    @classmethod
    def of(cls, operation: Operation) -> ConversationRef:
        user, app = operation.identity.user, operation.app
        return cls(_digest(user, app, operation.conversation_id or ""), _digest(user, app, ""))


class ConversationWindow:
    """Per-conversation fragments and tail, in memory, bounded and expiring."""

    def __init__(
        self, settings: ConversationWindowConfig | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings or ConversationWindowConfig()
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def _live(self, key: str, now: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if now - entry.seen > self.settings.ttl_s:
            del self._entries[key]
            return None
        return entry

    def _expire(self, now: float) -> None:
        while self._entries:
            key, entry = next(iter(self._entries.items()))
            if now - entry.seen <= self.settings.ttl_s and len(self._entries) <= self.settings.max_conversations:
                break
            del self._entries[key]

    def adopt(self, key: str, new_key: str) -> None:
        """Move the user's "new conversation" text under the conversation id it turned into."""
        if key == new_key:
            return
        with self._lock:
            now = self._clock()
            if self._live(key, now) is None:
                pending = self._live(new_key, now)
                if pending is not None:
                    self._entries[key] = self._entries.pop(new_key)

    def joins(self, key: str, text: str) -> Candidates | None:
        """Candidate joins of the conversation's earlier text with ``text``; None if nothing to join."""
        with self._lock:
            entry = self._live(key, self._clock())
            if entry is None:
                return None
            fragments = list(entry.fragments)
            tail = entry.tail
        s = self.settings
        current = secret_fragments(text, s.max_fragments // 2 or 1, s.max_fragment_chars)
        joins: list[Join] = []
        recent = fragments[-s.max_fragments :]
        for head in current[: s.max_fragments]:
            for earlier in recent:
                joins.append(Join(earlier + head, len(earlier)))
            # A key cut in three: the last two earlier fragments, then the new one.
            if len(recent) >= 2:
                chain = recent[-2] + recent[-1]
                joins.append(Join(chain + head, len(chain)))
        start = text[: s.tail_chars]
        if tail and (_DIGIT_RUN.search(tail[-32:]) or _DIGIT_RUN.search(start[:32]) or current):
            joins.append(Join(f"{tail} {start}", len(tail)))
        return layout(joins) if joins else None

    def remember(self, key: str, text: str) -> None:
        s = self.settings
        fragments = secret_fragments(text, s.max_fragments, s.max_fragment_chars)
        with self._lock:
            now = self._clock()
            entry = self._live(key, now) or _Entry()
            entry.fragments = (entry.fragments + fragments)[-s.max_fragments :]
            entry.tail = text[-s.tail_chars :]
            entry.seen = now
            self._entries[key] = entry
            self._entries.move_to_end(key)
            self._expire(now)

    def forget(self) -> None:
        with self._lock:
            self._entries.clear()
