"""Policies: evaluation is pure and most-restrictive-wins; malformed files give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.lint import LintContext, lint_files
from policies.policy import (
    EXAMPLES_DIR,
    Policy,
    evaluate,
    load_policies,
    parse_policy,
    policy_schema,
    schema_errors,
)
from policies.reload import ReloadingPolicySet
from promptfence.core import (
    ACTION_RANK,
    Action,
    Confidence,
    DetectorRun,
    DetectorStatus,
    Finding,
    Identity,
    Inspection,
    Operation,
    OperationKind,
    Span,
    Topic,
)
from promptfence.errors import ConfigError
from promptfence.yamlsource import load_yaml_text


def _op(
    kind: OperationKind = OperationKind.SEND_PROMPT, app: str = "chatgpt", groups: tuple[str, ...] = ()
) -> Operation:
    return Operation(app, "genai_chat", f"{app}.x", kind, Identity("u", groups), prompt="p")


def _insp(**scores: float) -> Inspection:
    return Inspection(findings=(), topics={Topic(k): v for k, v in scores.items()}, runs=())


def _policy(text: str, name: str = "t.yaml") -> Policy:
    return parse_policy(load_yaml_text(text, name), name)


DEFAULT = load_policies([])


@pytest.mark.parametrize(
    ("scores", "kind", "action", "rule"),
    [
        ({"PII": 0.9}, OperationKind.SEND_PROMPT, Action.BLOCK, "block-pii-in-prompts"),
        ({"PII": 0.65}, OperationKind.SEND_PROMPT, Action.BLOCK, "block-pii-in-prompts"),
        ({"PII": 0.4}, OperationKind.SEND_PROMPT, Action.ALLOW, "default:default"),
        ({"CREDENTIALS": 0.95}, OperationKind.SEND_PROMPT, Action.BLOCK, "block-credentials-in-prompts"),
        ({"PII": 0.9}, OperationKind.SHARE, Action.ALLOW, "default:default"),
        ({}, OperationKind.SEND_PROMPT, Action.ALLOW, "default:default"),
    ],
)
def test_default_policy(scores: dict[str, float], kind: OperationKind, action: Action, rule: str) -> None:
    decision = DEFAULT.decide(_op(kind), _insp(**scores))
    assert decision.action is action
    assert rule in decision.rule_ids


def test_on_error_fail_open_and_fail_closed() -> None:
    failed = Inspection((), {}, (DetectorRun("presidio", DetectorStatus.TIMEOUT, 5000.0, "deadline"),))
    closed = _policy("policy: a\ndefault: allow\non_error: block\n")
    opened = _policy("policy: b\ndefault: allow\non_error: allow\n")
    assert evaluate([closed], _op(), failed).action is Action.BLOCK
    decision = evaluate([opened], _op(), failed)
    assert decision.action is Action.ALLOW and "presidio: deadline" in decision.reason


def test_most_restrictive_wins_regardless_of_order() -> None:
    a = _policy(
        "policy: a\ndefault: allow\non_error: block\nrules:\n- id: w\n  match: {topics: {PII: low}}\n  action: warn\n"
    )
    b = _policy(
        "policy: b\ndefault: allow\non_error: block\nrules:\n- id: b\n  match: {apps: chatgpt}\n  action: block\n"
    )
    for order in ([a, b], [b, a]):
        decision = evaluate(order, _op(), _insp(PII=0.5))
        assert decision.action is Action.BLOCK and decision.rule_ids == ("b",)


def test_group_selector() -> None:
    p = _policy(
        "policy: a\ndefault: allow\non_error: block\nrules:\n- id: hr\n  match: {groups: [eng]}\n  action: block\n"
    )
    assert evaluate([p], _op(groups=("eng",)), _insp()).action is Action.BLOCK
    assert evaluate([p], _op(groups=("hr",)), _insp()).action is Action.ALLOW


# -- the full selector set ---------------------------------------------------------------------

FULL = _policy(
    """
