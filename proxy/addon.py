"""The PromptFence mitmproxy addon: map, inspect, decide, enforce, record.

The addon only knows the *ports* it is given (an inspector, a policy, a recorder): the proxy
package maps flows to operations and enforces decisions, and the CLI wires in the concrete
inspector client, policy set and log store. That keeps this package free of model, policy and
database code and makes it testable with mitmproxy's own ``taddons``/``tflow`` helpers.

What this module may write to plain logs: flow ids, app and operation ids, sizes, digests,
actions. Never prompt or response text.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from promptfence.core import (
    Action,
    Decision,
    DetectorStatus,
    Inspection,
    LogRecord,
    Operation,
    Payload,
    text_digest,
)
from proxy.block_reply import BLOCK_REPLIES
from proxy.catalogue import Catalogue, Match
from proxy.coaching import WarnLedger
from proxy.extraction import Extraction
from proxy.flowmap import extract, match_flow, new_decoder, operation_of
from proxy.identity import Challenge, ClientAddressIdentity, Gatekeeper, IdentityResolver
from proxy.redaction import RedactionError, apply_to_flow
from proxy.tap import ResponseTap, decode_whole
from proxy.wire.base import Answer

log = logging.getLogger("promptfence.proxy")

METADATA_KEY = "promptfence"
OUTCOME_WARNED = "stopped with warning"
OUTCOME_PROCEEDED = "proceeded after warning"
REDACTION_FAILED_MESSAGE = (
    "PromptFence blocked this request: it contains data that must be redacted, and this request "
    "cannot be rewritten safely. Remove the sensitive data and try again."
)


class InspectionPort(Protocol):
    async def inspect(self, operation: Operation) -> Inspection: ...


class DecisionPort(Protocol):
    def decide(self, operation: Operation, inspection: Inspection) -> Decision: ...


class RecordPort(Protocol):
    """Where records go. ``record`` is called when the decision is made (before anything is
    forwarded; ``answer_status`` "pending" when the prompt will be forwarded) and must return
    only once the record is durable: it raises :class:`~promptfence.errors.RecordNotDurable`
    when it cannot be (``logs.on_unrecordable: block``), and the prompt is then not forwarded.
    ``complete`` is called with the same ``record_id`` and the answer when the stream ends."""

    async def record(self, record: LogRecord) -> None: ...

    async def complete(self, record: LogRecord) -> None: ...


@dataclass
class FlowState:
    """What the addon learned about one flow, kept in ``flow.metadata`` until it is logged."""

    operation: Operation
    inspection: Inspection
    decision: Decision
    started: float
    response_bytes: int = 0
    recorded: bool = False
    notes: list[str] = field(default_factory=list)
    tap: ResponseTap | None = None  # the answer decoder's copy of the response stream


class PromptFenceAddon:
    def __init__(
        self,
        catalogue: Catalogue,
        inspector: InspectionPort,
        policy: DecisionPort,
        recorder: RecordPort,
        identity: IdentityResolver | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.identity = identity or ClientAddressIdentity()
        self.inspector = inspector
        self.policy = policy
        self.recorder = recorder
        self.warnings = WarnLedger()

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "promptfence_resolve",
            str,
            "",
            "Comma-separated host=addr:port pins applied when connecting upstream "
            "(TLS still verifies the original host name).",
        )
        loader.add_option(
            "promptfence_inspect_timeout",
            float,
            10.0,
            "Seconds one inspection may take before the policy's on_error rule decides.",
        )
        loader.add_option(
            "promptfence_max_body",
            int,
            8 * 1024 * 1024,
            "Largest prompt-carrying request body inspected; larger bodies count as an error.",
        )
        loader.add_option(
            "promptfence_capture_bodies",
            int,
            0,
            "For `promptfence capture`: keep a copy of inspected responses up to this many bytes "
            "so the recorded flow holds the answer (0: keep nothing).",
        )
        loader.add_option(
            "promptfence_warn_window",
            float,
            600.0,
            "Seconds within which an identical resend of a warned request proceeds (and is recorded).",
        )

    # -- upstream address pins -------------------------------------------------------------
    def _pins(self) -> dict[str, tuple[str, int]]:
        pins: dict[str, tuple[str, int]] = {}
        for item in filter(None, (p.strip() for p in ctx.options.promptfence_resolve.split(","))):
            host, _, target = item.partition("=")
            addr, _, port = target.rpartition(":")
            pins[host.strip().lower()] = (addr, int(port))
        return pins

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.address is None:
            return
        host, port = data.server.address
        target = self._pins().get(f"{host.lower()}:{port}") or self._pins().get(host.lower())
        if target is not None:
            data.server.address = target

    # -- requests ----------------------------------------------------------------------------
    def _extract(self, flow: http.HTTPFlow, match: Match) -> tuple[Extraction, str | None]:
        return extract(flow, match, ctx.options.promptfence_max_body)

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.request.method == "CONNECT":
            return
        match = self.catalogue.match(flow.request.pretty_host, flow.request.method, flow.request.path)
        if match is None or not match.operation.inspect:
            return
        started = time.monotonic()
        extraction, extract_error = self._extract(flow, match)
        operation = operation_of(flow, match, extraction, self.identity.identify(flow), extraction.conversation_id)
        if extract_error is not None:
            inspection = Inspection.failure("extractor", DetectorStatus.INVALID_OUTPUT, extract_error)
        elif operation.has_prompt:
            inspection = await self._inspect(operation)
        else:
            inspection = Inspection(findings=(), topics={}, runs=())
        decision = self._enforce(flow, match, operation, self.policy.decide(operation, inspection))
        state = FlowState(operation, inspection, decision, started)
        flow.metadata[METADATA_KEY] = state
        log.info(
            "flow=%s op=%s prompt_chars=%d prompt_digest=%s topics=%s failed=%s action=%s rules=%s outcome=%s",
            flow.id,
            operation.operation_id,
            len(operation.prompt),
            text_digest(operation.prompt),
            ",".join(f"{t.value}:{c.name.lower()}" for t, c in inspection.detected().items()) or "-",
            ",".join(inspection.failed_detectors) or "-",
            decision.action.value,
            ",".join(decision.rule_ids) or "-",
            decision.outcome or "-",
        )
        if decision.blocks or decision.outcome == OUTCOME_WARNED:
            message = decision.message if decision.blocks else self._warn_notice(decision.message)
            reply = BLOCK_REPLIES[match.operation.block_reply](message, extraction)
            headers = dict(reply.headers)
            if not decision.blocks:
                headers["X-PromptFence"] = "warned"
            flow.response = http.Response.make(reply.status, reply.body, headers)
            await self._finish(flow, state)

    # -- warn and redact: what a decision means for this request (evaluation stays pure) ------
    def _enforce(self, flow: http.HTTPFlow, match: Match, operation: Operation, decision: Decision) -> Decision:
        if decision.action is Action.WARN:
            if not self.warnings.resend(operation, ctx.options.promptfence_warn_window):
                return dataclasses.replace(decision, outcome=OUTCOME_WARNED)
            decision = dataclasses.replace(decision, outcome=OUTCOME_PROCEEDED)
        elif decision.action is not Action.REDACT:
            return decision
        if not decision.redactions:
            return decision
        try:
            apply_to_flow(flow, match.operation.extractor, operation.prompt, decision.redactions)
        except RedactionError as exc:  # never send what could not be redacted safely
            log.warning("flow=%s op=%s redaction impossible (%s): blocked", flow.id, operation.operation_id, exc)
            return dataclasses.replace(
                decision, action=Action.BLOCK, message=REDACTION_FAILED_MESSAGE, outcome=f"blocked: {exc}"
            )
        counts = ",".join(f"{k}:{v}" for k, v in decision.redacted_counts().items())
        log.info("flow=%s redacted %s before forwarding", flow.id, counts)
        outcome = "redacted" if decision.action is Action.REDACT else f"{OUTCOME_PROCEEDED}; redacted"
        return dataclasses.replace(decision, outcome=outcome)

    def _warn_notice(self, message: str) -> str:
        minutes = max(1, round(ctx.options.promptfence_warn_window / 60))
        return (
            f"{message} To proceed anyway, send the same request again within {minutes} minute"
            f"{'s' if minutes != 1 else ''}; it will be recorded."
        )

    # -- identity: authentication before anything is forwarded -------------------------------
    async def _admit(self, flow: http.HTTPFlow) -> bool:
        if isinstance(self.identity, Gatekeeper):
            challenge: Challenge | None = await self.identity.admit(flow)
            if challenge is not None:
                flow.response = http.Response.make(challenge.status, challenge.body, dict(challenge.headers))
                return False
        return True

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Proxy credentials and trusted identity headers of an HTTPS tunnel arrive on CONNECT."""
        await self._admit(flow)

    async def _inspect(self, operation: Operation) -> Inspection:
        timeout = ctx.options.promptfence_inspect_timeout
        try:
            return await asyncio.wait_for(self.inspector.inspect(operation), timeout)
        except TimeoutError:
            return Inspection.failure("inspector", DetectorStatus.TIMEOUT, f"no answer within {timeout:g}s")
        except Exception as exc:  # any failure of the port is a recorded error, not a crash
            return Inspection.failure("inspector", DetectorStatus.UNAVAILABLE, type(exc).__name__)

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Authenticate (407 when required) and strip identity headers first, when the identity
        resolver authenticates (then the hook is awaited: password checks run off the loop);
        traffic of hosts outside the catalogue is then streamed: never buffered, never delayed."""
        if isinstance(self.identity, Gatekeeper):
            return self._admit_then_stream(flow)
        self._stream_unless_known(flow)
        return None

    async def _admit_then_stream(self, flow: http.HTTPFlow) -> None:
        if await self._admit(flow):
            self._stream_unless_known(flow)

    def _stream_unless_known(self, flow: http.HTTPFlow) -> None:
        if self.catalogue.app_for_host(flow.request.pretty_host) is None:
            flow.request.stream = True

    # -- responses ---------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Every response streams. An inspected operation's stream goes through a
        :class:`~proxy.tap.ResponseTap` that returns each chunk unchanged (no added delay) while
        its copy feeds the app's answer decoder; everything else streams straight through."""
        if flow.response is None:
            return
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and not state.recorded:
            state.tap = ResponseTap(
                new_decoder(match_flow(self.catalogue, flow)),
                flow.response.headers.get("content-encoding", ""),
                keep_copy_limit=ctx.options.promptfence_capture_bodies,
            )
            flow.response.stream = state.tap
        elif not flow.response.stream:
            flow.response.stream = True

    async def response(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and not state.recorded:
            if flow.response is not None and state.tap is not None and state.tap.copy is not None:
                flow.response.raw_content = bytes(state.tap.copy)  # for `promptfence capture` only
            await self._finish(flow, state, self._answer(flow, state))

    async def error(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and not state.recorded:
            state.notes.append("upstream error")
            await self._finish(flow, state, self._answer(flow, state))

    def _answer(self, flow: http.HTTPFlow, state: FlowState) -> Answer | None:
        """The reconstructed answer: from the tap, or (a response that was not streamed) the body."""
        if state.tap is not None:
            state.response_bytes = state.tap.response_bytes
            return state.tap.finish()
        if flow.response is None:
            return None
        state.response_bytes = len(flow.response.raw_content or b"")
        decoder = new_decoder(match_flow(self.catalogue, flow))
        if decoder is None:
            return None
        encoding = flow.response.headers.get("content-encoding", "")
        return decode_whole(decoder, flow.response.raw_content or b"", encoding)

    async def _finish(self, flow: http.HTTPFlow, state: FlowState, answer: Answer | None = None) -> None:
        state.recorded = True
        operation = state.operation
        if answer is not None and answer.conversation_id and not operation.conversation_id:
            operation = dataclasses.replace(operation, conversation_id=answer.conversation_id)
        if answer is not None:
            log.info(
                "flow=%s op=%s answer_chars=%s answer_digest=%s response_bytes=%d decode=%s",
                flow.id,
                operation.operation_id,
                "-" if answer.text is None else len(answer.text),
                "-" if answer.text is None else text_digest(answer.text),
                state.response_bytes,
                answer.error or "ok",
            )
        record = LogRecord(
            record_id=str(uuid.uuid4()),
            timestamp=time.time(),
            operation=operation,
            inspection=state.inspection,
            decision=state.decision,
            payload=Payload(
                prompt=state.operation.prompt,
                response=None if answer is None else answer.text,
                attachments=state.operation.attachments,
            ),
            response_bytes=state.response_bytes,
            response_decode_error=None if answer is None else answer.error,
        )
        try:
            await self.recorder.record(record)
        except Exception as exc:  # the recorder spools; anything escaping is reported, not raised
            log.error("flow=%s log record %s not written: %s", flow.id, record.record_id, type(exc).__name__)
