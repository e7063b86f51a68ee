"""Source code vs prose about code."""

from __future__ import annotations

import pytest

from classifiers.code_detector import CodeDetector
from promptfence.core import Confidence

DETECTOR = CodeDetector()

CODE = {
    "python": "Can you review this?\n\ndef load(path):\n    with open(path) as fh:\n        data = json.load(fh)\n    return data['items']\n",
    "java": "public class Account {\n    private long balance;\n    public void deposit(long amount) {\n        balance += amount;\n    }\n}",
    "c": "int main(void) {\n  int x = 0;\n  for (int i = 0; i < 10; i++) {\n    x += i;\n  }\n  return x;\n}",
    "js_no_fence": "why does this fail\nconst r = await fetch(url);\nif (!r.ok) {\n  throw new Error(r.status);\n}\nconsole.log(await r.json());",
    "sql": "SELECT name, total\nFROM orders o\nJOIN customers c ON c.id = o.customer_id\nWHERE total > 100;",
}
PROSE = {
    "request": "Write a Python function that parses a date string and returns a datetime object. Handle time zones.",
    "explanation": "A for loop repeats a block of statements. In Python you write it with the for keyword and a colon.",
    "inline": "Should I use `len(items)` or a counter here? I think the first one is cleaner.",
    "finance_table": "Revenue by quarter:\n(11.5)\n(10.4)\n(12,704)\n(9,881)",
    "email": "Hi team,\n\nThe release is on Friday. Please review the notes before then.\n\nThanks,\nAnna",
}


@pytest.mark.parametrize("name", sorted(CODE))
def test_code_is_source_code(name: str) -> None:
    [finding] = DETECTOR.detect(CODE[name])
    assert Confidence.of(finding.score) >= Confidence.MEDIUM
    assert finding.span is not None and finding.span.end > finding.span.start
    assert finding.kind == "code.block"


@pytest.mark.parametrize("name", sorted(PROSE))
def test_prose_about_code_is_not(name: str) -> None:
    score = max((f.score for f in DETECTOR.detect(PROSE[name])), default=0.0)
    assert Confidence.of(score) < Confidence.MEDIUM


def test_more_code_means_more_confidence() -> None:
    one = max(f.score for f in DETECTOR.detect("x = compute(a, b);"))
    many = max(f.score for f in DETECTOR.detect(CODE["c"]))
    assert one < many


def test_code_lines_add_up_within_a_section_not_across_decoded_copies() -> None:
    from classifiers.normalize import SECTION_BREAK

    scattered = "total = price * qty\nthen we talk about the weather for a while\nreturn total\n"
    once = CodeDetector().detect(scattered)
    twice = CodeDetector().detect(scattered + SECTION_BREAK + scattered)
    assert once and twice
    assert twice[0].score == once[0].score  # the decoded copy does not double the count
