"""Regex lint (CI): no literal pattern in classifiers/ or proxy/ may backtrack super-linearly.

Every call ``re.compile/search/match/fullmatch/finditer/findall/sub/subn/split`` with a literal
pattern is parsed (``re._parser``) and rejected when it has

* a nested quantifier whose inner repetition can run into what follows it inside the repeated
  body, wrapping around (``(a+)+``, ``(.*)*``, ``(a{1,3}){2,}``), or
* two unbounded repetitions that can match the same characters with nothing between them that
  the first could not also match (``\\s*\\s*``, ``.*x.*``, ``.*:\\s*$``).

Patterns compiled with RE2 (``re2.compile``, ``compile_re2``) are linear by construction and
not checked. The TOML secrets rules are compiled with RE2 (classifiers/secrets_detector.py).
"""

from __future__ import annotations

import ast
import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Python's own regex parser (untyped in typeshed as re._parser).
C: Any = importlib.import_module("re._constants")
P: Any = importlib.import_module("re._parser")

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("classifiers", "proxy")
RE_FUNCTIONS = {"compile", "search", "match", "fullmatch", "finditer", "findall", "sub", "subn", "split"}

# (file, pattern prefix) -> why it is safe. Keep this short and explained.
ALLOWED: dict[tuple[str, str], str] = {
    # Spaced-out letters ("s s n", "j_a_n_e"): the separator class shares only "_" with \w, a
    # match starts only after a non-word character, and any run of three or more word/separator
    # characters ends the match greedily, so there is no failing path to explore; 1 MB of spaced
    # letters or underscores normalises in well under a second (BENCHMARKS.md, bench hostile).
    ("classifiers/normalize.py", "(?<![\\w])(?:\\w[ .\\-_*"): "linear in practice, see above",
}

_ALPHABET = [chr(c) for c in range(256)] + ["\u00e9", "\u0416", "\u00a0", "\u2028", "\u4e00", "\u0663"]
_CATEGORIES: dict[Any, Callable[[str], bool]] = {
    C.CATEGORY_DIGIT: str.isdigit,
    C.CATEGORY_NOT_DIGIT: lambda c: not c.isdigit(),
    C.CATEGORY_SPACE: str.isspace,
    C.CATEGORY_NOT_SPACE: lambda c: not c.isspace(),
    C.CATEGORY_WORD: lambda c: c.isalnum() or c == "_",
    C.CATEGORY_NOT_WORD: lambda c: not (c.isalnum() or c == "_"),
}


def _anything(_char: str) -> bool:
    return True


def _in_set(items: list[tuple[Any, Any]]) -> frozenset[str]:
    chars: set[str] = set()
    negate = False
    for op, arg in items:
        if op is C.NEGATE:
            negate = True
        elif op is C.LITERAL:
            chars.add(chr(arg))
        elif op is C.RANGE:
            lo, hi = arg
            chars.update(c for c in _ALPHABET if lo <= ord(c) <= hi)
        elif op is C.CATEGORY:
            member: Callable[[str], bool] = _CATEGORIES.get(arg, _anything)
            chars.update(c for c in _ALPHABET if member(c))
    return frozenset(_ALPHABET) - chars if negate else frozenset(chars)


def charset(items: Any) -> frozenset[str]:
    """Every character some match of ``items`` can consume."""
    out: set[str] = set()
    for op, arg in items:
        if op is C.LITERAL:
            out.add(chr(arg))
        elif op is C.NOT_LITERAL:
            out.update(c for c in _ALPHABET if c != chr(arg))
        elif op is C.ANY:
            out.update(c for c in _ALPHABET if c != "\n")
        elif op is C.IN:
            out |= _in_set(arg)
        elif op is C.SUBPATTERN:
            out |= charset(arg[-1])
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            out |= charset(arg[2])
        elif op is C.BRANCH:
            for branch in arg[1]:
                out |= charset(branch)
        elif op is C.ATOMIC_GROUP:
            out |= charset(arg)
    return frozenset(out)


def _is_repeat(item: tuple[Any, Any]) -> bool:
    return item[0] in (C.MAX_REPEAT, C.MIN_REPEAT)


def _unbounded(item: tuple[Any, Any]) -> bool:
    return _is_repeat(item) and item[1][1] is C.MAXREPEAT


def _variable(item: tuple[Any, Any]) -> bool:
    if _is_repeat(item):
        lo, hi, _body = item[1]
        return bool(lo != hi)
    return False


