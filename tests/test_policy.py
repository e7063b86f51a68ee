"""Policies: evaluation is pure and most-restrictive-wins; malformed files give clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policies.policy import evaluate, load_policies, parse_policy
from promptfence.core import (
    ACTION_RANK,
    Action,
    DetectorRun,
    DetectorStatus,
    Identity,
    Inspection,
    Operation,
    OperationKind,
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


def _policy(text: str, name: str = "t.yaml") -> object:
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
    assert evaluate([closed], _op(), failed).action is Action.BLOCK  # type: ignore[list-item]
    decision = evaluate([opened], _op(), failed)  # type: ignore[list-item]
    assert decision.action is Action.ALLOW and "presidio failed" in decision.reason


def test_most_restrictive_wins_regardless_of_order() -> None:
    a = _policy(
        "policy: a\ndefault: allow\non_error: block\nrules:\n- id: w\n  match: {topics: {PII: low}}\n  action: warn\n"
    )
    b = _policy(
        "policy: b\ndefault: allow\non_error: block\nrules:\n- id: b\n  match: {apps: chatgpt}\n  action: block\n"
    )
    for order in ([a, b], [b, a]):
        decision = evaluate(order, _op(), _insp(PII=0.5))  # type: ignore[arg-type]
        assert decision.action is Action.BLOCK and decision.rule_ids == ("b",)


def test_group_selector() -> None:
    p = _policy(
        "policy: a\ndefault: allow\non_error: block\nrules:\n- id: hr\n  match: {groups: [eng]}\n  action: block\n"
    )
    assert evaluate([p], _op(groups=("eng",)), _insp()).action is Action.BLOCK  # type: ignore[list-item]
    assert evaluate([p], _op(groups=("hr",)), _insp()).action is Action.ALLOW  # type: ignore[list-item]


@given(
    base=st.dictionaries(st.sampled_from(list(Topic)), st.floats(0, 1)),
    topic=st.sampled_from(list(Topic)),
    extra=st.floats(0, 1),
    kind=st.sampled_from(list(OperationKind)),
)
def test_adding_evidence_never_relaxes_the_decision(
    base: dict[Topic, float], topic: Topic, extra: float, kind: OperationKind
) -> None:
    before = Inspection((), base, ())
    after = Inspection((), {**base, topic: max(base.get(topic, 0.0), extra)}, ())
    a = DEFAULT.decide(_op(kind), before)
    b = DEFAULT.decide(_op(kind), after)
    assert ACTION_RANK[b.action] >= ACTION_RANK[a.action]


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("default: allow\non_error: block\n", 1, "policy"),
        ("policy: x\non_error: block\n", 1, "default"),
        ("policy: x\ndefault: allow\n", 1, "on_error"),
        ("policy: x\ndefault: maybe\non_error: block\n", 2, "default"),
        ("policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: explode\n", 6, "rules[0].action"),
        ("policy: x\ndefault: allow\non_error: block\nrules:\n- action: block\n", 5, "rules[0].id"),
        (
            "policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: block\n  match: {topics: {PIII: high}}\n",
            7,
            "rules[0].match.topics.PIII",
        ),
        (
            "policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: block\n  match:\n    topics: {PII: extreme}\n",
            8,
            "rules[0].match.topics.PII",
        ),
        (
            "policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: block\n  match: {operation: Share}\n",
            7,
            "rules[0].match.operation",
        ),
        (
            "policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: block\n  match: {operations: [Shave]}\n",
            7,
            "rules[0].match.operations",
        ),
        (
            "policy: x\ndefault: allow\non_error: block\nrules:\n- id: r\n  action: block\n- id: r\n  action: allow\n",
            7,
            "rules[1].id",
        ),
        ("policy: x\ndefault: allow\non_error: block\nrulez: []\n", 4, "rulez"),
    ],
)
def test_malformed_policies_name_line_and_field(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_policies([path])
    assert info.value.source == str(path)
    assert info.value.line == line
    assert info.value.field == field
