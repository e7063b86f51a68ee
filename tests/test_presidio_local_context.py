"""Presidio's context step on a blank pipeline tokenizes only around matches (issue 13).

Tokenizing a whole megabyte of digits and dashes took seconds; the detector now tokenizes the
blocks a match's context needs. The findings (kinds, spans, scores, context words named in
explanations) must be those of tokenizing the whole text, as Presidio does.
"""

from __future__ import annotations

import random

import pytest

from classifiers.presidio_detector import PresidioDetector, pii_topic_score


@pytest.fixture(scope="module")
def local() -> PresidioDetector:
    return PresidioDetector()


@pytest.fixture(scope="module")
def full() -> PresidioDetector:
    return PresidioDetector(local_context=False)


def _filler(rnd: random.Random, words: int) -> str:
    vocab = ["the", "report", "and", "of", "quarterly", "numbers", "it", "was", "a", "team", "call", "to", "-", ","]
    return " ".join(rnd.choice(vocab) for _ in range(words))


def _cases() -> list[str]:
    rnd = random.Random(7)
    cases = [
        "My SSN is 123-45-6789 and my email is jane.doe@gmail.com",
        "ssn:219099999, passport#912803456, acct 000123456789",
        "Call me on +1 415 555 2671.\n\nOr the desk: (415) 555-2671",
        "social security\n\n\n    number\t\t219-09-9999",
        "born 7/5/1981 dob: 1981-05-07 driver license D1234567 dmv",
        "NHS number 943 476 5919; routing 021000021 checking 000123456789",
        "i live at 42 elm street, Springfield; write to maria.lopez@gmail.com",
    ]
    # Context words far before a match, past blocks of stop words and punctuation.
    for gap in (10, 60, 200):  # up to 3 KB back (the lookup goes at least 4 KB)
        cases.append("passport " + _filler(rnd, gap) + " 912803456")
        cases.append("ssn " + " , the of and ." * gap + " 219099999")
    # Many matches with context words scattered among them, across many blocks.
    parts = []
    for i in range(400):
        parts.append(rnd.choice(["ssn", "passport", "account", "phone", "born", "", "", "the"]))
        parts.append(f"{rnd.randrange(100, 899)}-{rnd.randrange(10, 99)}-{rnd.randrange(1000, 9999)}")
        parts.append(rnd.choice(["\n", " ", "  ", "\t", " , "]))
        if i % 7 == 0:
            parts.append(_filler(rnd, rnd.randrange(1, 40)))
    cases.append(" ".join(parts))
    cases.append("".join(f"{rnd.randrange(10**8, 10**9)} " for _ in range(300)))
    return cases


@pytest.mark.parametrize("text", _cases())
def test_local_context_finds_what_whole_text_tokens_find(
    local: PresidioDetector, full: PresidioDetector, text: str
) -> None:
    assert local.detect(text) == full.detect(text)


def test_context_words_still_raise_scores(local: PresidioDetector) -> None:
    assert pii_topic_score(local.detect("the value 219099999 here")) == 0.0  # context only
    assert pii_topic_score(local.detect("my ssn is 219099999")) > 0.6


def test_worker_factory_keeps_the_setting(full: PresidioDetector) -> None:
    assert full.worker_factory()().local_context is False
