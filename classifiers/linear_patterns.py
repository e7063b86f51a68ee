"""Presidio's patterns run on RE2: linear time whatever the prompt.

Presidio compiles its recognizers' patterns with the backtracking ``regex`` module. Each of them
is bounded by a timeout and runs in a killable worker, but on a megabyte of hostile text their
scanning cost most of a second per 128 KB chunk. RE2 scans in time linear in the text, and it is
what the secrets rules already use (:mod:`classifiers.secrets_detector`).

Two things stand between a Presidio pattern and RE2, and both are handled here exactly, so that
findings are those of the original pattern (``tests/test_linear_patterns.py`` checks it):

* **Unicode classes.** RE2's ``\\b``, ``\\w``, ``\\d`` and ``\\s`` are ASCII, Python's are
  Unicode. On ASCII text they agree (``\\s`` once ``\\v`` and ``\\x1c``-``\\x1f`` are added,
  which Python counts as space), so RE2 runs only on ASCII text and anything else goes to the
  original pattern (still bounded by its timeout and its worker's deadline).
* **Lookarounds**, which RE2 lacks. A negative lookbehind of one character class at the start
  (``(?<![\\w:])``) becomes a consumed prefix ``(?:\\A|[^\\w:])`` and a negative lookahead of
  classes at the end (``(?![A-Z0-9])``, ``(?![\\w:]|\\.\\d)``) a consumed suffix; the match is
  the named group between them. Under leftmost-first matching both give the original's matches
  exactly. A lookaround anywhere else is removed (which can only add matches): RE2 finds the
  leftmost position where the original *could* match and the original confirms, anchored there
  within :data:`VERIFY_WINDOW` characters; a rejected position moves the search on by one
  character, which finds exactly the matches the original's own scan would. Rejections cost
  Python time, so a call stops after :data:`MAX_REJECTIONS` of them (:class:`ScanCapped`, which
  the detector notes like a match cap).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import re2  # type: ignore[import-untyped]
import regex

log = logging.getLogger(__name__)

# The longest match a verified pattern may have (street addresses with a city are the longest
# PII patterns, ~200 characters). A match reaching the window's end is confirmed again on the
# whole text, so the window never changes a result, only what one check costs.
VERIFY_WINDOW = 1024

# Positions the original may reject in one call before the scan stops (each costs a few
# microseconds of Python: a megabyte of near-misses would take seconds).
MAX_REJECTIONS = 4096
BODY_GROUP = "pfbody"

_LOOKAROUND_OPENERS = ("(?=", "(?!", "(?<=", "(?<!")
# Python's \s on ASCII: RE2's [\t\n\f\r ] plus vertical tab and the four separators.
_ASCII_SPACE = r"\t\n\x0b\f\r \x1c-\x1f"
_FLAG_LETTERS = ((regex.IGNORECASE, "i"), (regex.MULTILINE, "m"), (regex.DOTALL, "s"))
# Python-only syntax RE2 would read differently or reject: atomic groups, conditionals, named
# back-references (possessive quantifiers, \Z and \G are caught while walking the pattern).
_UNSUPPORTED_GROUPS = ("(?>", "(?(", "(?P=")


class UntranslatablePattern(ValueError):
    """A pattern RE2 cannot run with the original's meaning; the original runs instead."""


class ScanCapped(Exception):
    """A scan stopped after :data:`MAX_REJECTIONS` rejected positions (the rest is unscanned)."""


def _group_end(pattern: str, start: int) -> int:
    """Index just past the group that opens at ``pattern[start]`` (``(``)."""
    depth, i, in_class = 0, start, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
        elif c == "[":
            in_class = True
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":  # a literal ] first in a class
                i += 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    raise UntranslatablePattern("unbalanced group")


def _quantifier_end(pattern: str, i: int) -> int:
    """Index past a quantifier at ``pattern[i]`` (none: ``i``), with its lazy marker."""
    if i < len(pattern) and pattern[i] in "*+?":
        i += 1
    elif i < len(pattern) and pattern[i] == "{":
        close = pattern.find("}", i)
        if close < 0:
            return i
        i = close + 1
    else:
        return i
    return i + 1 if pattern[i : i + 1] == "?" else i


def _class_end(pattern: str, start: int) -> int:
    """Index past the character class that opens at ``pattern[start]`` (``[``)."""
    i = start + 1
    if pattern[i : i + 1] == "^":
        i += 1
    if pattern[i : i + 1] == "]":
        i += 1
    while i < len(pattern):
        if pattern[i] == "\\":
            i += 2
            continue
        if pattern[i] == "]":
            return i + 1
        i += 1
    raise UntranslatablePattern("unclosed class")


