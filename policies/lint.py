"""``promptfence policy lint``: schema and semantic problems, each with file:line:column and field.

Beyond what loading refuses (schema violations, duplicate ids, redact without topics), lint
reports what loads but is almost certainly a mistake:

- a group (``groups``/``not_groups``) the directory never defines: the rule can never match
  anyone (or excludes no one);
- an app or app type the catalogue does not know;
- a rule that can never change a decision because an earlier rule matches whenever it does,
  with an action at least as restrictive ("shadowed"; precedence is most restrictive wins, so
  the earlier rule always decides);
- (warning) a redact rule on an operation whose request cannot be rewritten: there it blocks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from policies.policy import (
    ANY_DETECTOR,
    ANY_OBFUSCATION,
    ANY_TOPIC,
    Policy,
    Rule,
    check_policy_set,
    parse_policy,
    schema_errors,
)
from policies.testing import load_test_file
from promptfence.core import ACTION_RANK, Action
from promptfence.errors import ConfigError
from promptfence.yamlsource import load_yaml_file

TEST_SUFFIXES = (".test.yaml", ".test.yml")


@dataclass(frozen=True)
class Problem:
    source: str
    line: int | None
    column: int | None
    field: str | None
    message: str
    severity: str = "error"

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {self.severity}: {what}{self.message}"

    @classmethod
    def of(cls, err: ConfigError, severity: str = "error") -> Problem:
        return cls(err.source or "<policy>", err.line, err.column, err.field, err.message, severity)


@dataclass(frozen=True)
class LintContext:
    """What lint checks names against; None skips that check."""

    groups: frozenset[str] | None = None  # casefolded names the directory defines
    apps: frozenset[str] | None = None
    app_types: frozenset[str] | None = None
    # For a redact rule: the operation ids it may apply to whose request cannot be rewritten.
    unredactable: Callable[[Rule], list[str]] | None = None
    # Custom topic names the configured topic files declare (rules may select them).
    custom_topics: frozenset[str] = frozenset()


def _subset(inner: frozenset[str] | frozenset[object] | None, outer: frozenset[str] | frozenset[object] | None) -> bool:
    """Does every request passing ``inner`` pass ``outer`` (None = no restriction)?"""
    return outer is None or (inner is not None and inner <= outer)


def covers(a: Rule, b: Rule) -> bool:
    """True when rule ``a`` matches every request rule ``b`` matches (conservatively)."""
    if not (
        _subset(b.apps, a.apps)
        and _subset(b.app_types, a.app_types)
        and _subset(b.operations, a.operations)
        and _subset(b.users, a.users)
        and _subset(b.groups, a.groups)
    ):
        return False
    for exclude in ("not_users", "not_groups"):
        a_ex, b_ex = getattr(a, exclude), getattr(b, exclude)
        if a_ex is not None and (b_ex is None or not a_ex <= b_ex):
            return False
    if a.topics:
        if not b.topics:
            return False
        for topic, level in b.topics.items():
            if topic not in a.topics or a.topics[topic] > level:
                return False
    return (
        _names_cover(a.detector_errors, b.detector_errors, ANY_DETECTOR)
        and _names_cover(a.obfuscated, b.obfuscated, ANY_OBFUSCATION)
        and _names_cover(a.uncovered_topics, b.uncovered_topics, ANY_TOPIC)
    )


def _names_cover(a: frozenset[str] | None, b: frozenset[str] | None, anything: str) -> bool:
    """Whether a selector with names ``a`` (``anything``: every name) matches whenever ``b`` does."""
    if a is None:
        return True
    if b is None:
        return False
    return anything in a or (anything not in b and b <= a)


def _shadowed_by(a: Rule, b: Rule) -> bool:
    if not covers(a, b) or ACTION_RANK[a.action] < ACTION_RANK[b.action]:
        return False
    # A redact rule still contributes its spans when a warned request is sent again.
    return not (b.action is Action.REDACT and a.action is Action.WARN)


def _at(rule: Rule, key: str, index: int, field_suffix: str, message: str, severity: str = "error") -> Problem:
    line, column = rule.marks.get(key, (rule.line, rule.column))
    return Problem(rule.source, line, column, f"rules[{index}].{field_suffix}", message, severity)


def semantic_problems(policies: Sequence[Policy], ctx: LintContext) -> list[Problem]:
    problems: list[Problem] = []
    earlier: list[Rule] = []
    for policy in policies:
        for index, rule in enumerate(policy.rules):
            if ctx.groups is not None:
                for key in ("groups", "not_groups"):
                    names: frozenset[str] | None = getattr(rule, key)
                    unknown = sorted(g for g in names or () if g not in ctx.groups)
                    if unknown:
                        problems.append(
                            _at(
                                rule,
                                f"match.{key}",
                                index,
                                f"match.{key}",
                                f"group {', '.join(unknown)} is never defined in the directory",
                            )
                        )
            if ctx.apps is not None:
                unknown = sorted(a for a in rule.apps or () if a not in ctx.apps)
                if unknown:
                    problems.append(
                        _at(
                            rule,
                            "match.apps",
                            index,
                            "match.apps",
                            f"unknown app {', '.join(unknown)} (known: {', '.join(sorted(ctx.apps))})",
                        )
                    )
            if ctx.app_types is not None:
                unknown = sorted(a for a in rule.app_types or () if a not in ctx.app_types)
                if unknown:
                    problems.append(
                        _at(
                            rule,
                            "match.app_types",
                            index,
                            "match.app_types",
                            f"unknown app type {', '.join(unknown)} (known: {', '.join(sorted(ctx.app_types))})",
                        )
                    )
            for other in earlier:
                if _shadowed_by(other, rule):
                    problems.append(
                        _at(
                            rule,
                            "id",
                            index,
                            "id",
                            f"rule {rule.rule_id!r} is unreachable: it is shadowed by rule {other.rule_id!r} "
                            f"({other.where}), which matches whenever it does with an action at least as "
                            f"restrictive ({other.action.value})",
                        )
                    )
                    break
            if rule.action is Action.REDACT and ctx.unredactable is not None:
                ops = ctx.unredactable(rule)
                if ops:
                    problems.append(
                        _at(
                            rule,
                            "action",
                            index,
                            "action",
                            f"these requests cannot be rewritten, so the rule blocks them: {', '.join(ops)}",
                            "warning",
                        )
                    )
            earlier.append(rule)
    return problems


def lint_files(paths: Sequence[Path], ctx: LintContext) -> list[Problem]:
    """Every problem in every file; files with schema errors are not checked further."""
    problems: list[Problem] = []
    parsed: list[Policy] = []
    for path in paths:
        if path.name.endswith(TEST_SUFFIXES):  # a policy test file: check it as one
            try:
                load_test_file(path)
            except ConfigError as exc:
                problems.append(Problem.of(exc))
            continue
        try:
            data = load_yaml_file(path)
        except ConfigError as exc:
            problems.append(Problem.of(exc))
            continue
        errors = schema_errors(data, str(path))
        if errors:
            problems.extend(Problem.of(e) for e in errors)
            continue
        try:
            parsed.append(parse_policy(data, str(path), ctx.custom_topics))
        except ConfigError as exc:
            problems.append(Problem.of(exc))
    try:
        check_policy_set(parsed)
    except ConfigError as exc:
        problems.append(Problem.of(exc))
    problems.extend(semantic_problems(parsed, ctx))
    return problems
