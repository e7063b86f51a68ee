"""Guardrail policies: YAML rules over identity, app, operation, topics and detector errors.

Precedence is "most restrictive wins" (block > warn > redact > log > allow): every matching
rule of every loaded policy is a candidate and rule order never changes the outcome, so a
security team can add a rule or a file without auditing every other one. Each policy states
its ``default`` (applied when none of its rules matched) and its ``on_error`` (applied when a
detector failed or timed out and no ``detector_errors`` rule of the policy covers it;
``block`` is fail-closed, ``allow`` fail-open).

Evaluation is a pure function of (policies, operation, inspection); the operation carries the
identity. :func:`explain` returns every rule considered with the result of every selector;
:func:`evaluate` is its decision. Files are checked against the shipped JSON Schema
(``policies/schema/policy.schema.json``) first, then semantically; every error names the file,
line, column and field. See docs/policies.md.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema

from promptfence.core import (
    ACTION_RANK,
    Action,
    Confidence,
    Decision,
    Inspection,
    Operation,
    OperationKind,
    Redaction,
    Topic,
    is_custom_topic_name,
)
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

PACKAGE_DIR = Path(__file__).parent
BUILTIN_DIR = PACKAGE_DIR / "builtin"
EXAMPLES_DIR = PACKAGE_DIR / "examples"
SCHEMA_FILE = PACKAGE_DIR / "schema" / "policy.schema.json"
DEFAULT_POLICY_FILE = BUILTIN_DIR / "default.yaml"
POLICY_SUFFIXES = (".yaml", ".yml")

DEFAULT_BLOCK_MESSAGE = "PromptFence blocked this request under your organisation's AI usage policy."
DEFAULT_WARN_MESSAGE = "PromptFence: this request may go against your organisation's AI usage policy ({topics})."
UNINSPECTABLE_MESSAGE = (
    "PromptFence blocked this request: it could not be inspected (too large, too deeply nested or in an "
    "encoding it cannot read). Send it as plain text, or in smaller parts."
)
ON_ERROR_MESSAGE = (
    "PromptFence could not inspect this request and the policy does not let it through unchecked. Try again shortly."
)
REDACT_IMPOSSIBLE_MESSAGE = (
    "PromptFence blocked this prompt: it contains sensitive data ({topics}) that could not be located "
    "precisely enough to redact it. Remove it and send the prompt again."
)
ANY_DETECTOR = "*"
ANY_OBFUSCATION = "*"
ANY_TOPIC = "*"

_LABEL_RE = re.compile(r"[^A-Z0-9_]+")


# -- the model -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    """One selector of one rule against one request: what ``policy explain`` prints."""

    selector: str
    ok: bool
    detail: str


@dataclass(frozen=True)
class Rule:
    rule_id: str
    action: Action
    message: str
    apps: frozenset[str] | None = None
    app_types: frozenset[str] | None = None
    operations: frozenset[OperationKind] | None = None
    users: frozenset[str] | None = None  # casefolded
    not_users: frozenset[str] | None = None
    groups: frozenset[str] | None = None  # casefolded
    not_groups: frozenset[str] | None = None
    topics: Mapping[Topic, Confidence] = field(default_factory=dict)
    # Company-defined topics (topic files) by name, selected like the built-in ones.
    custom_topics: Mapping[str, Confidence] = field(default_factory=dict)
    # warn only: the resend must give a reason on a "Justification:" line (proxy/justification.py).
    justification: bool = False
    detector_errors: frozenset[str] | None = None  # {"*"}: any detector
    obfuscated: frozenset[str] | None = None  # {"*"}: any obfuscation kind
    # Topics no detector that ran reads in one of the prompt's languages; {"*"}: any topic.
    uncovered_topics: frozenset[str] | None = None
    source: str = ""
    line: int = 0
    column: int = 0
    # (line, column) of each selector key, e.g. "match.groups", for lint messages.
    marks: Mapping[str, tuple[int, int]] = field(default_factory=dict, compare=False, repr=False)

    def check(self, operation: Operation, inspection: Inspection) -> RuleResult:
        """Every selector, evaluated (no short cut) so that an explanation shows them all."""
        checks: list[Check] = []
        ident = operation.identity
        user = ident.user.casefold()
        groups = {g.casefold() for g in ident.groups}

        def names(selector: str, allowed: frozenset[str] | None, value: str, what: str) -> None:
            if allowed is not None:
                ok = value in allowed
                rel = "in" if ok else "not in"
                checks.append(Check(selector, ok, f"{what} {value} {rel} [{', '.join(sorted(allowed))}]"))

        names("apps", self.apps, operation.app, "app")
        names("app_types", self.app_types, operation.app_type, "app type")
        if self.operations is not None:
            ok = operation.kind in self.operations
            listed = ", ".join(sorted(k.value for k in self.operations))
            checks.append(Check("operations", ok, f"{operation.kind.value} {'in' if ok else 'not in'} [{listed}]"))
        names("users", self.users, user, "user")
        if self.not_users is not None:
            ok = user not in self.not_users
            checks.append(Check("not_users", ok, f"user {user} {'not ' if ok else ''}excluded"))
        if self.groups is not None:
            common = sorted(groups & self.groups)
            have = ", ".join(sorted(groups)) or "no group"
            detail = (
                f"member of {', '.join(common)}"
                if common
                else f"groups [{have}] not in [{', '.join(sorted(self.groups))}]"
            )
            checks.append(Check("groups", bool(common), detail))
        if self.not_groups is not None:
            hit = sorted(groups & self.not_groups)
            detail = f"excluded: member of {', '.join(hit)}" if hit else "in no excluded group"
            checks.append(Check("not_groups", not hit, detail))
        matched_topics: list[Topic] = []
        matched_custom: list[str] = []
        if self.topics or self.custom_topics:
            parts = []
            for topic, level in self.topics.items():
                have_level = inspection.confidence(topic)
                if have_level >= level:
                    matched_topics.append(topic)
                parts.append(
                    f"{topic.value} {have_level.name.lower()} {'>=' if have_level >= level else '<'} {level.name.lower()}"
                )
            for name, level in self.custom_topics.items():
                have_level = inspection.custom_confidence(name)
                if have_level >= level:
                    matched_custom.append(name)
                parts.append(
                    f"{name} {have_level.name.lower()} {'>=' if have_level >= level else '<'} {level.name.lower()}"
                )
            checks.append(Check("topics", bool(matched_topics or matched_custom), "; ".join(parts)))
        covered: tuple[str, ...] = ()
        if self.detector_errors is not None:
            failed = inspection.errored_detectors
            if ANY_DETECTOR in self.detector_errors:
                covered = failed
            else:
                covered = tuple(d for d in failed if d in self.detector_errors)
            detail = (
                f"failed: {', '.join(covered)}"
                if covered
                else f"no covered detector failed ({', '.join(failed) or 'none failed'})"
            )
            checks.append(Check("detector_errors", bool(covered), detail))
        if self.obfuscated is not None:
            undone = [o.kind for o in inspection.obfuscations]
            hit = undone if ANY_OBFUSCATION in self.obfuscated else [k for k in undone if k in self.obfuscated]
            detail = (
                f"undone: {', '.join(o.label for o in inspection.obfuscations if o.kind in hit)}"
                if hit
                else f"no selected obfuscation ({', '.join(undone) or 'none undone'})"
            )
            checks.append(Check("obfuscated", bool(hit), detail))
        if self.uncovered_topics is not None:
            pairs = [
                f"{topic.value} in {language}"
                for language, topic in inspection.uncovered_languages
                if ANY_TOPIC in self.uncovered_topics or topic.value in self.uncovered_topics
            ]
            detail = f"unread: {', '.join(pairs)}" if pairs else "every selected topic read in every language"
            checks.append(Check("uncovered_topics", bool(pairs), detail))
        matched = all(c.ok for c in checks)
        return RuleResult(self, matched, tuple(checks), tuple(matched_topics), covered, tuple(matched_custom))

    def matches(self, operation: Operation, inspection: Inspection) -> bool:
        return self.check(operation, inspection).matched

    def matched_topics(self, inspection: Inspection) -> list[Topic]:
        return [t for t, level in self.topics.items() if inspection.confidence(t) >= level]

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"


@dataclass(frozen=True)
class RuleResult:
    rule: Rule
    matched: bool
    checks: tuple[Check, ...]
    topics: tuple[Topic, ...]  # topics that reached the rule's level
    covered_failures: tuple[str, ...]  # failed detectors this rule's detector_errors selector covers
    custom_topics: tuple[str, ...] = ()  # custom topics that reached the rule's level


@dataclass(frozen=True)
class Policy:
    name: str
    default: Action
    on_error: Action
    rules: tuple[Rule, ...]
    source: str
    description: str = ""
    # What happens to a request the sender made impossible to inspect (oversize, undecodable,
    # nested too deep). Never inherited from on_error: fail-open for a broken model must not
    # become fail-open for an attacker who pads a body.
    on_uninspectable: Action = Action.BLOCK


@dataclass(frozen=True)
class Candidate:
    """One action the evaluation considered: a matching rule, a default, or an on_error."""

    action: Action
    rule_id: str
    policy: str
    message: str
    reason: str
    redactions: tuple[Redaction, ...] = ()
    justification: bool = False  # a warn whose rule wants a reason on the resend


@dataclass(frozen=True)
class PolicyTrace:
    policy: Policy
    results: tuple[RuleResult, ...]
    uncovered_failures: tuple[str, ...]


@dataclass(frozen=True)
class Explanation:
    traces: tuple[PolicyTrace, ...]
    candidates: tuple[Candidate, ...]
    decision: Decision


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        return evaluate(self.policies, operation, inspection)

    def explain(self, operation: Operation, inspection: Inspection) -> Explanation:
        return explain(self.policies, operation, inspection)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return tuple(r for p in self.policies for r in p.rules)


# -- evaluation ------------------------------------------------------------------------------


def _render(message: str, topics: Sequence[Topic], custom: Sequence[str] = ()) -> str:
    names = ", ".join([*(t.value for t in topics), *custom]) or "policy"
    return message.replace("{topics}", names)


def redaction_label(kind: str) -> str:
    """``pii.EMAIL_ADDRESS`` -> ``EMAIL_ADDRESS``: the placeholder type, never the value."""
    label = _LABEL_RE.sub("_", kind.rsplit(".", 1)[-1].upper()).strip("_")
    return label or "REDACTED"


def merge_redactions(spans: Iterable[Redaction]) -> tuple[Redaction, ...]:
    """Overlapping or touching spans become one; the earliest span's label names the union."""
    merged: list[Redaction] = []
    for span in sorted(spans, key=lambda r: (r.start, -r.end, r.label)):
        if merged and span.start <= merged[-1].end:
            last = merged[-1]
            if span.end > last.end:
                merged[-1] = Redaction(last.start, span.end, last.label)
        else:
            merged.append(span)
    return tuple(merged)