def _sequences(items: Any) -> Iterator[list[tuple[Any, Any]]]:
    """Every sequence in the tree (the pattern, each group body, each branch, each repeat body)."""
    seq = list(items)
    yield seq
    for op, arg in seq:
        if op is C.SUBPATTERN:
            yield from _sequences(arg[-1])
        elif op in (C.MAX_REPEAT, C.MIN_REPEAT, C.POSSESSIVE_REPEAT):
            yield from _sequences(arg[2])
        elif op is C.BRANCH:
            for branch in arg[1]:
                yield from _sequences(branch)
        elif op in (C.ASSERT, C.ASSERT_NOT):
            yield from _sequences(arg[1])


def _flatten(seq: list[tuple[Any, Any]]) -> list[tuple[Any, Any]]:
    """Unwrap plain groups so their items sit in the enclosing sequence."""
    out: list[tuple[Any, Any]] = []
    for item in seq:
        if item[0] is C.SUBPATTERN and len(list(item[1][-1])) > 0:
            out.extend(_flatten(list(item[1][-1])))
        else:
            out.append(item)
    return out


def problems(pattern: str) -> list[str]:
    found: list[str] = []
    tree = P.parse(pattern)
    for seq in _sequences(tree):
        flat = _flatten(seq)
        # Nested quantifiers: a repeated body with a variable inner repetition that can run
        # into the next item of the body (cyclically: the body repeats).
        for op, arg in flat:
            if op not in (C.MAX_REPEAT, C.MIN_REPEAT) or arg[1] in (0, 1):
                continue
            body = _flatten(list(arg[2]))
            for i, inner in enumerate(body):
                if not _variable(inner):
                    continue
                follower = body[(i + 1) % len(body)]
                if charset([inner]) & charset([follower]):
                    found.append("nested quantifier whose repetition overlaps what follows it")
        # Adjacent unbounded repetitions over shared characters (.*x.*, \s*\s*).
        for i, first in enumerate(flat):
            if not _unbounded(first):
                continue
            own = charset([first])
            for later in flat[i + 1 :]:
                if _unbounded(later) and own & charset([later]):
                    found.append("two unbounded repetitions can split the same characters")
                    break
                if later[0] in (C.AT, C.ASSERT, C.ASSERT_NOT):
                    continue
                if _is_repeat(later) and later[1][0] == 0:
                    continue  # optional: the two repetitions can still meet across it
                if not charset([later]) <= own:
                    break
    return found


def _literal(node: ast.expr) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        left, right = _literal(node.left), _literal(node.right)
        return None if left is None or right is None else left + right
    return None


def literal_patterns() -> Iterator[tuple[str, int, str]]:
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args):
                    continue
                owner = node.func.value
                if not (isinstance(owner, ast.Name) and owner.id == "re" and node.func.attr in RE_FUNCTIONS):
                    continue  # re2.compile / compile_re2 and anything else: not Python's re
                pattern = _literal(node.args[0])
                if pattern is not None:
                    yield str(path.relative_to(ROOT)), node.lineno, pattern


def test_the_lint_catches_the_classic_shapes() -> None:
    for bad in (r"(a+)+", r"(.*)*", r"\s*\s*", r".*x.*", r"(?:a{1,3}){2,}b", r"^\s*(?:for .* in .*:)", r"\)\s*\{?\s*$"):
        assert problems(bad), bad
    for good in (
        r"\w+",
        r"(?:\w[ .]{1,3}){2,}\w",
        r"[A-Za-z0-9+/]{16,}={0,2}",
        r"\w\([^()]*\)",
        r"^\s*(?:def |class )",
    ):
        assert not problems(good), good


def test_the_lint_finds_the_patterns() -> None:
    found = list(literal_patterns())
    assert any(path.endswith("code_detector.py") for path, _line, _p in found)


@pytest.mark.parametrize(("path", "line", "pattern"), list(literal_patterns()), ids=lambda v: str(v)[:40])
def test_no_literal_pattern_can_backtrack(path: str, line: int, pattern: str) -> None:
    if any(path == f and pattern.startswith(prefix) for f, prefix in ALLOWED):
        return
    try:
        issues = problems(pattern)
    except re.error:
        pytest.skip("not a Python re pattern")
    assert not issues, f"{path}:{line}: {issues[0]}"
