"""The proxy's Prometheus counters, read from what the PromptFence addon decided.

Why a separate addon: counting stays out of the enforcement path. mitmproxy runs addons in
order and awaits each hook, so this addon, added after :class:`proxy.addon.PromptFenceAddon`,
sees the :class:`proxy.addon.FlowState` that the addon left in ``flow.metadata`` once the
decision is made. Labels are the app, the operation kind, the action and a failure status:
bounded values from the catalogue and the core enums, never anything from the request.
"""

from __future__ import annotations

import time

from mitmproxy import http

from promptfence import metrics
from promptfence.core import DetectorStatus
from proxy.addon import METADATA_KEY, FlowState

COUNTED_KEY = "promptfence_counted"

OPERATIONS = metrics.counter(
    "promptfence_operations_total", "Operations of catalogue apps the proxy inspected.", ("app", "kind")
)
DECISIONS = metrics.counter("promptfence_decisions_total", "Policy decisions, by the action taken.", ("app", "action"))
INSPECTION_FAILURES = metrics.counter(
    "promptfence_inspection_failures_total",
    "Operations whose inspection failed as a whole (inspector unreachable, timed out, invalid answer, uninspectable).",
    ("status",),
)
GUARD_SECONDS = metrics.histogram(
    "promptfence_proxy_guard_seconds",
    "Time from the request to the decision (extraction, the inspector round trip, policy, the decision-time record).",
)
ANSWERS = metrics.counter("promptfence_answers_total", "Answer streams that ended, by how.", ("app", "status"))


class TelemetryAddon:
    """Counts each inspected operation once, when its decision is made and when its answer ends."""

    def __init__(self) -> None:
        # The last whole-inspection failure (None: the last inspection got an answer): /readyz.
        self.inspector_problem: str | None = None

    def request(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if not isinstance(state, FlowState) or flow.metadata.get(COUNTED_KEY):
            return
        flow.metadata[COUNTED_KEY] = True
        op = state.operation
        OPERATIONS.labels(op.app, op.kind.value).inc()
        DECISIONS.labels(op.app, state.decision.action.value).inc()
        GUARD_SECONDS.observe(max(0.0, time.monotonic() - state.started))
        whole = [r for r in state.inspection.runs if r.detector in ("inspector", "extractor") and r.failed]
        for run in whole:
            INSPECTION_FAILURES.labels(run.status.value).inc()
        if state.inspection.runs:
            unreachable = [r for r in whole if r.status is not DetectorStatus.UNINSPECTABLE]
            self.inspector_problem = f"inspector {unreachable[0].status.value}" if unreachable else None

    def _ended(self, flow: http.HTTPFlow, status: str) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and flow.metadata.get(COUNTED_KEY) != "answer":
            flow.metadata[COUNTED_KEY] = "answer"
            ANSWERS.labels(state.operation.app, status).inc()

    def response(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and state.decision.blocks:
            return  # the block reply is not an answer
        self._ended(flow, "complete")

    def error(self, flow: http.HTTPFlow) -> None:
        self._ended(flow, "upstream_error")
