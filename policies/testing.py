"""Policy unit tests: YAML cases (identity + operation + topics/findings/prompt -> expected action).

A test file names the policy files it tests (relative to itself) and, optionally, the
directory that gives users their groups::

    policies: [block-pii-requests.yaml]
    directory: identity/directory.yaml
    default_group: everyone          # for users the directory does not know
    tests:
      - name: engineering may not ask ChatGPT for someone's personal data
        identity: {user: alice@example.com}          # groups from the directory
        app: chatgpt                                  # default chatgpt
        operation: SendPrompt                         # default SendPrompt
        topics: {PII_REQUEST: high}                   # low | medium | high | a score in [0, 1]
        expect: block
        rules: [block-pii-requests-outside-hr]        # optional: these rules are cited

Other inputs: ``identity: {user, groups: [...]}`` (explicit groups, no directory),
``detector_errors: [presidio]`` (those detectors failed), ``findings:`` (kind, topic, score,
span) with the ``prompt`` they point into, or ``prompt`` alone (it is inspected by the
inspector the CLI provides). ``redacted: {EMAIL_ADDRESS: 1}`` checks what a redact decision
replaces. Results never contain prompt text.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from policies.policy import PolicySet
from promptfence.core import (
    CONFIDENCE_THRESHOLDS,
    Action,
    Confidence,
    Decision,
    DetectorRun,
    DetectorStatus,
    Finding,
    Identity,
    Inspection,
    Operation,
    OperationKind,
    Span,
    Topic,
    is_custom_topic_name,
)
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

# A level named in a test stands for a score inside that level's band.
LEVEL_SCORES: Mapping[Confidence, float] = {
    Confidence.LOW: (CONFIDENCE_THRESHOLDS[Confidence.LOW] + CONFIDENCE_THRESHOLDS[Confidence.MEDIUM]) / 2,
    Confidence.MEDIUM: (CONFIDENCE_THRESHOLDS[Confidence.MEDIUM] + CONFIDENCE_THRESHOLDS[Confidence.HIGH]) / 2,
    Confidence.HIGH: 0.95,
}

_FILE_KEYS = {"policies", "directory", "default_group", "tests"}
_CASE_KEYS = {
    "name",
    "identity",
    "app",
    "app_type",
    "operation",
    "topics",
    "findings",
    "prompt",
    "detector_errors",
    "expect",
    "rules",
    "redacted",
}


@dataclass(frozen=True)
class PolicyTestCase:
    name: str
    source: str
    line: int
    column: int
    user: str
    groups: tuple[str, ...] | None  # None: from the directory
    app: str
    app_type: str | None
    kind: OperationKind
    topics: Mapping[Topic, float] | None
    findings: tuple[Finding, ...] | None
    prompt: str | None = field(repr=False)
    failed: tuple[str, ...]
    expect: Action
    rules: tuple[str, ...]
    redacted: Mapping[str, int] | None
    # Custom topics (topic files) the case declares, by name, like ``topics``.
    custom_topics: Mapping[str, float] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.source}:{self.line}:{self.column}"


@dataclass(frozen=True)
class PolicyTestFile:
    source: str
    policies: tuple[Path, ...]
    directory: Path | None
    default_group: str | None
    cases: tuple[PolicyTestCase, ...]


@dataclass(frozen=True)
class CaseResult:
    case: PolicyTestCase
    passed: bool
    decision: Decision | None
    problems: tuple[str, ...]


def _str(data: YamlMap, key: str, field_name: str, *, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise data.error(None, field_name, f"required: {key}")
        return None
    if not isinstance(value, str) or not value:
        raise data.error(key, field_name, "expected a non-empty string")
    return value


def _str_list(data: YamlMap, key: str, field_name: str) -> tuple[str, ...] | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    if isinstance(value, YamlList) and all(isinstance(v, str) and v for v in value):
        return tuple(value)
    raise data.error(key, field_name, "expected a name or a list of names")


def _score(raw: object, where: YamlMap, key: str, field_name: str) -> float:
    if isinstance(raw, (int, float)) and not isinstance(raw, bool) and 0.0 <= float(raw) <= 1.0:
        return float(raw)
    if isinstance(raw, str):
        try:
            level = Confidence.parse(raw)
        except ValueError as exc:
            raise where.error(key, field_name, str(exc)) from None
        if level is not Confidence.NONE:
            return LEVEL_SCORES[level]
    raise where.error(key, field_name, "expected low, medium, high or a score in [0, 1]")


def _topic(name: object, where: YamlMap, key: str, field_name: str) -> Topic:
    try:
        return Topic(str(name))
    except ValueError:
        choices = ", ".join(t.value for t in Topic)
        raise where.error(key, field_name, f"unknown topic (expected one of: {choices})") from None


def _findings(raw: object, case: YamlMap, base: str) -> tuple[Finding, ...]:
    if not isinstance(raw, YamlList):
        raise case.error("findings", f"{base}.findings", "expected a list of findings")
    out: list[Finding] = []
    for i, item in enumerate(raw):
        field_name = f"{base}.findings[{i}]"
        if not isinstance(item, YamlMap):
            raise raw.error(i, field_name, "expected a mapping with kind, topic, score and span")
        kind = _str(item, "kind", f"{field_name}.kind", required=True)
        topic = _topic(item.get("topic"), item, "topic", f"{field_name}.topic")
        score = _score(item.get("score", 0.95), item, "score", f"{field_name}.score")
        span_raw = item.get("span")
        span = None
        if span_raw is not None:
            if not (
                isinstance(span_raw, YamlList)
                and len(span_raw) == 2
                and all(isinstance(v, int) and not isinstance(v, bool) for v in span_raw)
            ):
                raise item.error("span", f"{field_name}.span", "expected [start, end]")
            span = Span(span_raw[0], span_raw[1])
        assert kind is not None
        out.append(Finding("policy-test", kind, topic, score, span, "declared in the test"))
    return tuple(out)


def _case(raw: object, cases: YamlList, index: int, source: str) -> PolicyTestCase:
    base = f"tests[{index}]"
    if not isinstance(raw, YamlMap):
        raise cases.error(index, base, "each test must be a mapping")
    for key in raw:
        if key not in _CASE_KEYS:
            raise raw.error(key, f"{base}.{key}", f"unknown key (expected: {', '.join(sorted(_CASE_KEYS))})")
    name = _str(raw, "name", f"{base}.name", required=True)
    ident = raw.get("identity")
    user, groups = "test-user", None
    if ident is not None:
        if not isinstance(ident, YamlMap):
            raise raw.error("identity", f"{base}.identity", "expected {user: ..., groups: [...]}")
        for key in ident:
            if key not in ("user", "groups"):
                raise ident.error(key, f"{base}.identity.{key}", "unknown key (expected: groups, user)")
        user = _str(ident, "user", f"{base}.identity.user") or user
        groups = _str_list(ident, "groups", f"{base}.identity.groups")
    kind_name = _str(raw, "operation", f"{base}.operation") or OperationKind.SEND_PROMPT.value
    try:
        kind = OperationKind(kind_name)
    except ValueError:
        kinds = ", ".join(k.value for k in OperationKind)
        raise raw.error("operation", f"{base}.operation", f"unknown operation (expected one of: {kinds})") from None
    topics: dict[Topic, float] | None = None
    custom_topics: dict[str, float] = {}
    raw_topics = raw.get("topics")
    if raw_topics is not None:
        if not isinstance(raw_topics, YamlMap):
            raise raw.error("topics", f"{base}.topics", "expected a mapping of TOPIC: level")
        topics = {
            _topic(name, raw_topics, name, f"{base}.topics.{name}"): _score(
                level, raw_topics, name, f"{base}.topics.{name}"
            )
            for name, level in raw_topics.items()
            if not is_custom_topic_name(str(name))
        }
        custom_topics = {
            str(name): _score(level, raw_topics, name, f"{base}.topics.{name}")
            for name, level in raw_topics.items()
            if is_custom_topic_name(str(name))
        }
    findings = _findings(raw["findings"], raw, base) if "findings" in raw else None
    prompt = raw.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise raw.error("prompt", f"{base}.prompt", "expected a string")
    expect_name = _str(raw, "expect", f"{base}.expect", required=True)
    try:
        expect = Action(str(expect_name).lower())
    except ValueError:
        actions = ", ".join(a.value for a in Action)
        raise raw.error("expect", f"{base}.expect", f"unknown action (expected one of: {actions})") from None
    redacted = raw.get("redacted")
    if redacted is not None and not (
        isinstance(redacted, YamlMap) and all(isinstance(v, int) and not isinstance(v, bool) for v in redacted.values())
    ):
        raise raw.error("redacted", f"{base}.redacted", "expected a mapping of LABEL: count")
    assert name is not None
    return PolicyTestCase(
        name=name,
        source=source,
        line=raw.line,
        column=raw.column,
        user=user,
        groups=groups,
        app=_str(raw, "app", f"{base}.app") or "chatgpt",
        app_type=_str(raw, "app_type", f"{base}.app_type"),
        kind=kind,
        topics=topics,
        custom_topics=custom_topics,
        findings=findings,
        prompt=prompt,
        failed=_str_list(raw, "detector_errors", f"{base}.detector_errors") or (),
        expect=expect,
        rules=_str_list(raw, "rules", f"{base}.rules") or (),
        redacted=None if redacted is None else dict(redacted),
    )


def load_test_file(path: Path) -> PolicyTestFile:
    source = str(path)
    data = load_yaml_file(path)
    if not isinstance(data, YamlMap):
        raise ConfigError("a policy test file must be a mapping with policies and tests", source=source, line=1)
    for key in data:
        if key not in _FILE_KEYS:
            raise data.error(key, key, f"unknown key (expected: {', '.join(sorted(_FILE_KEYS))})")
    base = path.parent
    policies = _str_list(data, "policies", "policies") or ()
    directory = _str(data, "directory", "directory")
    tests = data.get("tests")
    if not isinstance(tests, YamlList) or not tests:
        raise data.error("tests" if "tests" in data else None, "tests", "expected a non-empty list of tests")
    return PolicyTestFile(
        source=source,
        policies=tuple(base / p for p in policies),
        directory=None if directory is None else base / directory,
        default_group=_str(data, "default_group", "default_group"),
        cases=tuple(_case(raw, tests, i, source) for i, raw in enumerate(tests)),
    )


def case_inputs(
    case: PolicyTestCase,
    *,
    groups_of: Callable[[str], tuple[str, ...]],
    app_type_of: Callable[[str], str | None],
    inspect: Callable[[str], Inspection] | None,
) -> tuple[Operation, Inspection]:
    """The operation and inspection a case describes; raises ConfigError when it cannot be built."""
    groups = case.groups if case.groups is not None else groups_of(case.user)
    identity = Identity(user=case.user, groups=groups, source="policy-test")
    operation = Operation(
        app=case.app,
        app_type=case.app_type or app_type_of(case.app) or "genai_chat",
        operation_id=f"{case.app}.policy_test",
        kind=case.kind,
        identity=identity,
        prompt=case.prompt or "",
    )
    runs = tuple(DetectorRun(d, DetectorStatus.FAILED, 0.0, "declared in the test") for d in case.failed)
    if case.topics is not None or case.findings is not None:
        findings = case.findings or ()
        topics: dict[Topic, float] = {}
        for finding in findings:
            topics[finding.topic] = max(topics.get(finding.topic, 0.0), finding.score)
        topics.update(case.topics or {})
        return operation, Inspection(findings=findings, topics=topics, runs=runs, custom_topics=case.custom_topics)
    if case.prompt is not None:
        if inspect is None:
            raise ConfigError("this test needs an inspector (its prompt must be inspected)", source=case.where)
        inspection = inspect(case.prompt)
        return operation, Inspection(inspection.findings, inspection.topics, inspection.runs + runs)
    return operation, Inspection(findings=(), topics={}, runs=runs)


def run_case(
    case: PolicyTestCase,
    policies: PolicySet,
    *,
    groups_of: Callable[[str], tuple[str, ...]],
    app_type_of: Callable[[str], str | None] = lambda app: None,
    inspect: Callable[[str], Inspection] | None = None,
) -> CaseResult:
    selected = {name for rule in policies.rules for name in rule.custom_topics}
    unknown = sorted(set(case.custom_topics) - selected)
    if unknown:  # a misspelt built-in topic, or a custom one no loaded rule selects
        known = ", ".join([t.value for t in Topic] + sorted(selected))
        return CaseResult(case, False, None, (f"unknown topic {', '.join(unknown)} (expected one of: {known})",))
    try:
        operation, inspection = case_inputs(case, groups_of=groups_of, app_type_of=app_type_of, inspect=inspect)
    except ConfigError as exc:
        return CaseResult(case, False, None, (exc.message,))
    decision = policies.decide(operation, inspection)
    problems: list[str] = []
    if decision.action is not case.expect:
        problems.append(f"expected {case.expect.value}, got {decision.action.value}")
    missing = [r for r in case.rules if r not in decision.rule_ids]
    if missing:
        problems.append(f"expected rule(s) {', '.join(missing)} among the deciding rules")
    if case.redacted is not None and dict(case.redacted) != decision.redacted_counts():
        problems.append(f"expected redacted {dict(case.redacted)}, got {decision.redacted_counts()}")
    return CaseResult(case, not problems, decision, tuple(problems))


def run_file(
    test_file: PolicyTestFile,
    policies: PolicySet,
    *,
    groups_of: Callable[[str], tuple[str, ...]],
    app_type_of: Callable[[str], str | None] = lambda app: None,
    inspect: Callable[[str], Inspection] | None = None,
) -> list[CaseResult]:
    return [
        run_case(case, policies, groups_of=groups_of, app_type_of=app_type_of, inspect=inspect)
        for case in test_file.cases
    ]


def needs_inspector(files: Sequence[PolicyTestFile]) -> bool:
    return any(c.prompt is not None and c.topics is None and c.findings is None for f in files for c in f.cases)
