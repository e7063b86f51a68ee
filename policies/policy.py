"""Guardrail policies: YAML rules over identity, app, operation and topics -> a Decision.

Precedence is "most restrictive wins" (block > warn > redact > log > allow): rule order never
changes the outcome, so a security team can add a rule without auditing every other file.
Every policy states its ``default`` action and its ``on_error`` rule (``block`` is
fail-closed, ``allow`` is fail-open) for prompts whose inspection was incomplete.
Evaluation is a pure function of (policies, operation, inspection).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from promptfence.core import ACTION_RANK, Action, Confidence, Decision, Inspection, Operation, OperationKind, Topic
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

BUILTIN_DIR = Path(__file__).parent / "builtin"
DEFAULT_POLICY_FILE = BUILTIN_DIR / "default.yaml"

DEFAULT_BLOCK_MESSAGE = "PromptFence blocked this request under your organisation's AI usage policy."


@dataclass(frozen=True)
class Rule:
    rule_id: str
    action: Action
    message: str
    apps: frozenset[str] | None
    operations: frozenset[OperationKind] | None
    groups: frozenset[str] | None
    topics: Mapping[Topic, Confidence]

    def matches(self, operation: Operation, inspection: Inspection) -> bool:
        if self.apps is not None and operation.app not in self.apps:
            return False
        if self.operations is not None and operation.kind not in self.operations:
            return False
        if self.groups is not None and not self.groups.intersection(operation.identity.groups):
            return False
        if self.topics:
            return any(inspection.confidence(t) >= level for t, level in self.topics.items())
        return True

    def matched_topics(self, inspection: Inspection) -> list[Topic]:
        return [t for t, level in self.topics.items() if inspection.confidence(t) >= level]


@dataclass(frozen=True)
class Policy:
    name: str
    default: Action
    on_error: Action
    rules: tuple[Rule, ...]
    source: str


@dataclass(frozen=True)
class PolicySet:
    policies: tuple[Policy, ...]

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        return evaluate(self.policies, operation, inspection)


def _render(message: str, topics: Sequence[Topic]) -> str:
    names = ", ".join(t.value for t in topics) or "policy"
    return message.replace("{topics}", names)


def evaluate(policies: Sequence[Policy], operation: Operation, inspection: Inspection) -> Decision:
    """Most restrictive of: every matching rule, every policy's default, and on_error if needed."""
    candidates: list[tuple[Action, str, str, str, str]] = []  # action, rule id, policy, message, reason
    failed = inspection.failed_detectors
    for policy in policies:
        matched = False
        for rule in policy.rules:
            if rule.matches(operation, inspection):
                matched = True
                topics = rule.matched_topics(inspection)
                reason = "topics " + ",".join(t.value for t in topics) if topics else "selectors matched"
                candidates.append((rule.action, rule.rule_id, policy.name, _render(rule.message, topics), reason))
        if failed:
            reason = f"inspection incomplete ({', '.join(failed)} failed): on_error {policy.on_error.value}"
            message = "PromptFence could not inspect this request and the policy fails closed. Try again shortly."
            candidates.append((policy.on_error, f"{policy.name}:on_error", policy.name, message, reason))
        elif not matched:
            candidates.append((policy.default, f"{policy.name}:default", policy.name, DEFAULT_BLOCK_MESSAGE, "default"))
    if not candidates:
        return Decision(Action.ALLOW, (), "-", "", "no policy loaded")
    top = max(ACTION_RANK[c[0]] for c in candidates)
    winners = [c for c in candidates if ACTION_RANK[c[0]] == top]
    first = winners[0]
    return Decision(
        action=first[0],
        rule_ids=tuple(c[1] for c in winners),
        policy=first[2],
        message=first[3],
        reason="; ".join(dict.fromkeys(c[4] for c in winners)),
    )


# -- loading ---------------------------------------------------------------------------------

_RULE_KEYS = {"id", "description", "match", "action", "message"}
_MATCH_KEYS = {"apps", "operations", "groups", "topics"}
_POLICY_KEYS = {"policy", "description", "default", "on_error", "rules"}


def _action(data: YamlMap, key: str, field: str) -> Action:
    value = data.get(key)
    try:
        return Action(str(value).lower())
    except ValueError:
        choices = ", ".join(a.value for a in Action)
        raise data.error(
            key if key in data else None, field, f"unknown action {value!r} (expected one of: {choices})"
        ) from None


