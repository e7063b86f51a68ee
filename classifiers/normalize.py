"""Undo the usual obfuscations before any detector looks at a prompt.

People who want past a guardrail write ``s.s.n``, hide zero-width characters inside words,
swap Latin letters for Cyrillic look-alikes, use fullwidth forms, or paste base64 / ROT13.
Detectors should not each learn these tricks, so the engine hands them one *analysis text*:

    <the prompt, NFKC-folded, zero-width stripped, look-alikes folded>
    <one extra section per decoded or de-spaced variant that differs from the above>

``offsets[i]`` maps character ``i`` of the first section back to the original prompt, so spans
in that section point at the user's own characters; spans in the extra sections have no
position in the original and are reported without a span.
"""

from __future__ import annotations

import base64
import binascii
import codecs
import re
import unicodedata
import urllib.parse
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

# Invisible characters used to split words: zero-width space/joiners, word joiner, BOM,
# soft hyphen, Mongolian vowel separator, invisible operators, and the tag block.
_INVISIBLE = {0x00AD, 0x180E, 0x200B, 0x200C, 0x200D, 0x2060, 0x2061, 0x2062, 0x2063, 0x2064, 0xFEFF}
_TAGS = range(0xE0000, 0xE0080)

# Look-alikes that NFKC keeps apart from Latin (Cyrillic, Greek, a few IPA letters).
_CONFUSABLES = str.maketrans(
    {
        "а": "a", "в": "b", "е": "e", "к": "k", "м": "m", "н": "h", "о": "o", "р": "p", "с": "c",
        "т": "t", "у": "y", "х": "x", "ѕ": "s", "і": "i", "ј": "j", "ԁ": "d", "ԛ": "q", "ԝ": "w",
        "ɡ": "g", "ɑ": "a", "ı": "i", "ο": "o", "α": "a", "ν": "v", "τ": "t", "κ": "k", "ρ": "p",
        "ε": "e", "ι": "i", "υ": "u", "χ": "x",
        "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P", "С": "C",
        "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Α": "A", "Β": "B", "Ε": "E",
        "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T",
        "Υ": "Y", "Χ": "X",
    }
)  # fmt: skip

_WORD = re.compile(r"\w+")
# Runs of single characters split by one separator: "s s n", "p.a.s.s.w.o.r.d", "j-a-n-e".
_SPACED = re.compile(r"(?<![\w])(?:\w[ .\-_*·|]{1,3}){2,}\w(?![\w])")
_SEPARATOR_RUN = re.compile(r"[ .\-_*·|]+")
_ROT13_HINT = re.compile(r"\brot[\s-]?13\b|\bcaesar\b", re.IGNORECASE)
# Between the prompt and each decoded variant: detectors that judge the whole text (embeddings)
# score each section on its own.
SECTION_BREAK = "\n\n[decoded]\n"
_BASE64 = re.compile(r"(?<![A-Za-z0-9+/=_-])[A-Za-z0-9+/_-]{16,}={0,2}(?![A-Za-z0-9+/=_-])")
_HEX = re.compile(r"(?<![0-9A-Fa-f])(?:[0-9A-Fa-f]{2}){12,}(?![0-9A-Fa-f])")
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
_PERCENT_ONLY = re.compile(r"(?:%[0-9A-Fa-f]{2})+")
# Percent-escapes it takes before a text counts as URL-encoded ("%53%53%4E 219..."): a URL with
# a %20 or two is not an obfuscation worth a section.
MIN_PERCENT_ESCAPES = 4
# Code points no UTF-8 encoder accepts: lone surrogates (JSON "\ud800" decodes to one).
_SURROGATE = re.compile("[\ud800-\udfff]")
_COMMON_WORDS = frozenset(
    [
        "the",
        "be",
        "to",
        "of",
        "and",
        "a",
        "in",
        "that",
        "have",
        "i",
        "it",
        "for",
        "not",
        "on",
        "with",
        "he",
        "as",
        "you",
        "do",
        "at",
        "this",
        "but",
        "his",
        "by",
        "from",
        "they",
        "we",
        "say",
        "her",
        "she",
        "or",
        "an",
        "will",
        "my",
        "one",
        "all",
        "would",
        "there",
        "their",
        "what",
        "so",
        "up",
        "out",
        "if",
        "about",
        "who",
        "get",
        "which",
        "go",
        "me",
        "when",
        "make",
        "can",
        "like",
        "time",
        "no",
        "just",
        "him",
        "know",
        "take",
        "people",
        "into",
        "year",
        "your",
        "good",
        "some",
        "could",
        "them",
        "see",
        "other",
        "than",
        "then",
        "now",
        "look",
        "only",
        "come",
        "its",
        "over",
        "think",
        "also",
        "back",
        "after",
        "use",
        "two",
        "how",
        "our",
        "work",
        "first",
        "well",
        "way",
        "even",
        "new",
        "want",
        "because",
        "any",
        "these",
        "give",
        "day",
        "most",
        "us",
        "is",
        "are",
        "was",
        "were",
        "has",
        "had",
        "my",
        "ssn",
        "password",
        "key",
        "email",
        "address",
        "secret",
        "token",
        "please",
        "tell",
        "ignore",
        "previous",
        "instructions",
    ]
)
MAX_DECODED_SECTIONS = 8
# Layers of encoding undone (base64 inside base64 inside base64 is three).
MAX_DECODE_DEPTH = 4
DECODE_DEPTH_EXCEEDED = "decode_depth_exceeded"
DECODE_SECTIONS_EXCEEDED = "decode_sections_exceeded"