def _redactions(
    topics: Sequence[Topic], operation: Operation, inspection: Inspection
) -> tuple[tuple[Redaction, ...], list[Topic]]:
    """The spans to replace for ``topics``, and the topics whose evidence has no usable location."""
    spans: list[Redaction] = []
    unlocated: list[Topic] = []
    size = len(operation.prompt)
    for topic in topics:
        evidence = [f for f in inspection.findings if f.topic is topic]
        located = [f for f in evidence if f.span is not None and 0 <= f.span.start < f.span.end <= size]
        if not evidence or len(located) != len(evidence):
            unlocated.append(topic)
            continue
        for finding in located:
            assert finding.span is not None
            spans.append(Redaction(finding.span.start, finding.span.end, redaction_label(finding.kind)))
    return merge_redactions(spans), unlocated


def _rule_candidate(result: RuleResult, policy: Policy, operation: Operation, inspection: Inspection) -> Candidate:
    rule = result.rule
    topics = list(result.topics)
    custom = list(result.custom_topics)
    named = [*(t.value for t in topics), *custom]
    reason = "topics " + ",".join(named) if named else "selectors matched"
    if result.covered_failures:
        reason += f" (detector errors: {', '.join(result.covered_failures)})"
    if rule.action is Action.REDACT:
        spans, unlocated = _redactions(topics, operation, inspection)
        if unlocated or custom:  # a custom topic is about the whole prompt: nothing to cut out
            names = ",".join([*(t.value for t in unlocated), *custom])
            return Candidate(
                Action.BLOCK,
                rule.rule_id,
                policy.name,
                _render(REDACT_IMPOSSIBLE_MESSAGE, unlocated, custom),
                f"redact impossible: {names} evidence has no location, so the rule blocks",
            )
        return Candidate(Action.REDACT, rule.rule_id, policy.name, _render(rule.message, topics), reason, spans)
    return Candidate(
        rule.action,
        rule.rule_id,
        policy.name,
        _render(rule.message, topics, custom),
        reason,
        justification=rule.justification and rule.action is Action.WARN,
    )