def _str_set(data: YamlMap, key: str, field: str) -> frozenset[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return frozenset({value})
    if isinstance(value, YamlList) and value and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise data.error(key, field, "expected a name or a non-empty list of names")


def _parse_rule(raw: object, rules: YamlList, index: int, seen: set[str]) -> Rule:
    base = f"rules[{index}]"
    if not isinstance(raw, YamlMap):
        raise rules.error(index, base, "each rule must be a mapping")
    for key in raw:
        if key not in _RULE_KEYS:
            raise raw.error(key, f"{base}.{key}", f"unknown key (expected: {', '.join(sorted(_RULE_KEYS))})")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise raw.error("id" if "id" in raw else None, f"{base}.id", "every rule needs an id")
    if rule_id in seen:
        raise raw.error("id", f"{base}.id", f"duplicate rule id {rule_id!r}")
    seen.add(rule_id)
    action = _action(raw, "action", f"{base}.action")
    message = raw.get("message", DEFAULT_BLOCK_MESSAGE)
    if not isinstance(message, str):
        raise raw.error("message", f"{base}.message", "expected a string")
    match = raw.get("match", YamlMap(raw.source, *raw.where()))
    if not isinstance(match, YamlMap):
        raise raw.error("match", f"{base}.match", "expected a mapping of selectors")
    for key in match:
        if key not in _MATCH_KEYS:
            raise match.error(
                key, f"{base}.match.{key}", f"unknown selector (expected: {', '.join(sorted(_MATCH_KEYS))})"
            )
    operations: frozenset[OperationKind] | None = None
    names = _str_set(match, "operations", f"{base}.match.operations")
    if names is not None:
        try:
            operations = frozenset(OperationKind(n) for n in names)
        except ValueError:
            kinds = ", ".join(k.value for k in OperationKind)
            raise match.error(
                "operations", f"{base}.match.operations", f"unknown operation (expected: {kinds})"
            ) from None
    topics: dict[Topic, Confidence] = {}
    raw_topics = match.get("topics")
    if raw_topics is not None:
        if not isinstance(raw_topics, YamlMap) or not raw_topics:
            raise match.error("topics", f"{base}.match.topics", "expected a mapping of TOPIC: low|medium|high")
        for name, level in raw_topics.items():
            field = f"{base}.match.topics.{name}"
            try:
                topic = Topic(name)
            except ValueError:
                choices = ", ".join(t.value for t in Topic)
                raise raw_topics.error(name, field, f"unknown topic (expected one of: {choices})") from None
            try:
                confidence = Confidence.parse(str(level))
            except ValueError as exc:
                raise raw_topics.error(name, field, str(exc)) from None
            if confidence is Confidence.NONE:
                raise raw_topics.error(name, field, "minimum confidence must be low, medium or high")
            topics[topic] = confidence
    return Rule(
        rule_id=rule_id,
        action=action,
        message=message,
        apps=_str_set(match, "apps", f"{base}.match.apps"),
        operations=operations,
        groups=_str_set(match, "groups", f"{base}.match.groups"),
        topics=topics,
    )


def parse_policy(data: object, source: str) -> Policy:
    if not isinstance(data, YamlMap):
        raise ConfigError("a policy file must be a mapping", source=source)
    for key in data:
        if key not in _POLICY_KEYS:
            raise data.error(key, key, f"unknown key (expected: {', '.join(sorted(_POLICY_KEYS))})")
    name = data.get("policy")
    if not isinstance(name, str) or not name:
        raise data.error("policy" if "policy" in data else None, "policy", "every policy needs a name")
    for required in ("default", "on_error"):
        if required not in data:
            raise data.error(None, required, f"required: state the {required} action explicitly")
    rules_raw = data.get("rules", YamlList(source, *data.where()))
    if not isinstance(rules_raw, YamlList):
        raise data.error("rules", "rules", "expected a list of rules")
    seen: set[str] = set()
    rules = tuple(_parse_rule(r, rules_raw, i, seen) for i, r in enumerate(rules_raw))
    return Policy(
        name=name,
        default=_action(data, "default", "default"),
        on_error=_action(data, "on_error", "on_error"),
        rules=rules,
        source=source,
    )


def load_policies(files: Sequence[Path]) -> PolicySet:
    paths = list(files) or [DEFAULT_POLICY_FILE]
    policies = tuple(parse_policy(load_yaml_file(p), str(p)) for p in paths)
    names = [p.name for p in policies]
    for name in set(names):
        if names.count(name) > 1:
            sources = ", ".join(p.source for p in policies if p.name == name)
            raise ConfigError(f"policy name {name!r} is used by several files: {sources}")
    return PolicySet(policies)