def _items(sequence: str) -> list[str] | None:
    """``sequence`` as single-character items (a class, an escape, a literal), or None."""
    items, i = [], 0
    while i < len(sequence):
        c = sequence[i]
        if c == "[":
            end = _class_end(sequence, i)
        elif c == "\\":
            end = i + 2
        elif c in "()|*+?{}.^$":
            return None
        else:
            end = i + 1
        items.append(sequence[i:end])
        i = end
    return items


def _members(item: str) -> str:
    """What goes inside ``[...]`` to name the characters ``item`` matches (not negated)."""
    if item.startswith("[") and not item.startswith("[^"):
        return item[1:-1]
    if item.startswith("\\") or len(item) == 1:
        return item if item.startswith("\\") else re2.escape(item)
    raise UntranslatablePattern("negated class in a lookaround")


def _top_level_groups(pattern: str) -> list[tuple[int, int]]:
    """(start, end) of each group at depth 0."""
    spans, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            i += 2
        elif c == "[":
            i = _class_end(pattern, i)
        elif c == "(":
            end = _group_end(pattern, i)
            spans.append((i, end))
            i = end
        else:
            i += 1
    return spans


def split_edges(pattern: str) -> tuple[str | None, str, str | None]:
    """``(prefix, body, suffix)``: a leading one-class negative lookbehind and a trailing
    negative lookahead of classes, as RE2 alternatives that consume the character(s) they
    test (None where the pattern has no such edge), and the pattern between them."""
    prefix = suffix = None
    groups = _top_level_groups(pattern)
    if groups and groups[0][0] == 0 and pattern.startswith("(?<!"):
        end = groups[0][1]
        items = _items(pattern[4 : end - 1])
        if items is not None and len(items) == 1 and _quantifier_end(pattern, end) == end:
            prefix = f"(?:\\A|[^{_members(items[0])}])"
            pattern = pattern[end:]
            groups = _top_level_groups(pattern)
    if groups and groups[-1][1] == len(pattern) and pattern.startswith("(?!", groups[-1][0]):
        start = groups[-1][0]
        alternatives = [_items(a) for a in pattern[start + 3 : -1].split("|")]
        singles = [a[0] for a in alternatives if a is not None and len(a) == 1]
        pairs = [a for a in alternatives if a is not None and len(a) == 2]
        if all(a is not None and len(a) <= 2 for a in alternatives) and len(pairs) <= 1:
            blocked = "".join(_members(i) for i in singles)
            if pairs:
                first, second = pairs[0]
                literal = first[-1] if len(first) == 2 and first[0] == "\\" and not first[1].isalnum() else first
                if len(literal) != 1 or regex.fullmatch(f"[{blocked}]", literal):
                    raise UntranslatablePattern("lookahead pair must start with a character no single blocks")
                suffix = f"(?:[^{blocked}{_members(first)}]|{first}(?:[^{_members(second)}]|\\z)|\\z)"
            else:
                suffix = f"(?:[^{blocked}]|\\z)"
            pattern = pattern[:start]
    return prefix, pattern, suffix


def translate(pattern: str) -> tuple[str, bool]:
    """The RE2 form of ``pattern`` for ASCII text, and whether lookarounds were removed.

    Raises :class:`UntranslatablePattern` for syntax whose meaning RE2 would change.
    """
    for token in _UNSUPPORTED_GROUPS:
        if token in pattern:
            raise UntranslatablePattern(f"unsupported syntax {token!r}")
    out: list[str] = []
    removed = False
    i, in_class = 0, False
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern):
            esc = pattern[i + 1]
            if esc == "s":
                out.append(_ASCII_SPACE if in_class else f"[{_ASCII_SPACE}]")
            elif esc == "S":
                if in_class:
                    raise UntranslatablePattern("\\S inside a class")
                out.append(f"[^{_ASCII_SPACE}]")
            elif esc.isdigit() and esc != "0":
                raise UntranslatablePattern("back-reference")
            elif esc in "ZG":  # RE2 reads \Z as Python's \z; \G does not exist
                raise UntranslatablePattern(f"\\{esc}")
            else:
                out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_class:
            out.append(c)
            if c == "]":
                in_class = False
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 1
            if pattern[j : j + 1] == "^":
                j += 1
            if pattern[j : j + 1] == "]":
                j += 1
            out.append(pattern[i:j])
            i = j
            continue
        if c == "(" and pattern.startswith(_LOOKAROUND_OPENERS, i):
            i = _quantifier_end(pattern, _group_end(pattern, i))
            removed = True
            continue
        if c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            raise UntranslatablePattern("possessive quantifier")
        if c == "$":
            # Python's $ (no MULTILINE) also matches before a final newline; RE2's does not.
            raise UntranslatablePattern("$")
        out.append(c)
        i += 1
    return "".join(out), removed


