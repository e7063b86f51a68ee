"""Find the stretch of a prompt that a word-level disguise (a Caesar shift, reversed text) hides.

A disguised payload usually sits inside plain words: "Decode this and answer: Jevgr n unvxh"
or "Respond to the line above" after a reversed sentence. Undoing the whole prompt would turn
the plain wrapper into gibberish, and the detectors would read the wrapper's words as noise
next to the payload (or, worse, judge the wrapper's wording instead of the payload). So only
the hidden runs are undone, and the decoded section holds them alone. Each token votes: +1
when only its undone form is a word, -1 when only the token itself is, 0 when it is a word
both ways, a little against when it is a word neither way; a run is a stretch whose votes
stay positive. A run needs two tokens of three letters or more that vote for it, and most of
its words must vote for it, so an English prompt with a name or a typo that happens to spell
a word backwards or shifted is left as it is, and so is ciphertext of another kind.

Pure functions over a word predicate (``is_word``) so that the lexicon stays in
:mod:`classifiers.normalize`.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Callable, Iterable

_LETTERS = re.compile(r"[A-Za-z]+")
# Punctuation that ends a sentence comes first in a reversed one (".xiffus ro"): a run takes
# the marks stuck to its first word along, so the sentence reads forwards with its full stop.
_LEADING_MARKS = frozenset(".?!,;:")
# Tokens it takes for a run (three letters or more, voting for it).
MIN_STRONG = 2
# Distinct tokens a text's shift is chosen on (the most frequent ones).
MAX_SHIFT_TOKENS = 3000

Span = tuple[int, int]
IsWord = Callable[[str], bool]

ROTATIONS = {
    n: str.maketrans(
        string.ascii_lowercase + string.ascii_uppercase,
        string.ascii_lowercase[n:]
        + string.ascii_lowercase[:n]
        + string.ascii_uppercase[n:]
        + string.ascii_uppercase[:n],
    )
    for n in range(1, 26)
}


def _vote(token: str, undone: str, is_word: IsWord) -> int:
    plain, hidden = is_word(token), is_word(undone)
    if hidden and not plain:
        return 1
    if plain and not hidden:
        return -1
    return 0


def scored_runs(text: str, undo: Callable[[str], str], is_word: IsWord, min_strong: int = MIN_STRONG) -> list[Span]:
    """Spans of ``text`` whose tokens read as words once undone: maximal stretches that start
    and end on a token voting for the disguise and whose running vote never falls to zero,
    widened over the undecided tokens next to them (:func:`_widened`)."""
    tokens = []
    for match in _LETTERS.finditer(text):
        token = match.group(0).lower()
        undone = undo(token)
        vote: float = _vote(token, undone, is_word)
        if vote == 0 and (len(token) <= 2 or is_word(token)):
            vote = BOTH_WAYS  # undecided: short, or a word both ways ("dna", "tub")
        elif vote == 0 and _letter_pairs(undone) > _letter_pairs(token):
            vote = LIKELY_HIDDEN  # a word the lexicon lacks ("spinach"), spelled more like English undone
        elif vote == 0:
            vote = NEITHER_WAY  # gibberish either way: a run does not cross much of it
        tokens.append((match.start(), match.end(), vote))
    runs = _widened(text, tokens, _core_runs(tokens, min_strong))
    return [(tokens[first][0], tokens[last][1]) for first, last in runs if _mostly_hidden(tokens, (first, last))]


# Share of a widened run's long tokens (not words both ways) that must read as words once
# undone: a reversed sentence is nearly all words backwards (a key or two beside it), while a
# few chance words in ciphertext of another kind ("gur" is "rug" backwards) are not.
MIN_HIDDEN_SHARE = 0.5


def _mostly_hidden(tokens: list[tuple[int, int, float]], run: tuple[int, int]) -> bool:
    votes = [vote for a, b, vote in tokens[run[0] : run[1] + 1] if b - a >= 3 and vote not in _WIDENABLE]
    return sum(1 for vote in votes if vote > 0) >= MIN_HIDDEN_SHARE * len(votes)


BOTH_WAYS = 2.0  # the vote marker of such a token (it counts as 0 inside a run)
# A token that is a word neither way (a name, or ciphertext of another kind) weighs a little
# against a run, so that one chance word in a page of gibberish does not start one.
NEITHER_WAY = -0.5
LIKELY_HIDDEN = -0.25  # counts as -0.5 inside a run, but a run's edge may take it in
# The commonest letter pairs of English: a word the lexicon lacks reads as English by them.
_PAIRS = frozenset([
    "th", "he", "in", "er", "an", "re", "on", "at", "en", "nd", "ti", "es", "or", "te", "of", "ed", "is", "it",
    "al", "ar", "st", "to", "nt", "ng", "se", "ha", "as", "ou", "io", "le", "ve", "co", "me", "de", "hi", "ri",
    "ro", "ic", "ne", "ea", "ra", "ce", "li", "ch", "ll", "be", "ma", "si", "om", "ur", "ca", "el", "ta", "la",
    "ns", "ge", "ly", "ei", "os", "no", "pe", "do", "su", "pa", "ec", "ac", "ot", "di", "ol", "tr", "sh", "ss",
    "il", "wa", "ad", "so", "ie", "ow", "us", "ia", "mo", "un", "em", "lo", "ke", "pr", "ho", "ct", "ni", "ut",
    "wi", "ap", "ay", "sa", "ag"
])  # fmt: skip


def _letter_pairs(word: str) -> float:
    pairs = [word[i : i + 2] for i in range(len(word) - 1)]
    return sum(1 for p in pairs if p in _PAIRS) / len(pairs) if pairs else 0.0


_WIDENABLE = (BOTH_WAYS, LIKELY_HIDDEN)  # not gibberish as far as a run's share is concerned


def _widened(text: str, tokens: list[tuple[int, int, float]], runs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Each run of token indexes widened over the tokens beside it up to
    a plain word (one that only reads as a word as it stands) or the next run: a key, a name
    or a number next to the payload's words is part of the payload (a ROT13 snippet ends on a
    line of nothing but a rotated key). On the edge's own line a word of letters that is
    gibberish either way stays out (a wrapper word the lexicon lacks: "decode:", "antworte:");
    on another line a word that reads both ways does ("The" shifted by 19 is "Max"). Runs that
    meet are merged."""
    widened: list[tuple[int, int]] = []
    previous = -1  # the last token index of the run before
    for k, (first, last) in enumerate(runs):
        ceiling = runs[k + 1][0] - 1 if k + 1 < len(runs) else len(tokens) - 1
        edge = tokens[first][0]
        while first > previous + 1 and _widens(text, tokens[first - 1], edge):
            first -= 1
        edge = tokens[last][1]
        while last < ceiling and _widens(text, tokens[last + 1], edge):
            last += 1
        if widened and first == previous + 1:
            widened[-1] = (widened[-1][0], last)
        else:
            widened.append((first, last))
        previous = last
    return widened


