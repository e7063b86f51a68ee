"""Issue 19 units: justification lines, the shadow set, custom topics in policies and on the wire."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from logs.rollout import RescanResult, shadow_diff
from policies.policy import evaluate, parse_policy
from policies.shadow import ShadowedPolicySet
from promptfence.core import (
    Action,
    CustomFinding,
    Decision,
    Identity,
    Inspection,
    InspectionFormatError,
    LogRecord,
    Operation,
    OperationKind,
    Payload,
    ShadowDecision,
    Topic,
)
from promptfence.errors import ConfigError
from promptfence.yamlsource import load_yaml_text
from proxy.coaching import WarnLedger
from proxy.justification import split_justification

OP = Operation("chatgpt", "genai_chat", "chatgpt.send_prompt", OperationKind.SEND_PROMPT, Identity("u"), "text")


# -- justification -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "rest", "reason"),
    [
        ("fix this code", "fix this code", None),
        ("fix this code\nJustification: ticket 42", "fix this code", "ticket 42"),
        ("Justification: ticket 42\nfix this code", "fix this code", "ticket 42"),
        ("fix\n  justification :  needed for the audit  \nthis code", "fix\nthis code", "needed for the audit"),
        ("fix this code\r\nJUSTIFICATION: crlf\r\n", "fix this code", "crlf"),
        ("fix this code\nJustification:   ", "fix this code", None),  # an empty reason is no reason
        ("a\nJustification: one\nb\nJustification: two", "a\nb", "two"),
        ("my justification: none", "my justification: none", None),  # not at the start of a line
    ],
)
def test_the_justification_line_is_found_and_removed(prompt: str, rest: str, reason: str | None) -> None:
    justified = split_justification(prompt)
    assert (justified.prompt, justified.reason) == (rest, reason)


def test_a_resend_with_a_reason_matches_the_first_send_in_the_warn_ledger() -> None:
    ledger = WarnLedger(clock=lambda: 0.0)
    first = dataclasses.replace(OP, prompt="paste of code\n")
    resend = dataclasses.replace(OP, prompt="paste of code\nJustification: migration")
    key = lambda op: dataclasses.replace(op, prompt=split_justification(op.prompt).prompt)  # noqa: E731
    assert not ledger.resend(key(first), 600)
    assert ledger.resend(key(resend), 600)
    other = dataclasses.replace(OP, prompt="another paste\nJustification: migration")
    assert not ledger.resend(key(other), 600)  # a reason does not open a different request


# -- policies ----------------------------------------------------------------------------------

COACH = """policy: coach
default: allow
on_error: block
rules:
  - id: coach
    match: {topics: {SOURCE_CODE: medium}}
    action: warn
    justification: required
  - id: falcon
    match: {topics: {PROJECT_FALCON: medium}}
    action: block