policy: full
default: allow
on_error: block
rules:
  - id: by-user
    match: {users: [Mallory@Example.com]}
    action: block
  - id: by-group-with-exclusion
    match: {groups: [eng, finance], not_groups: [hr], topics: {PII_REQUEST: medium}}
    action: block
  - id: by-app-type
    match: {app_types: genai_chat, operations: [UploadFile], not_users: [boss@example.com]}
    action: warn
  - id: by-app
    match: {apps: [gemini], topics: {SOURCE_CODE: high}}
    action: log
  - id: jailbreak-detector-errors
    match: {detector_errors: [promptguard]}
    action: log
"""
)


def _who(user: str = "u", *groups: str) -> Identity:
    return Identity(user, tuple(groups), "test")


def _op2(
    identity: Identity,
    kind: OperationKind = OperationKind.SEND_PROMPT,
    app: str = "chatgpt",
    app_type: str = "genai_chat",
    prompt: str = "p",
) -> Operation:
    return Operation(app, app_type, f"{app}.x", kind, identity, prompt=prompt)


@pytest.mark.parametrize(
    ("identity", "kind", "app", "app_type", "scores", "action", "rule"),
    [
        (_who("mallory@example.com"), OperationKind.OTHER, "chatgpt", "genai_chat", {}, Action.BLOCK, "by-user"),
        (_who("MALLORY@example.com"), OperationKind.SHARE, "x", "y", {}, Action.BLOCK, "by-user"),  # case-insensitive
        (
            _who("a", "eng"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"PII_REQUEST": 0.7},
            Action.BLOCK,
            "by-group-with-exclusion",
        ),
        (
            _who("a", "Finance"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"PII_REQUEST": 0.9},
            Action.BLOCK,
            "by-group-with-exclusion",
        ),
        (
            _who("a", "eng", "hr"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"PII_REQUEST": 0.9},
            Action.ALLOW,
            "full:default",
        ),
        (
            _who("a", "hr"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"PII_REQUEST": 0.9},
            Action.ALLOW,
            "full:default",
        ),
        (
            _who("a", "eng"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"PII_REQUEST": 0.4},
            Action.ALLOW,
            "full:default",
        ),
        (_who("a"), OperationKind.UPLOAD_FILE, "claude", "genai_chat", {}, Action.WARN, "by-app-type"),
        (_who("boss@example.com"), OperationKind.UPLOAD_FILE, "claude", "genai_chat", {}, Action.ALLOW, "full:default"),
        (_who("a"), OperationKind.UPLOAD_FILE, "claude", "code_assistant", {}, Action.ALLOW, "full:default"),
        (_who("a"), OperationKind.SEND_PROMPT, "gemini", "genai_chat", {"SOURCE_CODE": 0.9}, Action.LOG, "by-app"),
        (
            _who("a"),
            OperationKind.SEND_PROMPT,
            "chatgpt",
            "genai_chat",
            {"SOURCE_CODE": 0.9},
            Action.ALLOW,
            "full:default",
        ),
    ],
)
def test_every_selector(
    identity: Identity,
    kind: OperationKind,
    app: str,
    app_type: str,
    scores: dict[str, float],
    action: Action,
    rule: str,
) -> None:
    decision = evaluate([FULL], _op2(identity, kind, app, app_type), _insp(**scores))
    assert decision.action is action
    assert rule in decision.rule_ids


def test_detector_errors_rule_takes_that_detector_out_of_on_errors_hands() -> None:
    only_pg = Inspection((), {}, (DetectorRun("promptguard", DetectorStatus.TIMEOUT, 1.0),))
    both = Inspection((), {}, (*only_pg.runs, DetectorRun("presidio", DetectorStatus.FAILED, 1.0)))
    decision = evaluate([FULL], _op2(_who()), only_pg)
    assert (decision.action, decision.rule_ids) == (Action.LOG, ("jailbreak-detector-errors",))
    decision = evaluate([FULL], _op2(_who()), both)
    assert decision.action is Action.BLOCK and decision.rule_ids == ("full:on_error",)
    assert "presidio failed" in decision.reason


def test_every_decision_names_its_rules_and_the_explanation_shows_every_selector() -> None:
    explanation = load_policies([]).explain(_op2(_who("a", "eng")), _insp(PII=0.9))
    (trace,) = explanation.traces
    assert [r.rule.rule_id for r in trace.results] == ["block-pii-in-prompts", "block-credentials-in-prompts"]
    pii, creds = trace.results
    assert pii.matched and {c.selector for c in pii.checks} == {"operations", "topics"}
    assert not creds.matched and any(not c.ok and "CREDENTIALS none < medium" in c.detail for c in creds.checks)
    assert explanation.decision.rule_ids == ("block-pii-in-prompts",)


# -- redact ----------------------------------------------------------------------------------

REDACT = _policy(
    """