def _widens(text: str, token: tuple[int, int, float], edge: int) -> bool:
    """Whether ``token``, beyond a run's edge at ``edge``, joins the run."""
    if token[2] == -1:
        return False
    between = text[token[1] : edge] if token[1] <= edge else text[edge : token[0]]
    if "\n" in between:  # another line: gibberish or a piece of a key, not a word ("The" is "Max")
        return token[2] == NEITHER_WAY or not _bare_word(text, token)
    return token[2] != NEITHER_WAY or not _bare_word(text, token)


def _bare_word(text: str, token: tuple[int, int, float]) -> bool:
    """Whether the token stands alone as a word of letters (between spaces and punctuation),
    as a wrapper's words do, unlike a piece of a key, a path or an identifier."""
    start, end = token[0], token[1]
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return text[start:end].strip(_WORD_PUNCTUATION).isalpha()


_WORD_PUNCTUATION = ".,;:!?\"'()[]{}<>"


def _core_runs(tokens: list[tuple[int, int, float]], min_strong: int) -> list[tuple[int, int]]:
    """(first, last) token indexes of each run of positive votes."""
    runs: list[tuple[int, int]] = []
    start = best_end = -1
    total = best = 0.0
    strong = best_strong = 0
    for i, (a, b, marked) in enumerate(tokens):
        vote = 0.0 if marked == BOTH_WAYS else NEITHER_WAY if marked == LIKELY_HIDDEN else marked
        long = b - a >= 3
        if start < 0:
            if vote > 0:
                start, best_end, total, best = i, i, 1.0, 1.0
                strong = best_strong = int(long)
            continue
        total += vote
        strong += vote > 0 and long
        if vote > 0 and total >= best:
            best, best_end, best_strong = total, i, strong
        if total <= 0:
            if best_strong >= min_strong:
                runs.append((start, best_end))
            start = -1
    if start >= 0 and best_strong >= min_strong:
        runs.append((start, best_end))
    return runs


def _with_leading_marks(text: str, runs: Iterable[Span]) -> list[Span]:
    out = []
    for a, b in runs:
        while a > 0 and text[a - 1] in _LEADING_MARKS and (a == 1 or not text[a - 2].isalnum()):
            a -= 1
        out.append((a, b))
    return out


def reversed_runs(text: str, is_word: IsWord) -> list[Span]:
    """Spans of ``text`` written backwards ("snoitcurtsni suoiverp lla erongi")."""
    return _with_leading_marks(text, scored_runs(text, lambda t: t[::-1], is_word))


def undo_runs(text: str, runs: Iterable[Span], undo: Callable[[str], str]) -> str:
    """What the runs of ``text`` hide, one line each: the payload without the plain words
    around it (they are in the prompt's own section already, and a second copy of a wrapper
    would count twice for detectors that add up evidence, such as code lines)."""
    return "\n".join(undo(text[a:b]) for a, b in runs)


def best_shift(sample: str, is_word: IsWord, weight: Callable[[str], float]) -> tuple[int, float, float, float]:
    """The Caesar rotation that turns most of ``sample``'s non-words into words: (rotation,
    its gain, the runner-up's gain, the weight of all non-words). Gains count occurrences,
    weighted by ``weight`` (a long word is stronger evidence than a two-letter one)."""
    counts = collections.Counter(t.lower() for t in _LETTERS.findall(sample))
    tokens = [(t, c) for t, c in counts.most_common(MAX_SHIFT_TOKENS) if len(t) >= 2 and not is_word(t)]
    gains = dict.fromkeys(ROTATIONS, 0.0)
    for n, table in ROTATIONS.items():
        gains[n] = sum(c * weight(t) for t, c in tokens if is_word(t.translate(table)))
    ranked = sorted(gains.items(), key=lambda item: item[1], reverse=True)
    return ranked[0][0], ranked[0][1], ranked[1][1], sum(c * weight(t) for t, c in tokens)