"""


def _policy(text: str, custom: frozenset[str] = frozenset({"PROJECT_FALCON"})) -> object:
    return parse_policy(load_yaml_text(text, "p.yaml"), "p.yaml", custom)


def test_a_justification_rule_marks_its_warn_decision() -> None:
    policy = _policy(COACH)
    decision = evaluate([policy], OP, Inspection((), {Topic.SOURCE_CODE: 0.9}, ()))  # type: ignore[list-item]
    assert decision.action is Action.WARN and decision.justification_required
    assert decision.to_dict()["justification_required"] is True


def test_a_custom_topic_is_selected_like_a_built_in_one() -> None:
    policy = _policy(COACH)
    hit = Inspection((), {}, (), custom_topics={"PROJECT_FALCON": 0.7})
    decision = evaluate([policy], OP, hit)  # type: ignore[list-item]
    assert decision.action is Action.BLOCK and decision.rule_ids == ("falcon",)
    assert "PROJECT_FALCON" in decision.reason
    low = Inspection((), {}, (), custom_topics={"PROJECT_FALCON": 0.4})
    assert evaluate([policy], OP, low).action is Action.ALLOW  # type: ignore[list-item]


def test_an_undeclared_custom_topic_is_an_error_with_file_line_and_field() -> None:
    with pytest.raises(ConfigError) as err:
        _policy(COACH, frozenset())
    assert (err.value.line, err.value.column) == (10, 22) and err.value.field == "rules[1].match.topics.PROJECT_FALCON"
    assert "unknown topic" in str(err.value)


def test_justification_on_a_block_rule_is_an_error() -> None:
    text = COACH.replace(
        "    action: warn\n    justification: required", "    action: block\n    justification: required"
    )
    with pytest.raises(ConfigError) as err:
        _policy(text)
    assert err.value.field == "rules[0].justification"


class Raising:
    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        raise RuntimeError("boom")


class Fixed:
    def __init__(self, action: Action, rule: str) -> None:
        self.decision = Decision(action, (rule,), "p")

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        return self.decision


def test_the_shadow_verdict_rides_along_and_a_broken_shadow_set_changes_nothing() -> None:
    inspection = Inspection((), {}, ())
    decided = ShadowedPolicySet(Fixed(Action.ALLOW, "a"), Fixed(Action.BLOCK, "b")).decide(OP, inspection)
    assert decided.action is Action.ALLOW and decided.rule_ids == ("a",)
    assert decided.shadow == ShadowDecision(Action.BLOCK, ("b",), "p")
    broken = ShadowedPolicySet(Fixed(Action.ALLOW, "a"), Raising()).decide(OP, inspection)
    assert broken.action is Action.ALLOW and broken.shadow == ShadowDecision(None, error="RuntimeError")


def test_the_record_carries_shadow_and_justified_but_not_the_reason() -> None:
    decision = Decision(Action.WARN, ("coach",), "p", shadow=ShadowDecision(Action.BLOCK, ("b",), "cand"))
    record = LogRecord(
        "r1", 0.0, OP, Inspection((), {}, ()), decision, Payload("text", justification="because of the audit")
    )
    meta = record.metadata()
    assert meta["shadow"] == {"action": "block", "rules": ["b"], "policy": "cand"}
    assert meta["justified"] is True and "because of the audit" not in str(meta)
    assert Payload.from_dict(record.payload.to_dict()).justification == "because of the audit"


# -- the wire ----------------------------------------------------------------------------------


def test_custom_topics_travel_and_are_strictly_parsed() -> None:
    inspection = Inspection(
        (),
        {},
        (),
        custom_topics={"PROJECT_FALCON": 0.8},
        custom_findings=(CustomFinding("custom_topics", "PROJECT_FALCON", 0.8, "nearest example 2"),),
    )
    back = Inspection.from_dict(inspection.to_dict())
    assert back.custom_topics == {"PROJECT_FALCON": 0.8} and back.custom_findings == inspection.custom_findings
    assert Inspection.from_dict({"topics": {}, "findings": [], "runs": []}).custom_topics == {}
    for bad, message in (
        ({"custom_topics": {"PII": 0.5}}, "not a custom topic name"),  # a built-in name is not custom
        ({"custom_topics": {"my secret prompt": 0.5}}, "not a custom topic name"),
        ({"custom_topics": {"FALCON": 1.5}}, "custom_topics.FALCON is not between 0 and 1"),
        ({"custom_topics": {"FALCON": {"confidence": "high"}}}, "missing field custom_topics.FALCON.score"),
        ({"custom_findings": [{"detector": "x", "name": "bad name", "score": 0.5}]}, "custom_findings[0].name"),
        ({"custom_topics": []}, "field custom_topics is not an object"),
    ):
        with pytest.raises(InspectionFormatError) as err:
            Inspection.from_dict({"topics": {}, "findings": [], "runs": [], **bad})
        assert message in str(err.value)
        assert "my secret prompt" not in str(err.value)


# -- logs: shadow diff and re-scan comparison ---------------------------------------------------


def _meta(action: str, shadow: str | None, app: str = "chatgpt", groups: list[str] | None = None) -> dict[str, object]:
    return {
        "app": app,
        "groups": groups or [],
        "decision": {"action": action, "rule_ids": ["r"]},
        "shadow": None if shadow is None else {"action": shadow, "rules": [f"s-{shadow}"], "policy": "cand"},
    }


def test_shadow_diff_counts_disagreements_per_change_rule_app_and_group() -> None:
    diff = shadow_diff(
        [
            ("1", _meta("allow", "block", groups=["eng"])),
            ("2", _meta("allow", "block", app="claude", groups=["eng", "sales"])),
            ("3", _meta("allow", "allow")),
            ("4", _meta("warn", "allow")),
            ("5", _meta("allow", None)),
        ]
    )
    assert (diff.records, diff.with_shadow, diff.disagreements) == (5, 4, 3)
    assert diff.by_change == {"allow -> block": 2, "warn -> allow": 1}
    assert diff.by_rule == {"s-block": 2, "s-allow": 1}
    assert diff.by_app == {"chatgpt": 2, "claude": 1}
    assert diff.by_group == {"eng": 2, "sales": 1, "(no group)": 1}
    assert diff.record_ids == ["1", "2", "4"]


def test_a_rescan_result_names_what_changed_ignoring_policy_default_names() -> None:
    base = RescanResult("r", "chatgpt", "u", "allow", ("a:default",), {}, "allow", ("b:default",), {}, "b")
    assert base.changes == ()
    assert dataclasses.replace(base, after_action="block", after_rules=("x",)).changes == ("action", "rules")
    assert dataclasses.replace(base, after_topics={"PII": "high"}).changes == ("topics",)
    assert dataclasses.replace(base, error="KeyMaterialError").changes == ("error",)


def test_store_annotations_are_limited_to_marked_sections(tmp_path: Path) -> None:
    from logs.store import LogStore

    store = LogStore(f"sqlite:///{tmp_path / 'l.db'}", recipients=())
    try:
        with pytest.raises(ValueError):
            store.annotate("r", "decision", {})
        assert store.annotate("missing", "rescan", {"action": "block"}) is False
    finally:
        store.close()


def test_policy_tests_declare_custom_topics_and_catch_misspelt_ones(tmp_path: Path) -> None:
    from policies.policy import PolicySet
    from policies.testing import load_test_file, run_file

    policy = _policy(COACH)
    tests = tmp_path / "coach.test.yaml"
    tests.write_text(
        """tests:
  - name: falcon is blocked
    topics: {PROJECT_FALCON: medium}
    expect: block
    rules: [falcon]
  - name: a typo is no pass
    topics: {PROJCT_FALCON: high}
    expect: allow
"""
    )
    results = run_file(load_test_file(tests), PolicySet((policy,)), groups_of=lambda user: ())  # type: ignore[arg-type]
    assert results[0].passed, results[0].problems
    assert not results[1].passed and "unknown topic PROJCT_FALCON" in results[1].problems[0]