def _re2_form(pattern: str) -> tuple[str, bool, bool, bool]:
    """(RE2 pattern, verified, prefixed, bodied) for ``pattern``; see the module docstring."""
    prefix, body, suffix = split_edges(pattern)
    if prefix is not None or suffix is not None:
        translated, removed = translate(body)
        if not removed:
            return f"{prefix or ''}(?P<{BODY_GROUP}>{translated}){suffix or ''}", False, prefix is not None, True
    translated, removed = translate(pattern)
    return translated, removed, False, False


@dataclass(frozen=True)
class _AsciiMatch:
    """The part of a match object Presidio's recognizers read, for a match found by RE2.

    ``bodied``: the match is the :data:`BODY_GROUP` group (group 1; the original's groups follow).
    """

    _match: Any
    string: str
    bodied: bool = False

    def span(self, group: int = 0) -> tuple[int, int]:
        start, end = self._match.span(group + 1 if self.bodied else group)
        return int(start), int(end)

    def start(self, group: int = 0) -> int:
        return self.span(group)[0]

    def end(self, group: int = 0) -> int:
        return self.span(group)[1]

    def group(self, group: int = 0) -> str | None:
        start, end = self.span(group)
        return None if start < 0 else self.string[start:end]

    def groups(self) -> tuple[str | None, ...]:
        count = self._match.re.groups - (1 if self.bodied else 0)
        return tuple(self.group(g) for g in range(1, count + 1))


class LinearPattern:
    """A Presidio pattern, compiled with ``regex`` (as Presidio would) and, where it translates,
    with RE2; ``finditer`` yields the original's matches, found in linear time on ASCII text."""

    def __init__(self, pattern: str, flags: int, *, use_re2: bool = True) -> None:
        self.pattern = pattern
        self.flags = flags
        self.original: Any = regex.compile(pattern, flags)
        self.verified = False
        self.prefixed = self.bodied = False
        self._re2: Any = None
        if not use_re2:
            return
        try:
            translated, self.verified, self.prefixed, self.bodied = _re2_form(pattern)
            inline = "".join(letter for flag, letter in _FLAG_LETTERS if flags & flag)
            options = re2.Options()
            options.max_mem = 64 << 20  # the largest Presidio pattern needs more than 8 MiB
            options.log_errors = False
            flag_prefix = f"(?{inline})" if inline else ""
            self._re2 = re2.compile((flag_prefix + translated).encode("utf-8"), options)
        except (UntranslatablePattern, re2.error, UnicodeEncodeError) as exc:
            log.debug("pattern stays on the regex module: %s", type(exc).__name__)
            self._re2 = None

    @property
    def linear(self) -> bool:
        """Whether ASCII text is scanned by RE2."""
        return self._re2 is not None

    def finditer(self, text: str, *args: Any, timeout: float | None = None, **kwargs: Any) -> Iterator[Any]:
        if self._re2 is None or args or kwargs or not text.isascii():
            yield from self.original.finditer(text, *args, timeout=timeout, **kwargs)
            return
        data = text.encode("ascii")
        if self.verified:
            yield from self._verified(text, data, timeout)
        elif self.bodied:
            yield from self._edged(text, data)
        else:
            for found in self._re2.finditer(data):
                if found.end() > found.start():
                    yield _AsciiMatch(found, text)

    def _edged(self, text: str, data: bytes) -> Iterator[Any]:
        """Matches of a pattern whose edge lookarounds consume a character: the next search
        starts one back when a prefix may need the last character of the previous match."""
        pos, size = 0, len(text)
        while pos <= size:
            found = self._re2.search(data, pos)
            if found is None:
                return
            start, end = found.span(1)
            if end <= start:
                pos = max(pos + 1, end)
                continue
            yield _AsciiMatch(found, text, bodied=True)
            pos = end - 1 if self.prefixed else end

    def _verified(self, text: str, data: bytes, timeout: float | None) -> Iterator[Any]:
        pos, size, rejected = 0, len(text), 0
        while pos <= size:
            candidate = self._re2.search(data, pos)
            if candidate is None:
                return
            start = candidate.start()
            window = min(size, start + VERIFY_WINDOW)
            match = self.original.match(text, start, window, timeout=timeout)
            if match is not None and match.end() == window < size:
                match = self.original.match(text, start, timeout=timeout)
            if match is None or match.end() == start:
                rejected += 1
                if rejected > MAX_REJECTIONS:
                    raise ScanCapped
                pos = start + 1
                continue
            yield match
            pos = match.end()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)