policy: r
default: allow
on_error: block
rules:
  - id: redact-pii
    match: {topics: {PII: medium}}
    action: redact
  - id: warn-code
    match: {topics: {SOURCE_CODE: medium}}
    action: warn
"""
)


def _pii(start: int, end: int | None, kind: str = "pii.EMAIL_ADDRESS", score: float = 0.9) -> Finding:
    return Finding("presidio", kind, Topic.PII, score, None if end is None else Span(start, end), "rule")


def test_redact_collects_typed_spans_and_merges_overlaps() -> None:
    prompt = "mail a@b.co or call 555-0100 now"
    findings = (_pii(5, 11), _pii(20, 28, "pii.PHONE_NUMBER", 0.7), _pii(22, 29, "pii.US_BANK_NUMBER", 0.3))
    insp = Inspection(findings, {Topic.PII: 0.95}, ())
    decision = evaluate([REDACT], _op2(_who(), prompt=prompt), insp)
    assert decision.action is Action.REDACT and decision.rule_ids == ("redact-pii",)
    assert [(r.start, r.end, r.label) for r in decision.redactions] == [
        (5, 11, "EMAIL_ADDRESS"),
        (20, 29, "PHONE_NUMBER"),
    ]
    assert decision.to_dict()["redacted"] == {"EMAIL_ADDRESS": 1, "PHONE_NUMBER": 1}
    assert "a@b.co" not in str(decision.to_dict())


@pytest.mark.parametrize(
    "findings",
    [(), (_pii(0, None),), (_pii(5, 11), _pii(0, None)), (_pii(5, 99),)],
    ids=["no-evidence", "no-span", "one-unlocated", "span-outside-prompt"],
)
def test_redact_without_locatable_evidence_blocks(findings: tuple[Finding, ...]) -> None:
    decision = evaluate([REDACT], _op2(_who(), prompt="mail a@b.co please"), Inspection(findings, {Topic.PII: 0.9}, ()))
    assert decision.action is Action.BLOCK and decision.rule_ids == ("redact-pii",)
    assert "redact impossible" in decision.reason


def test_warn_outranks_redact_but_keeps_its_spans_for_the_resend() -> None:
    insp = Inspection((_pii(5, 11),), {Topic.PII: 0.9, Topic.SOURCE_CODE: 0.9}, ())
    decision = evaluate([REDACT], _op2(_who(), prompt="mail a@b.co please"), insp)
    assert decision.action is Action.WARN and decision.rule_ids == ("warn-code",)
    assert [(r.start, r.end) for r in decision.redactions] == [(5, 11)]


# -- monotonicity: adding a finding never relaxes a decision ---------------------------------

EXAMPLES = load_policies([EXAMPLES_DIR])
ALL_SETS = [DEFAULT.policies, (FULL,), (REDACT,), EXAMPLES.policies]
GROUPS = ["eng", "hr", "finance", "engineering", "marketing", "product", "contractors", "engineering-leads"]
USERS = ["mallory@example.com", "boss@example.com", "alice@example.com", "someone"]
PROMPT = "x" * 40

findings_st = st.builds(
    Finding,
    detector=st.sampled_from(["presidio", "intent", "llm"]),
    kind=st.sampled_from(["pii.EMAIL_ADDRESS", "pii.PHONE_NUMBER", "code.python", "intent.pii"]),
    topic=st.sampled_from(list(Topic)),
    score=st.floats(0, 1),
    span=st.one_of(
        st.none(),
        st.tuples(st.integers(0, 39), st.integers(1, 40)).filter(lambda t: t[0] < t[1]).map(lambda t: Span(*t)),
    ),
    explanation=st.just("rule"),
)


def _inspection(findings: list[Finding], failed: list[str]) -> Inspection:
    topics: dict[Topic, float] = {}
    for f in findings:
        topics[f.topic] = max(topics.get(f.topic, 0.0), f.score)
    runs = tuple(DetectorRun(d, DetectorStatus.FAILED, 0.0) for d in failed)
    return Inspection(tuple(findings), topics, runs)


@given(
    policies=st.sampled_from(ALL_SETS),
    base=st.lists(findings_st, max_size=4),
    extra=findings_st,
    failed=st.lists(st.sampled_from(["presidio", "promptguard", "intent"]), max_size=2, unique=True),
    kind=st.sampled_from(list(OperationKind)),
    app=st.sampled_from(
        [("chatgpt", "genai_chat"), ("gemini", "genai_chat"), ("claude", "genai_chat"), ("other", "code")]
    ),
    user=st.sampled_from(USERS),
    groups=st.lists(st.sampled_from(GROUPS), max_size=3, unique=True),
)
def test_adding_a_finding_never_relaxes_the_decision(
    policies: tuple[Policy, ...],
    base: list[Finding],
    extra: Finding,
    failed: list[str],
    kind: OperationKind,
    app: tuple[str, str],
    user: str,
    groups: list[str],
) -> None:
    operation = _op2(Identity(user, tuple(groups)), kind, app[0], app[1], prompt=PROMPT)
    before = evaluate(policies, operation, _inspection(base, failed))
    after = evaluate(policies, operation, _inspection([*base, extra], failed))
    assert ACTION_RANK[after.action] >= ACTION_RANK[before.action], (before, after)


@given(
    base=st.dictionaries(st.sampled_from(list(Topic)), st.floats(0, 1)),
    topic=st.sampled_from(list(Topic)),
    extra=st.floats(0, 1),
    kind=st.sampled_from(list(OperationKind)),
)
def test_raising_a_topic_score_never_relaxes_the_default_policy(
    base: dict[Topic, float], topic: Topic, extra: float, kind: OperationKind
) -> None:
    before = Inspection((), base, ())
    after = Inspection((), {**base, topic: max(base.get(topic, 0.0), extra)}, ())
    a = DEFAULT.decide(_op(kind), before)
    b = DEFAULT.decide(_op(kind), after)
    assert ACTION_RANK[b.action] >= ACTION_RANK[a.action]


# -- malformed files: one clear error each, naming file, line and field ------------------------

HEAD = "policy: x\ndefault: allow\non_error: block\n"
RULE = HEAD + "rules:\n- id: r\n  action: block\n"  # the rule starts on line 5

MALFORMED = [
    ("default: allow\non_error: block\n", 1, "policy", "needs a name"),
    ("policy: x\non_error: block\n", 1, "default", "state the default"),
    ("policy: x\ndefault: allow\n", 1, "on_error", "state the on_error"),
    ("policy: x\ndefault: maybe\non_error: block\n", 2, "default", "unknown action"),
    ("policy: x\ndefault: allow\non_error: redact\n", 3, "on_error", "redact needs a topics selector"),
    (HEAD + "rules:\n- id: r\n  action: explode\n", 6, "rules[0].action", "unknown action"),
    (HEAD + "rules:\n- action: block\n", 5, "rules[0].id", "needs an id"),
    (RULE + "  match: {topics: {PIII: high}}\n", 7, "rules[0].match.topics.PIII", "unknown topic"),
    (RULE + "  match:\n    topics: {PII: extreme}\n", 8, "rules[0].match.topics.PII", "unknown confidence"),
    (RULE + "  match: {operation: Share}\n", 7, "rules[0].match.operation", "unknown selector"),
    (RULE + "  match: {operations: [Shave]}\n", 7, "rules[0].match.operations", "operation"),
    (RULE + "- id: r\n  action: allow\n", 7, "rules[1].id", "duplicate rule id"),
    (HEAD + "rulez: []\n", 4, "rulez", "unknown key"),
    (RULE + "  match: {groups: []}\n", 7, "rules[0].match.groups", "non-empty list"),
    (RULE + "  match: {users: 42}\n", 7, "rules[0].match.users", "name"),
    (RULE + "  match: {topics: {}}\n", 7, "rules[0].match.topics", "TOPIC"),
    (RULE + "  match: {detector_errors: false}\n", 7, "rules[0].match.detector_errors", "true or detector names"),
    (
        HEAD + "rules:\n- id: r\n  action: redact\n  match: {apps: chatgpt}\n",
        6,
        "rules[0].action",
        "needs a topics selector",
    ),
    (
        RULE + "  match: {groups: [eng, hr], not_groups: [hr]}\n",
        7,
        "rules[0].match.not_groups",
        "both selected and excluded",
    ),
    (HEAD + "rules:\n  id: r\n", 4, "rules", "expected a list"),
    (RULE + "  message: [not, text]\n", 7, "rules[0].message", "expected a string"),
    ("policy: has spaces\ndefault: allow\non_error: block\n", 1, "policy", "letters, digits"),
]


@pytest.mark.parametrize(("text", "line", "field", "fragment"), MALFORMED)
def test_malformed_policies_name_file_line_and_field(
    tmp_path: Path, text: str, line: int, field: str, fragment: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policies([path])
    err = info.value
    assert (err.source, err.line, err.field) == (str(path), line, field), str(err)
    assert fragment in err.message
    assert str(err).startswith(f"{path}:{line}:")
    # lint reports the same problem first (and never crashes)
    problems = lint_files([path], LintContext())
    assert problems and (problems[0].line, problems[0].field) == (line, field)


def test_there_are_at_least_twenty_malformed_cases() -> None:
    assert len(MALFORMED) >= 20
    assert len({case[0] for case in MALFORMED}) == len(MALFORMED)


def test_malformed_edits_never_replace_the_running_set(tmp_path: Path) -> None:
    """Each malformed file, written over a good one, is reported and the last good set keeps deciding."""
    path = tmp_path / "live.yaml"
    path.write_text(HEAD + "rules:\n- id: block-share\n  match: {operations: Share}\n  action: block\n")
    reported: list[ConfigError] = []
    live = ReloadingPolicySet([path], on_error=reported.append)
    share = _op(OperationKind.SHARE)
    for i, (text, line, field, _) in enumerate([*MALFORMED, ("policy: [unclosed\n", 1, None, "")]):
        path.write_text(text + "\n" * (i + 1))  # the size changes, so the edit is noticed
        decision = live.decide(share, _insp())
        assert decision.action is Action.BLOCK and decision.rule_ids == ("block-share",)
        assert live.last_error is not None and live.last_error.source == str(path)
        assert live.last_error.field == field
        assert live.last_error.line == line if field is not None else live.last_error.line is not None
    assert len(reported) == len(MALFORMED) + 1
    path.write_text(HEAD + "rules:\n- id: allow-all\n  action: log\n")
    decision = live.decide(share, _insp())
    assert decision.action is Action.LOG and live.last_error is None and live.reloads == 1


def test_reload_applies_to_the_next_decision_even_for_a_same_size_rewrite(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(HEAD + "rules:\n- id: r\n  match: {operations: Share}\n  action: block\n")
    live = ReloadingPolicySet([path])
    assert live.decide(_op(OperationKind.SHARE), _insp()).action is Action.BLOCK
    path.write_text(HEAD + "rules:\n- id: r\n  match: {operations: Share}\n  action: allow\n")  # same size
    assert live.decide(_op(OperationKind.SHARE), _insp()).action is Action.ALLOW


def test_a_directory_entry_picks_up_new_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(HEAD)
    live = ReloadingPolicySet([tmp_path])
    assert live.decide(_op(OperationKind.SHARE), _insp()).action is Action.ALLOW
    (tmp_path / "b.yaml").write_text("policy: y\ndefault: warn\non_error: block\n")
    assert live.decide(_op(OperationKind.SHARE), _insp()).action is Action.WARN


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + "rules: [\n")
    with pytest.raises(ConfigError) as info:
        load_policies([path])
    assert info.value.source == str(path) and info.value.line is not None and "invalid YAML" in info.value.message


def test_policy_names_and_rule_ids_are_unique_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(RULE)
    (tmp_path / "b.yaml").write_text(RULE.replace("policy: x", "policy: y"))
    with pytest.raises(ConfigError, match="duplicate rule id 'r'") as info:
        load_policies([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert info.value.source == str(tmp_path / "b.yaml") and info.value.line == 5


# -- the schema is the one the code enforces ---------------------------------------------------


def test_schema_enums_match_the_core_vocabulary() -> None:
    defs = policy_schema()["$defs"]
    assert defs["action"]["enum"] == [a.value for a in Action]
    assert defs["operation"]["enum"] == [k.value for k in OperationKind]
    assert sorted(defs["match"]["properties"]["topics"]["properties"]) == sorted(t.value for t in Topic)
    assert defs["level"]["enum"] == [c.name.lower() for c in Confidence if c is not Confidence.NONE]


SHIPPED = [p for p in sorted(EXAMPLES_DIR.glob("*.yaml")) if not p.name.endswith(".test.yaml")]


@pytest.mark.parametrize("path", [*SHIPPED, Path("policies/builtin/default.yaml")], ids=str)
def test_shipped_policies_validate_against_the_schema(path: Path) -> None:
    from promptfence.yamlsource import load_yaml_file

    assert schema_errors(load_yaml_file(path), str(path)) == []
    assert len(SHIPPED) >= 3


# -- lint semantics ----------------------------------------------------------------------------


def test_lint_reports_unknown_group_app_and_shadowed_rules(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_text(
        HEAD
        + "rules:\n"
        + "- id: broad\n  match: {groups: [eng, sales]}\n  action: block\n"  # line 5
        + "- id: narrow\n  match: {groups: eng, topics: {PII: high}}\n  action: warn\n"  # line 8
        + "- id: more-restrictive\n  match: {groups: eng, topics: {PII: high}}\n  action: block\n"  # line 11
        + "- id: odd-app\n  match: {apps: chatgtp}\n  action: log\n"  # line 14
        + "- id: redact-after-warn\n  match: {groups: eng, topics: {PII: high}}\n  action: redact\n"  # line 17
    )
    problems = lint_files([path], LintContext(groups=frozenset({"eng", "hr"}), apps=frozenset({"chatgpt"})))
    found = {(p.line, p.field, p.message.split(" (")[0][:40]) for p in problems}
    assert (6, "rules[0].match.groups", "group sales is never defined in the dire") in found
    assert any(p.line == 8 and p.field == "rules[1].id" and "shadowed by rule 'broad'" in p.message for p in problems)
    assert any(p.line == 11 and "shadowed by rule 'broad'" in p.message for p in problems)  # block covers block
    assert any(p.line == 15 and "unknown app chatgtp" in p.message for p in problems)
    assert any(p.line == 17 and "shadowed by rule 'broad'" in p.message for p in problems)  # block covers redact
    # not shadowed: an earlier, narrower rule does not hide a broader later one
    path.write_text(HEAD + "rules:\n- id: a\n  match: {groups: eng}\n  action: warn\n- id: b\n  action: warn\n")
    assert lint_files([path], LintContext()) == []
    # nor does a warn rule hide a redact rule: its spans still apply when the warned prompt is resent
    path.write_text(
        HEAD + "rules:\n- id: a\n  action: warn\n- id: b\n  match: {topics: {PII: low}}\n  action: redact\n"
    )
    assert lint_files([path], LintContext()) == []