def replace_invalid_unicode(text: str) -> tuple[str, bool]:
    """``text`` with every code point that is not valid Unicode text (lone surrogates) replaced
    by U+FFFD, and whether any was. Length and offsets are unchanged."""
    if text.isascii():
        return text, False
    fixed, count = _SURROGATE.subn("\ufffd", text)
    return fixed, count > 0


@dataclass(frozen=True)
class Analysis:
    """The text detectors see, and how its first section maps back to the prompt."""

    text: str
    offsets: Sequence[int]  # a range (identity) or an array of ints: cheap to send between processes
    primary_length: int
    transforms: tuple[str, ...] = field(default=())

    def original_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The prompt span behind ``text[start:end]``, or None if it lies in a decoded section."""
        if end > self.primary_length or start >= end:
            return None
        return self.offsets[start], self.offsets[end - 1] + 1


def _fold_char(ch: str) -> str:
    code = ord(ch)
    if code in _INVISIBLE or code in _TAGS:
        return ""
    if 0xD800 <= code <= 0xDFFF:  # a lone surrogate: detectors that encode to UTF-8 would raise
        return "\ufffd"
    if unicodedata.category(ch) == "Cf" and ch not in "\u200e\u200f":
        return ""
    return unicodedata.normalize("NFKC", ch)


def _mostly_latin(text: str) -> bool:
    text = _statistics_sample(text)
    latin = sum(1 for c in text if "a" <= c.lower() <= "z")
    letters = sum(1 for c in text if c.isalpha())
    return letters == 0 or latin / letters >= 0.6


def _fold_confusables(text: str) -> str:
    """Fold look-alikes inside words that are really Latin words in disguise.

    A word is folded when it mixes scripts ("pаypal" with a Cyrillic а), or when the text is
    mostly Latin and every non-Latin letter of the word has a Latin twin. A genuine Cyrillic or
    Greek word ("привет") has letters without twins and is left alone: that is language.
    """
    mostly_latin = _mostly_latin(text)

    def fold(match: re.Match[str]) -> str:
        word = match.group(0)
        foreign = [c for c in word if c.isalpha() and not ("a" <= c.lower() <= "z")]
        if not foreign:
            return word
        twins = all(ord(c) in _CONFUSABLES for c in foreign)
        has_latin = len(foreign) < sum(1 for c in word if c.isalpha())
        if (has_latin and twins) or (mostly_latin and twins):
            return word.translate(_CONFUSABLES)
        return word

    return _WORD.sub(fold, text)


# english_score reads at most this much of a text: evenly spaced slices of a long one (a share
# of common words is a statistic; counting every word of a megabyte took 0.3 s a call).
_SCORE_SAMPLE_CHARS = 64 * 1024
_SCORE_SLICES = 32


def _statistics_sample(text: str) -> str:
    """``text``, or evenly spaced slices of it (start and end included) when it is long."""
    if len(text) <= _SCORE_SAMPLE_CHARS:
        return text
    width = _SCORE_SAMPLE_CHARS // _SCORE_SLICES
    step = (len(text) - width) / (_SCORE_SLICES - 1)
    return " ".join(text[round(i * step) : round(i * step) + width] for i in range(_SCORE_SLICES))


def english_score(text: str) -> float:
    """Share of words that are common English words: high for prose, near 0 for ciphertext."""
    words = _WORD.findall(_statistics_sample(text).lower())
    if not words:
        return 0.0
    return sum(1 for w in words if w in _COMMON_WORDS) / len(words)


def _printable(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not text:
        return None
    good = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    return text if good / len(text) >= 0.95 and any(c.isalpha() for c in text) else None


def _decode_base64(token: str) -> str | None:
    raw = token.rstrip("=")
    if len(raw) % 4 == 1:
        return None
    padded = raw + "=" * (-len(raw) % 4)
    altchars = b"-_" if ("-" in raw or "_" in raw) else None
    try:
        data = base64.b64decode(padded, altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _printable(data)


def _despace_run(match: re.Match[str]) -> str:
    """Join letters split by the narrowest separator; wider gaps were the word breaks.

    "s s n" -> "ssn"; "W r i t e  a  h a i k u" -> "Write a haiku".
    """
    run = match.group(0)
    widths = set(map(len, _SEPARATOR_RUN.findall(run)))
    narrow = min(widths)
    if len(widths) == 1:  # one width: no word breaks, one C-level pass
        return _SEPARATOR_RUN.sub("", run)
    return _SEPARATOR_RUN.sub(lambda g: "" if len(g.group(0)) == narrow else " ", run)


def _decoded_sections(text: str) -> Iterator[tuple[str, str]]:
    """Each decoding of ``text`` (kind, decoded text), lazily: the caller stops when it is full."""
    for match in _BASE64.finditer(text):
        token = match.group(0)
        if token.isalpha() and (token.islower() or token.isupper()):
            continue  # a long plain word, not an encoding
        decoded = _decode_base64(token)
        if decoded and len(decoded) >= 6:
            yield "base64", decoded
    for match in _HEX.finditer(text):
        decoded = _printable(bytes.fromhex(match.group(0)))
        if decoded:
            yield "hex", decoded
    if "%" in text and len(_PERCENT.findall(text)) >= MIN_PERCENT_ESCAPES:
        try:
            unquoted = urllib.parse.unquote(text, errors="strict")
        except UnicodeDecodeError:  # escapes that are not UTF-8: not URL-encoded text
            unquoted = text
        if unquoted != text:
            yield "url", unquoted
    rot = codecs.decode(text, "rot13")
    plain, rotated = english_score(text), english_score(rot)
    if _ROT13_HINT.search(text) or (rotated >= 0.2 and rotated > 1.5 * plain + 0.05):
        yield "rot13", rot
    despaced = _SPACED.sub(_despace_run, text)
    if despaced != text:
        yield "despaced", despaced


def _is_bare_encoding(text: str) -> bool:
    """Whether ``text`` is nothing but one encoded token (an intermediate layer)."""
    bare = text.strip()
    return bool(_BASE64.fullmatch(bare) or _HEX.fullmatch(bare) or _PERCENT_ONLY.fullmatch(bare))


def _nested_sections(primary: str) -> tuple[list[tuple[str, str]], list[str]]:
    """Decoded sections of ``primary``, breadth first, each decoded again up to the bounds.

    A decoding already seen (the prompt itself, ROT13 of ROT13, a token found twice) is skipped,
    so a layer that only undoes another costs no section. A layer that is nothing but one
    encoded token and was decoded further is left out of the result: its decoding carries all of
    it, and a stack of bare blobs would read as code or secrets to the detectors. Returns the
    sections and the bound transforms (``decode_depth_exceeded``, ``decode_sections_exceeded``).
    """
    seen = {primary}
    decoded_all: list[tuple[str, str]] = []
    consumed: set[int] = set()  # indexes into decoded_all of bare layers decoded further
    frontier: list[tuple[int, str, str]] = [(-1, "", primary)]
    bounds: list[str] = []
    for _depth in range(MAX_DECODE_DEPTH):
        deeper: list[tuple[int, str, str]] = []
        for parent, kind, source in frontier:
            for layer, decoded in _decoded_sections(source):
                if decoded in seen:
                    continue
                if len(decoded_all) >= MAX_DECODED_SECTIONS:
                    bounds = [DECODE_SECTIONS_EXCEEDED]
                    break
                seen.add(decoded)
                if parent >= 0 and _is_bare_encoding(source):
                    consumed.add(parent)
                name = f"{kind}+{layer}" if kind else layer
                deeper.append((len(decoded_all), name, decoded))
                decoded_all.append((name, decoded))
            if bounds:
                break
        frontier = deeper
        if bounds or not frontier:
            break
    else:
        # The innermost layer reached: is there still something to decode under it?
        if any(decoded not in seen for _i, _kind, source in frontier for _layer, decoded in _decoded_sections(source)):
            bounds = [DECODE_DEPTH_EXCEEDED]
    return [section for i, section in enumerate(decoded_all) if i not in consumed], bounds


def embedding_view(section: str) -> str:
    """What an embedding model should read of a section: encoded blobs removed (their decoded
    text is a section of its own) and spaced-out letters joined. Random base64 or "s s n"
    letters are noise to a sentence model and push it off its training distribution."""
    without_blobs = _HEX.sub(" ", _BASE64.sub(" ", section))
    return _SPACED.sub(_despace_run, without_blobs)


# Runs of characters that need no folding: ASCII carries no invisible, look-alike or
# compatibility characters, so only the code points between these runs go through _fold_char.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _fold(prompt: str) -> tuple[str, Sequence[int]]:
    """The folded prompt and, per folded character, its index in ``prompt`` (linear time).

    An ASCII prompt folds to itself (offsets are the identity, a ``range``); otherwise ASCII
    stretches are copied whole and only the other code points are folded one by one.
    """
    if prompt.isascii():
        return prompt, range(len(prompt))
    out: list[str] = []
    offsets = array("q")
    position = 0
    for match in _NON_ASCII.finditer(prompt):
        index = match.start()
        if index > position:
            out.append(prompt[position:index])
            offsets.extend(range(position, index))
        folded = _fold_char(match.group(0))
        out.append(folded)
        offsets.extend([index] * len(folded))
        position = index + 1
    if position < len(prompt):
        out.append(prompt[position:])
        offsets.extend(range(position, len(prompt)))
    return "".join(out), offsets


def analyse(prompt: str) -> Analysis:
    folded, offsets = _fold(prompt)
    primary = folded if folded.isascii() else _fold_confusables(folded)
    transforms: list[str] = []
    if len(primary) != len(prompt) or primary != prompt:
        transforms.append("unicode")
    sections, bounds = _nested_sections(primary)
    text = SECTION_BREAK.join([primary, *(decoded for _kind, decoded in sections)])
    transforms.extend(kind for kind, _decoded in sections)
    transforms.extend(bounds)
    return Analysis(text=text, offsets=offsets, primary_length=len(primary), transforms=tuple(transforms))
