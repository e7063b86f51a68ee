"""Presidio's patterns on RE2 (classifiers/linear_patterns.py): the same matches as the original
backtracking patterns, and a bounded amount of Python work whatever the text."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
import regex
from hypothesis import given, settings
from hypothesis import strategies as st
from presidio_analyzer.predefined_recognizers import IbanRecognizer

from classifiers.linear_patterns import (
    MAX_REJECTIONS,
    LinearPattern,
    ScanCapped,
    UntranslatablePattern,
    split_edges,
    translate,
)
from classifiers.presidio_detector import BACKTRACKING_PATTERNS, PresidioDetector, build_recognizers

PRESIDIO_FLAGS = regex.DOTALL | regex.MULTILINE | regex.IGNORECASE


def _patterns() -> list[tuple[str, str, int]]:
    found = []
    for recognizer in build_recognizers():
        flags = getattr(recognizer, "global_regex_flags", None)
        flags = PRESIDIO_FLAGS if flags is None else flags
        for pattern in getattr(recognizer, "patterns", None) or ():
            found.append((pattern.name, pattern.regex, flags))
    return found


PATTERNS = _patterns()
LINEAR = [(name, LinearPattern(rx, flags), regex.compile(rx, flags)) for name, rx, flags in PATTERNS]


def _spans(matches: Any) -> list[tuple[int, int]]:
    return [m.span() for m in matches if m.span()[1] > m.span()[0]]


def _assert_same(text: str) -> None:
    for name, linear, original in LINEAR:
        assert _spans(linear.finditer(text)) == _spans(original.finditer(text)), (name, text)


def test_every_presidio_pattern_runs_on_re2() -> None:
    assert len(PATTERNS) > 30
    not_linear = [name for name, linear, _o in LINEAR if not linear.linear]
    assert not_linear == [], not_linear
    # The detector keeps only the documented exceptions on the backtracking engine.
    assert set(BACKTRACKING_PATTERNS) <= {name for name, _rx, _f in PATTERNS}
    assert all(len(reason) > 40 for reason in BACKTRACKING_PATTERNS.values())


def test_lookarounds_at_the_edges_are_translated_exactly() -> None:
    by_name = {name: linear for name, linear, _o in LINEAR}
    for name in ("IBAN Generic", "IPv6", "IPv4_mapped", "IPv4_embedded", "IPv6_unspecified"):
        assert by_name[name].bodied and not by_name[name].verified, name
    prefix, body, suffix = split_edges(r"(?<![\w:])::1(?![\w:]|\.\d)")
    assert prefix == r"(?:\A|[^\w:])"
    assert body == "::1"
    assert suffix == r"(?:[^\w:\.]|\.(?:[^\d]|\z)|\z)"
    assert split_edges(r"\bab(?!c)d") == (None, r"\bab(?!c)d", None)


EDGE_TEXTS = [
    "DE89370400440532013000 DE89370400440532013000",
    "DE89370400440532013000,FR1420041010050500013M02606",
    "xDE89370400440532013000",
    "DE89 3704 0044 0532 0130 00x",
    "fe80::1 fe80::2,::1 :: ::ffff:192.0.2.128",
    "2001:db8::ff00:42:8329.5 2001:db8::1.x a::b::c",
    "::ffff:10.0.0.1/24 1::2:3.4.5.6",
    "1 The Street, 10 A Street, 4 An Road, 12 Main Street Apt 4, 7 Elm St.",
    "1600 Pennsylvania Ave NW, Washington, DC 20500",
    "4111 1111 1111 1111 1111111111111 5500-0000-0000-0004",
    "123-45-6789\x0b987-65-4321\x1c555 12 3456",
    "SSN 078-05-1120 on 2023-01-02T10:20:30Z or 01/02/1990",
]


@pytest.mark.parametrize("text", EDGE_TEXTS)
def test_edge_cases_match_the_original(text: str) -> None:
    _assert_same(text)


_ALPHABET = "0123456789" + "0123456789" + "-- .:/@#,\n\t\x0bABCDEFZabcdefz" + "StreetAveTheAn"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from([*_ALPHABET, *EDGE_TEXTS[0].split(), "::", "St", "Street", " The "]), max_size=40))
def test_random_ascii_text_matches_the_original(pieces: list[str]) -> None:
    _assert_same("".join(pieces))


def test_non_ascii_text_uses_the_original_pattern() -> None:
    text = "café 123-45-6789 Straße fe80::1 DE89370400440532013000"
    _assert_same(text)


def test_near_misses_cost_a_bounded_number_of_checks() -> None:
    """A text of positions the RE2 form accepts and the original rejects: the scan stops after
    MAX_REJECTIONS anchored checks (noted by the detector as a cap), it does not check each."""
    by_name = {name: (linear, rx) for (name, rx, _f), (_n, linear, _o) in zip(PATTERNS, LINEAR, strict=True)}
    linear, rx = by_name["All Credit Cards (weak)"]
    assert linear.verified
    calls = 0

    class Counting:
        def __init__(self, original: Any) -> None:
            self.original = original

        def match(self, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            return self.original.match(*args, **kwargs)

    linear.original = Counting(regex.compile(rx, PRESIDIO_FLAGS))
    with pytest.raises(ScanCapped):
        list(linear.finditer("1234567890123 " * (2 * MAX_REJECTIONS)))
    assert calls == MAX_REJECTIONS + 1


def test_the_detector_notes_a_capped_scan() -> None:
    detector = PresidioDetector()
    _found, notes = detector.detect_with_notes("1234567890123 " * (2 * MAX_REJECTIONS))
    assert "findings_capped:presidio" in notes


def test_iban_recognizer_on_re2_agrees_with_presidios() -> None:
    stock = IbanRecognizer()
    ours = next(r for r in build_recognizers() if r.name == "IbanRecognizer")
    assert type(ours) is not IbanRecognizer
    for text in [*EDGE_TEXTS, "Pay to GB82 WEST 1234 5698 7654 32 today", "iban DE89370400440532013000 2 days"]:
        want = [(r.start, r.end, r.score) for r in stock.analyze(text, ["IBAN_CODE"])]
        got = [(r.start, r.end, r.score) for r in ours.analyze(text, ["IBAN_CODE"])]
        assert got == want, text
    assert any(r.score == 1.0 for r in ours.analyze("DE89370400440532013000", ["IBAN_CODE"]))


@pytest.mark.parametrize(
    "pattern",
    [r"(\d)\1", r"a$", r"a*+b", r"\d++", r"a\Z", r"(?>ab)", r"(a)?(?(1)a|b)", r"(?P<x>a)(?P=x)"],
)
def test_syntax_re2_would_change_is_refused(pattern: str) -> None:
    with pytest.raises(UntranslatablePattern):
        translate(pattern)
    assert not LinearPattern(pattern, 0).linear  # and the original runs instead


def test_translation() -> None:
    assert translate(r"a\sb") == (r"a[\t\n\x0b\f\r \x1c-\x1f]b", False)
    assert translate(r"[\s-]") == (r"[\t\n\x0b\f\r \x1c-\x1f-]", False)
    assert translate(r"\bx(?=y)z(?<!q)") == (r"\bxz", True)
    assert translate(r"[*+]+") == (r"[*+]+", False)  # quantifier characters inside a class
    for text in ("a\x0bb", "a\x1cb", "a b"):
        assert [m.span() for m in LinearPattern(r"a\sb", 0).finditer(text)] == [(0, 3)]


def test_rejections_do_not_leak_between_calls() -> None:
    linear = next(lin for name, lin, _o in LINEAR if name == "All Credit Cards (weak)")
    near_misses = "1234567890123 " * (MAX_REJECTIONS // 2)
    for _ in range(3):  # each call has its own budget
        assert list(itertools.islice(linear.finditer(near_misses + "4111 1111 1111 1111"), 5))
