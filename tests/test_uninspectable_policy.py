"""on_uninspectable is its own rule: what the sender broke never falls to a fail-open on_error."""

from __future__ import annotations

from pathlib import Path

import pytest

from policies.policy import Policy, evaluate, parse_policy
from promptfence.core import Action, DetectorRun, DetectorStatus, Identity, Inspection, Operation, OperationKind
from promptfence.errors import ConfigError
from promptfence.yamlsource import load_yaml_text

FAIL_OPEN = """\
policy: fail-open
default: allow
on_error: allow
rules:
  - id: models-down-is-fine
    match: {detector_errors: true}
    action: log
"""

OP = Operation("chatgpt", "genai_chat", "chatgpt.send_prompt", OperationKind.SEND_PROMPT, Identity("u"), "text")


def _policy(text: str = FAIL_OPEN) -> Policy:
    return parse_policy(load_yaml_text(text, "p.yaml"), "p.yaml")


def _decide(inspection: Inspection, text: str = FAIL_OPEN) -> tuple[Action, tuple[str, ...], str]:
    decision = evaluate([_policy(text)], OP, inspection)
    return decision.action, decision.rule_ids, decision.reason


def test_an_uninspectable_request_blocks_although_on_error_allows() -> None:
    inspection = Inspection.failure("extractor", DetectorStatus.UNINSPECTABLE, "body too large (9 bytes, limit 8)")
    action, rules, reason = _decide(inspection)
    assert action is Action.BLOCK
    assert rules == ("fail-open:on_uninspectable",)
    assert reason.startswith("uninspectable: body too large")


def test_detector_errors_rules_do_not_cover_uninspectable() -> None:
    inspection = Inspection(
        findings=(), topics={}, runs=(DetectorRun("extractor", DetectorStatus.UNINSPECTABLE, 0.0, "deep"),)
    )
    assert _decide(inspection)[0] is Action.BLOCK
    broken_model = Inspection.failure("inspector", DetectorStatus.TIMEOUT, "inspector: no answer within 10s")
    action, rules, _ = _decide(broken_model)
    assert action is Action.LOG and rules == ("models-down-is-fine",)


@pytest.mark.parametrize("transform", ["decode_depth_exceeded", "decode_sections_exceeded"])
def test_encodings_past_the_decoders_bound_are_uninspectable(transform: str) -> None:
    inspection = Inspection(
        findings=(),
        topics={},
        runs=(DetectorRun("presidio", DetectorStatus.OK, 1.0),),
        transforms=("base64", transform),
    )
    action, rules, reason = _decide(inspection)
    assert action is Action.BLOCK and rules == ("fail-open:on_uninspectable",)
    assert "decoder" in reason


def test_on_uninspectable_can_be_set_and_is_validated() -> None:
    relaxed = FAIL_OPEN.replace("on_error: allow\n", "on_error: allow\non_uninspectable: log\n")
    inspection = Inspection.failure("extractor", DetectorStatus.UNINSPECTABLE, "unknown content-encoding 'x'")
    assert _decide(inspection, relaxed)[0] is Action.LOG
    with pytest.raises(ConfigError) as raised:
        _policy(FAIL_OPEN.replace("on_error: allow\n", "on_error: allow\non_uninspectable: maybe\n"))
    assert "on_uninspectable" in str(raised.value) and "p.yaml:4" in str(raised.value)


def test_an_allowed_decision_carries_no_block_message() -> None:
    clean = Inspection(findings=(), topics={}, runs=(DetectorRun("presidio", DetectorStatus.OK, 1.0),))
    default = Path(__file__).resolve().parents[1] / "policies" / "builtin" / "default.yaml"
    decision = evaluate([parse_policy(load_yaml_text(default.read_text(), str(default)), str(default))], OP, clean)
    assert decision.action is Action.ALLOW and decision.message == ""
