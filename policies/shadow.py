"""Shadow mode: a candidate policy set decides every request next to the enforced one.

Security teams watch what a new guardrail *would* do before it does anything. The proxy hands
the addon a :class:`ShadowedPolicySet` in place of the enforced set: ``decide`` returns the
enforced decision, unchanged except that it carries the candidate's verdict as
:class:`~promptfence.core.ShadowDecision` (action, rule ids, policy), which the record keeps as
``shadow`` and ``logs list --shadow-diff`` and the viewer compare. The candidate never changes
the flow: a shadow set that raises (or whose files break on reload; the reloader then keeps its
last good set) gives a shadow decision that names the error type, and the enforced decision
stands as it is.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Protocol

from promptfence.core import Decision, Inspection, Operation, ShadowDecision

log = logging.getLogger("promptfence.policy")


class Decider(Protocol):
    def decide(self, operation: Operation, inspection: Inspection) -> Decision: ...


class ShadowedPolicySet:
    def __init__(self, enforced: Decider, shadow: Decider) -> None:
        self.enforced = enforced
        self.shadow = shadow

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        decision = self.enforced.decide(operation, inspection)
        return dataclasses.replace(decision, shadow=self.shadow_decision(operation, inspection))

    def shadow_decision(self, operation: Operation, inspection: Inspection) -> ShadowDecision:
        try:
            candidate = self.shadow.decide(operation, inspection)
        except Exception as exc:  # the candidate set must never cost the request
            log.error("shadow policy evaluation failed (%s); the enforced decision stands", type(exc).__name__)
            return ShadowDecision(None, error=type(exc).__name__)
        return ShadowDecision(candidate.action, candidate.rule_ids, candidate.policy)