def explain(policies: Sequence[Policy], operation: Operation, inspection: Inspection) -> Explanation:
    """Every rule of every policy against this request, and the most restrictive candidate."""
    traces: list[PolicyTrace] = []
    candidates: list[Candidate] = []
    failed = inspection.errored_detectors
    uninspectable = inspection.uninspectable_reasons
    errors = {
        run.detector: f"{run.detector}: {run.error}" if run.error else f"{run.detector} failed ({run.status.value})"
        for run in inspection.runs
        if run.failed
    }
    for policy in policies:
        results = tuple(rule.check(operation, inspection) for rule in policy.rules)
        matched = [r for r in results if r.matched]
        candidates.extend(_rule_candidate(r, policy, operation, inspection) for r in matched)
        covered = {d for r in matched for d in r.covered_failures}
        uncovered = tuple(d for d in failed if d not in covered)
        traces.append(PolicyTrace(policy, results, uncovered))
        if uninspectable:
            candidates.append(
                Candidate(
                    policy.on_uninspectable,
                    f"{policy.name}:on_uninspectable",
                    policy.name,
                    UNINSPECTABLE_MESSAGE,
                    f"{'; '.join(uninspectable)}: on_uninspectable {policy.on_uninspectable.value}",
                )
            )
        if uncovered:
            why = "; ".join(errors.get(d) or f"{d} failed" for d in uncovered)
            reason = f"inspection incomplete ({why}): on_error {policy.on_error.value}"
            candidates.append(
                Candidate(policy.on_error, f"{policy.name}:on_error", policy.name, ON_ERROR_MESSAGE, reason)
            )
        elif not matched and not uninspectable:
            message = DEFAULT_WARN_MESSAGE if policy.default is Action.WARN else DEFAULT_BLOCK_MESSAGE
            candidates.append(
                Candidate(policy.default, f"{policy.name}:default", policy.name, _render(message, ()), "default")
            )
    return Explanation(tuple(traces), tuple(candidates), _decide(candidates))


