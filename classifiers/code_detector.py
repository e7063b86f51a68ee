"""Source code in a prompt: real code, not prose about code.

"Write a Python function that parses a date" is a request *for* code and carries none; a pasted
function body is code even without a Markdown fence. The signal is structural: lines that end
the way code lines end, start the way code statements start, and carry code punctuation, in a
contiguous block. One code-looking line inside prose is weak evidence; a block of them is strong.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Sequence
from dataclasses import dataclass

from classifiers.normalize import SECTION_BREAK
from promptfence.core import Finding, Span, Topic

# Statement openers, anchored at the line start. Every pattern here is linear-time: no two
# adjacent repetitions can match the same characters (tests/test_regex_lint.py checks), so no
# line can make the engine backtrack. Shapes with a free-text middle ("for ... in ...:",
# "if ...:") are checked with string operations in :func:`_opens_statement` instead of ``.*``,
# which on "for " + " in" x 80k took 22 s.
_STATEMENT_START = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |#include|#define|#!|package |using |namespace |func |fn |let |const |var |"
    r"public |private |protected |static |final |async |await |return\b|if\s*\(|elif |else\b|for\s*\(|"
    r"while\s*\(|switch\s*\(|try\s*[:{]|catch\s*\(|except\b|finally\b|raise |throw |"
    r"SELECT |INSERT |UPDATE |DELETE |CREATE |ALTER |DROP |FROM \w|(?:INNER |LEFT |RIGHT )?JOIN |WHERE |GROUP BY |ORDER BY |VALUES\s*\(|@\w+|<\?php|<script|</?\w[^>]*>|\$\w+\s*=|echo |"
    r"print\(|console\.|System\.|std::|self\.|this\.|[\w.\[\]\"']+\s*(?:=|\+=|-=|\*=|/=|:=|<-)\s*\S)"
)
# What a code line ends with (on the stripped line): ; { } ) ] , : => */
_LINE_ENDINGS = (";", "{", "}", ")", "]", ",", ":", "=>", "*/")
_COMMENT = re.compile(r"^\s*(?://|#(?!\s*[A-Z][a-z]+ [a-z])|/\*|\*|--\s|<!--)")
_CALL = re.compile(r"\w\([^()]*\)")
_OPERATORS = re.compile(r"==|!=|<=|>=|&&|\|\||->|::|\+\+|\w\.\w+\(|\[\w*\]|\w_\w")
_PROSE_END = re.compile(r"[a-z][.!?]\s*$")
_BRACKETS_ONLY = re.compile(r"^[\[\](){};,]+$")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z_0-9]")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SYMBOLS = "{}[]();=<>_.:\"'/\\*&|$#@"


@dataclass(frozen=True)
class CodeBlock:
    start: int
    end: int
    code_lines: int


def _opens_statement(line: str) -> bool:
    """Whether a line starts like a code statement (linear in the line's length)."""
    if _STATEMENT_START.search(line):
        return True
    body = line.lstrip()
    if not body.startswith(("if ", "for ", "while ", "case ", "with ")):
        return False
    keyword, _, rest = body.partition(" ")
    if keyword == "if":  # "if .*:" at the line's end
        return body.rstrip().endswith(":")
    if keyword in ("while", "case"):  # "while .*:", "case .*:"
        return ":" in rest
    if keyword == "for":  # "for .* in .*:"
        inside = rest.find(" in ")
        return inside >= 0 and ":" in rest[inside + 4 :]
    return rest.find(" as ") >= 0  # "with .* as "


def line_score(line: str) -> float:
    """How much a single line looks like code (0 prose .. 1 code)."""
    stripped = line.strip()
    if not stripped:
        return 0.0
    if _BRACKETS_ONLY.match(stripped):
        return 0.6  # "});", "}" and friends close code blocks
    if not _IDENTIFIER.search(stripped):
        return 0.0  # numbers and punctuation alone: a table of figures, not code
    score = 0.0
    if _opens_statement(line):
        score += 0.5
    if stripped.endswith(_LINE_ENDINGS):
        score += 0.3
    if _COMMENT.search(line) and len(stripped) > 2:
        score += 0.3
    if _CALL.search(stripped):
        score += 0.2
    if _OPERATORS.search(stripped):
        score += 0.2
    if line.startswith(("    ", "\t")) and score > 0:
        score += 0.1
    symbols = sum(stripped.count(c) for c in _SYMBOLS)
    score += min(0.3, symbols / max(len(stripped), 1))
    words = stripped.split()
    if _PROSE_END.search(stripped) and len(words) >= 6 and symbols / max(len(stripped), 1) < 0.04:
        score -= 0.6
    if len(words) >= 12 and symbols / max(len(stripped), 1) < 0.03:
        score -= 0.4
    return max(0.0, min(1.0, score))


def code_blocks(text: str, threshold: float = 0.5) -> list[CodeBlock]:
    """Maximal runs of code-like lines (blank lines and fences do not break a run)."""
    blocks: list[CodeBlock] = []
    offset = 0
    run_start: int | None = None
    run_end = 0
    run_lines = 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if not stripped or _FENCE.match(line):
            offset += len(line)
            continue
        if line_score(line) >= threshold:
            if run_start is None:
                run_start = offset
                run_lines = 0
            run_lines += 1
            run_end = offset + len(line.rstrip("\r\n"))
        elif run_start is not None:
            blocks.append(CodeBlock(run_start, run_end, run_lines))
            run_start = None
        offset += len(line)
    if run_start is not None:
        blocks.append(CodeBlock(run_start, run_end, run_lines))
    return blocks


def block_score(lines: int) -> float:
    """Evidence grows with block size: 1 line is weak, 3 medium, 6+ high."""
    table = {0: 0.0, 1: 0.15, 2: 0.4, 3: 0.65, 4: 0.75, 5: 0.82}
    return table.get(lines, 0.9)


class CodeDetector:
    name = "code"
    version = "code-structure-1"

    def worker_factory(self) -> type[CodeDetector]:
        """A picklable way to build this detector again in a worker process."""
        return CodeDetector

    def detect(self, text: str) -> Sequence[Finding]:
        blocks = code_blocks(text)
        if not blocks:
            return []
        best = max(blocks, key=lambda b: b.code_lines)
        # Scattered code lines add up within one section of the analysis text, not across
        # them: a decoded section repeats its wrapper's lines, which would count twice.
        starts = [0]
        at = text.find(SECTION_BREAK)
        while at >= 0:
            starts.append(at + len(SECTION_BREAK))
            at = text.find(SECTION_BREAK, at + 1)
        per_section = [0] * len(starts)
        for block in blocks:
            per_section[bisect.bisect_right(starts, block.start) - 1] += block.code_lines
        total = max(per_section)
        score = max(block_score(best.code_lines), block_score(total) - 0.1)
        return [
            Finding(
                detector=self.name,
                kind="code.block",
                topic=Topic.SOURCE_CODE,
                score=score,
                span=Span(best.start, best.end),
                explanation=f"{best.code_lines} contiguous code-like lines ({total} in {len(blocks)} block(s))",
            )
        ]