def _decide(candidates: Sequence[Candidate]) -> Decision:
    if not candidates:
        return Decision(Action.ALLOW, (), "-", "", "no policy loaded")
    top = max(ACTION_RANK[c.action] for c in candidates)
    winners = [c for c in candidates if ACTION_RANK[c.action] == top]
    first = winners[0]
    redactions: tuple[Redaction, ...] = ()
    if first.action in (Action.REDACT, Action.WARN):
        # A warned prompt that is sent again still loses what a redact rule asked to remove.
        redactions = merge_redactions(s for c in candidates if c.action is Action.REDACT for s in c.redactions)
    return Decision(
        action=first.action,
        rule_ids=tuple(dict.fromkeys(c.rule_id for c in winners)),
        policy=first.policy,
        # Only a decision that stops or warns tells the user anything; an allowed record must not
        # carry "blocked" wording into a SIEM.
        message=first.message if first.action in (Action.BLOCK, Action.WARN) else "",
        reason="; ".join(dict.fromkeys(c.reason for c in winners)),
        redactions=redactions,
        justification_required=first.action is Action.WARN and any(c.justification for c in winners),
    )


def evaluate(policies: Sequence[Policy], operation: Operation, inspection: Inspection) -> Decision:
    """Most restrictive of: every matching rule, each policy's default, and on_error where needed."""
    return explain(policies, operation, inspection).decision


# -- schema ----------------------------------------------------------------------------------


@cache
def policy_schema() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    return data


@cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(policy_schema())


def dotted(path: Iterable[str | int]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _position(container: object, key: str | int | None) -> tuple[int, int]:
    if isinstance(container, YamlMap):
        return container.where(key if isinstance(key, str) else None)
    if isinstance(container, YamlList):
        if isinstance(key, int) and key < len(container.item_marks):
            return container.item_marks[key]
        return (container.line, container.column)
    return (1, 1)


_TYPE_NAMES = {
    "array": "a list",
    "object": "a mapping",
    "string": "a string",
    "boolean": "true or false",
    "integer": "an integer",
    "number": "a number",
}
_GENERIC = {
    "type": "wrong type",
    "minItems": "must not be empty",
    "minLength": "must not be empty",
    "minProperties": "must not be empty",
    "pattern": "has characters that are not allowed",
}


def _schema_error(err: jsonschema.ValidationError, root: YamlMap, source: str) -> ConfigError:
    path = list(err.absolute_path)
    parent: object = None
    node: object = root
    for part in path:
        parent, node = node, node[part]  # type: ignore[index]
    schema: Mapping[str, Any] = err.schema if isinstance(err.schema, Mapping) else {}
    custom = schema.get("x-message")
    if err.validator == "additionalProperties" and isinstance(node, YamlMap):
        known = sorted(schema.get("properties", {}))
        extra = next(k for k in node if k not in known)
        line, column = node.where(extra)
        if path and path[-1] == "topics":
            message = f"unknown topic (expected one of: {', '.join(t.value for t in Topic)})"
        elif path and path[-1] == "match":
            message = f"unknown selector (expected: {', '.join(known)})"
        else:
            message = f"unknown key (expected: {', '.join(known)})"
        return ConfigError(message, source=source, line=line, column=column, field=dotted([*path, extra]))
    if err.validator == "required" and isinstance(node, YamlMap):
        required: list[str] = list(schema.get("required", []))
        named = re.match(r"^'(.+)' is a required property", err.message)
        missing = named.group(1) if named else next(k for k in required if k not in node)
        line, column = node.where(None)
        if missing in ("default", "on_error"):
            message = f"required: state the {missing} action explicitly"
        elif missing == "policy":
            message = "required: every policy needs a name"
        elif missing == "id":
            message = "required: every rule needs an id"
        else:
            message = f"required key {missing!r} is missing"
        return ConfigError(message, source=source, line=line, column=column, field=dotted([*path, missing]))
    line, column = _position(parent, path[-1] if path else None)
    message = str(custom) if custom else _GENERIC.get(str(err.validator), err.message)
    if err.validator == "type" and not custom:
        wanted = err.validator_value if isinstance(err.validator_value, list) else [err.validator_value]
        message = "expected " + " or ".join(_TYPE_NAMES.get(str(w), str(w)) for w in wanted)
    if err.validator in ("enum", "const", "type", "pattern", "anyOf") and not isinstance(node, (dict, list)):
        message += f" (got {_short(node)})"
    return ConfigError(message, source=source, line=line, column=column, field=dotted(path) or None)


def schema_errors(data: object, source: str) -> list[ConfigError]:
    """Every JSON Schema violation of one parsed policy file, in file order."""
    if data is None:
        return [ConfigError("the policy file is empty", source=source, line=1, column=1, field="policy")]
    if not isinstance(data, YamlMap):
        return [
            ConfigError(
                "a policy file must be a mapping with policy, default, on_error and rules",
                source=source,
                line=1,
                column=1,
                field="policy",
            )
        ]
    errors = [_schema_error(e, data, source) for e in _validator().iter_errors(data)]
    return sorted(errors, key=lambda e: (e.line or 0, e.column or 0, e.field or ""))


# -- loading ---------------------------------------------------------------------------------


def _names(match: YamlMap, key: str, *, fold: bool = False) -> frozenset[str] | None:
    value = match.get(key)
    if value is None:
        return None
    items = [value] if isinstance(value, str) else list(value)
    return frozenset(v.casefold() if fold else v for v in items)


def _parse_topics(
    match: YamlMap, base: str, custom_topics: Collection[str]
) -> tuple[dict[Topic, Confidence], dict[str, Confidence]]:
    """Built-in topics by enum, custom ones by name; a name neither built in nor declared in a
    topic file is the same error the schema gives for a misspelt topic."""
    raw = match.get("topics") or {}
    builtin: dict[Topic, Confidence] = {}
    custom: dict[str, Confidence] = {}
    for name, level in raw.items():
        if name in Topic.__members__:
            builtin[Topic(name)] = Confidence.parse(str(level))
        elif is_custom_topic_name(name) and name in custom_topics:
            custom[name] = Confidence.parse(str(level))
        else:
            known = [t.value for t in Topic] + sorted(custom_topics)
            message = f"unknown topic (expected one of: {', '.join(known)}; custom topics come from topic files)"
            if isinstance(raw, YamlMap):
                raise raw.error(name, f"{base}.match.topics.{name}", message)
            raise match.error("topics", f"{base}.match.topics.{name}", message)
    return builtin, custom


def _parse_rule(raw: YamlMap, index: int, source: str, custom_topics: Collection[str] = ()) -> Rule:
    base = f"rules[{index}]"
    match = raw.get("match")
    if match is None:
        match = YamlMap(source, *raw.where())
    marks = {f"match.{k}": match.where(k) for k in match}
    marks.update({k: raw.where(k) for k in raw})
    operations = _names(match, "operations")
    topics, custom = _parse_topics(match, base, custom_topics)
    detector_errors: frozenset[str] | None = None
    if match.get("detector_errors") is True:
        detector_errors = frozenset({ANY_DETECTOR})
    elif "detector_errors" in match:
        detector_errors = _names(match, "detector_errors")
    obfuscated: frozenset[str] | None = None
    if match.get("obfuscated") is True:
        obfuscated = frozenset({ANY_OBFUSCATION})
    elif "obfuscated" in match:
        obfuscated = _names(match, "obfuscated", fold=True)
    uncovered_topics: frozenset[str] | None = None
    if match.get("uncovered_topics") is True:
        uncovered_topics = frozenset({ANY_TOPIC})
    elif "uncovered_topics" in match:
        uncovered_topics = _names(match, "uncovered_topics")
    action = Action(raw["action"])
    default_message = DEFAULT_WARN_MESSAGE if action is Action.WARN else DEFAULT_BLOCK_MESSAGE
    rule = Rule(
        rule_id=raw["id"],
        action=action,
        message=raw.get("message", default_message),
        apps=_names(match, "apps"),
        app_types=_names(match, "app_types"),
        operations=None if operations is None else frozenset(OperationKind(o) for o in operations),
        users=_names(match, "users", fold=True),
        not_users=_names(match, "not_users", fold=True),
        groups=_names(match, "groups", fold=True),
        not_groups=_names(match, "not_groups", fold=True),
        topics=topics,
        custom_topics=custom,
        justification=raw.get("justification") == "required",
        detector_errors=detector_errors,
        obfuscated=obfuscated,
        uncovered_topics=uncovered_topics,
        source=source,
        line=raw.line,
        column=raw.column,
        marks=marks,
    )
    if rule.justification and rule.action is not Action.WARN:
        raise raw.error(
            "justification",
            f"{base}.justification",
            "justification applies to warn rules only (a resend with a reason)",
        )
    if rule.action is Action.REDACT and not (rule.topics or rule.custom_topics):
        raise raw.error(
            "action", f"{base}.action", "redact needs a topics selector: it replaces the spans of the detected topics"
        )
    for inc, exc in (("groups", "not_groups"), ("users", "not_users")):
        both = (getattr(rule, inc) or frozenset()) & (getattr(rule, exc) or frozenset())
        if both:
            raise match.error(exc, f"{base}.match.{exc}", f"{', '.join(sorted(both))} both selected and excluded")
    return rule


def parse_policy(data: object, source: str, custom_topics: Collection[str] = ()) -> Policy:
    """Schema first (structure), then semantics; the first error in file order is raised."""
    errors = schema_errors(data, source)
    if errors:
        raise errors[0]
    assert isinstance(data, YamlMap)
    rules_raw = data.get("rules") or YamlList(source, *data.where())
    rules: list[Rule] = []
    seen: set[str] = set()
    for index, raw in enumerate(rules_raw):
        rule = _parse_rule(raw, index, source, custom_topics)
        if rule.rule_id in seen:
            raise raw.error("id", f"rules[{index}].id", f"duplicate rule id {rule.rule_id!r}")
        seen.add(rule.rule_id)
        rules.append(rule)
    return Policy(
        name=data["policy"],
        default=Action(data["default"]),
        on_error=Action(data["on_error"]),
        on_uninspectable=Action(data.get("on_uninspectable", Action.BLOCK.value)),
        rules=tuple(rules),
        source=source,
        description=str(data.get("description", "")),
    )


def load_policy_file(path: Path, custom_topics: Collection[str] = ()) -> Policy:
    return parse_policy(load_yaml_file(path), str(path), custom_topics)


def expand_policy_paths(files: Sequence[Path]) -> list[Path]:
    """Files as given; a directory stands for its ``*.yaml``/``*.yml`` files (tests excluded), sorted."""
    paths: list[Path] = []
    for entry in files or [DEFAULT_POLICY_FILE]:
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix in POLICY_SUFFIXES and not p.stem.endswith(".test"))
            paths.extend(found)
        else:
            paths.append(entry)
    return paths


def check_policy_set(policies: Sequence[Policy]) -> None:
    """Names and rule ids are unique across files: decisions cite them."""
    by_name: dict[str, Policy] = {}
    rule_owner: dict[str, Rule] = {}
    for policy in policies:
        if policy.name in by_name:
            raise ConfigError(
                f"policy name {policy.name!r} is already used by {by_name[policy.name].source}",
                source=policy.source,
                line=1,
                column=1,
                field="policy",
            )
        by_name[policy.name] = policy
        for index, rule in enumerate(policy.rules):
            other = rule_owner.get(rule.rule_id)
            if other is not None:
                line, column = rule.marks.get("id", (rule.line, rule.column))
                raise ConfigError(
                    f"duplicate rule id {rule.rule_id!r} (also at {other.where})",
                    source=rule.source,
                    line=line,
                    column=column,
                    field=f"rules[{index}].id",
                )
            rule_owner[rule.rule_id] = rule


def load_policies(files: Sequence[Path], custom_topics: Collection[str] = ()) -> PolicySet:
    """Load every file (empty: the shipped default); any error raises, naming file, line and field.
    ``custom_topics``: the names the configured topic files declare, which rules may select."""
    policies = tuple(load_policy_file(p, custom_topics) for p in expand_policy_paths(files))
    check_policy_set(policies)
    return PolicySet(policies)
