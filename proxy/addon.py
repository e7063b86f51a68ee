"""The PromptFence mitmproxy addon: map, inspect, decide, enforce, record.

The addon only knows the *ports* it is given (an inspector, a policy, a recorder): the proxy
package maps flows to operations and enforces decisions, and the CLI wires in the concrete
inspector client, policy set and log store. That keeps this package free of model, policy and
database code and makes it testable with mitmproxy's own ``taddons``/``tflow`` helpers.

What this module may write to plain logs: flow ids, app and operation ids, sizes, digests,
actions. Never prompt or response text.
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from mitmproxy import connection, ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from promptfence.core import (
    Action,
    Decision,
    DetectorStatus,
    Inspection,
    LogRecord,
    Operation,
    OperationKind,
    Payload,
)
from promptfence.errors import RecordNotDurable
from proxy.block_reply import BLOCK_REPLIES
from proxy.catalogue import Catalogue, Match
from proxy.coaching import WarnLedger
from proxy.drift import DriftMonitor
from proxy.extraction import Extraction
from proxy.flowmap import (
    INVALID_UNICODE_NOTE,
    extract,
    has_invalid_code_points,
    match_flow,
    new_decoder,
    operation_of,
    route,
    scrub,
)
from proxy.identity import Challenge, ClientAddressIdentity, Gatekeeper, IdentityResolver
from proxy.inspection_call import InspectionPort, inspect_within
from proxy.justification import PREFIX as JUSTIFICATION_PREFIX
from proxy.justification import split_justification
from proxy.redaction import RedactionError, apply_to_flow
from proxy.tap import ResponseTap, decode_whole
from proxy.wire.base import Answer

log = logging.getLogger("promptfence.proxy")

METADATA_KEY = "promptfence"
OUTCOME_WARNED = "stopped with warning"
OUTCOME_PROCEEDED = "proceeded after warning"
OUTCOME_JUSTIFIED = "proceeded with justification"
UNRECORDABLE_MESSAGE = (
    "PromptFence blocked this request: the audit log cannot record it right now, and this "
    "organisation does not let prompts through unrecorded. Try again shortly."
)
GUARD_FAILED_MESSAGE = "PromptFence could not check this request, so it was not sent. Try again shortly."
MISDIRECTED_MESSAGE = (
    "PromptFence refused this request: the host it names does not match the connection it was sent on."
)
REDACTION_FAILED_MESSAGE = (
    "PromptFence blocked this request: it contains data that must be redacted, and this request "
    "cannot be rewritten safely. Remove the sensitive data and try again."
)


OTHER_FIELDS_SEPARATOR = "\n\n"


def _relocate(inspection: Inspection, prompt_chars: int) -> Inspection:
    """Findings past the prompt were in other request fields: no span, and they say so."""
    findings = tuple(
        f
        if f.span is None or f.span.end <= prompt_chars
        else dataclasses.replace(f, span=None, explanation=f"{f.explanation} (in other request fields)")
        for f in inspection.findings
    )
    note = "other request fields inspected with the prompt"
    return dataclasses.replace(inspection, findings=findings, notes=(*inspection.notes, note))


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
    record_id: str = ""
    timestamp: float = 0.0
    host: str | None = None  # the catalogue host the request was routed to
    sealed_prompt: str = field(default="", repr=False)  # what the record seals, when more than the prompt
    response_bytes: int = 0
    recorded: bool = False  # True once nothing more is to be written for this flow
    notes: list[str] = field(default_factory=list)
    tap: ResponseTap | None = None  # the answer decoder's copy of the response stream
    justification: str | None = field(default=None, repr=False)  # the reason given past a warn, sealed


class PromptFenceAddon:
    def __init__(
        self,
        catalogue: Catalogue,
        inspector: InspectionPort,
        policy: DecisionPort,
        recorder: RecordPort,
        identity: IdentityResolver | None = None,
        drift: DriftMonitor | None = None,
    ) -> None:
        self.catalogue = catalogue
        self.identity = identity or ClientAddressIdentity()
        self.drift = drift or DriftMonitor()  # the wire-format drift alarm (proxy/drift.py)
        self.inspector = inspector
        self.policy = policy
        self.recorder = recorder
        self.warnings = WarnLedger()
        # CONNECT target of each client connection: the tunnel, not the Host header, names the app.
        self._tunnels: dict[str, str] = {}

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
            "promptfence_timeout_uninspectable_chars",
            int,
            65536,
            "A prompt at least this long whose inspection times out is uninspectable (on_uninspectable "
            "decides), not an inspector failure (on_error).",
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
        """Fail closed: an exception escaping a hook would make mitmproxy forward the request."""
        if flow.response is not None or flow.request.method == "CONNECT":
            return
        try:
            await self._guard(flow)
        except Exception as exc:
            log.error("flow=%s guard failed (%s): request not forwarded", flow.id, type(exc).__name__)
            flow.response = http.Response.make(
                503, GUARD_FAILED_MESSAGE.encode(), {"Content-Type": "text/plain; charset=utf-8", "X-PromptFence": "error"}
            )

    def _route(self, flow: http.HTTPFlow) -> str | None:
        """The catalogue host of this request, or None; a misdirected request gets a 421 reply."""
        decided = route(self.catalogue, flow, self._tunnels.get(flow.client_conn.id))
        if decided.conflict is not None:
            log.warning("flow=%s refused as misdirected: %s", flow.id, decided.conflict)
            flow.response = http.Response.make(
                421, MISDIRECTED_MESSAGE.encode(), {"Content-Type": "text/plain; charset=utf-8", "X-PromptFence": "misdirected"}
            )
            return None
        return decided.host

    async def _guard(self, flow: http.HTTPFlow) -> None:
        host = self._route(flow)
        if host is None:
            return
        match = self.catalogue.match(host, flow.request.method, flow.request.path)
        if match is None or not match.operation.inspect:
            return
        unknown = match.operation.kind is OperationKind.UNKNOWN
        if unknown and not flow.request.raw_content:
            return  # no body: nothing is sent to the app on an unmapped path
        started = time.monotonic()
        extraction, uninspectable = self._extract(flow, match)
        operation = operation_of(
            flow, match, extraction, self.identity.identify(flow), extraction.conversation_id, host
        )
        self._count_drift(match, operation, extraction, uninspectable)
        if uninspectable is not None:
            inspection = Inspection.failure("extractor", DetectorStatus.UNINSPECTABLE, uninspectable)
        elif unknown and not operation.has_prompt:
            return  # an unmapped request with no text in it (binary, empty JSON): passes unrecorded
        elif operation.has_prompt or extraction.other_text:
            inspection = await self._inspect(operation, extraction.other_text)
        else:
            inspection = Inspection(findings=(), topics={}, runs=())
        if has_invalid_code_points(extraction.prompt):
            inspection = dataclasses.replace(inspection, notes=(*inspection.notes, INVALID_UNICODE_NOTE))
        decision = self._enforce(flow, match, operation, self.policy.decide(operation, inspection))
        state = FlowState(operation, inspection, decision, started, str(uuid.uuid4()), time.time(), host)
        if decision.outcome.startswith(OUTCOME_JUSTIFIED):
            state.justification = split_justification(operation.prompt).reason
        if extraction.other_text:
            state.sealed_prompt = operation.prompt + OTHER_FIELDS_SEPARATOR + extraction.other_text
        flow.metadata[METADATA_KEY] = state
        log.info(
            "flow=%s op=%s prompt_chars=%d topics=%s failed=%s action=%s rules=%s outcome=%s",
            flow.id,
            operation.operation_id,
            len(operation.prompt),
            ",".join(f"{t.value}:{c.name.lower()}" for t, c in inspection.detected().items()) or "-",
            ",".join(inspection.failed_detectors) or "-",
            decision.action.value,
            ",".join(decision.rule_ids) or "-",
            decision.outcome or "-",
        )
        stops = decision.blocks or decision.outcome == OUTCOME_WARNED
        if not await self._record_decision(flow, state, forwarded=not stops):
            stops = True
        if stops:
            state.recorded = True  # the decision-time record is the whole record
            decision = state.decision
            message = decision.message if decision.blocks else self._warn_notice(decision)
            reply = BLOCK_REPLIES[match.operation.block_reply](message, extraction)
            headers = dict(reply.headers)
            if not decision.blocks:
                headers["X-PromptFence"] = "warned"
            flow.response = http.Response.make(reply.status, reply.body, headers)

    def _count_drift(
        self, match: Match, operation: Operation, extraction: Extraction, uninspectable: str | None
    ) -> None:
        """Tell the drift alarm what this request showed: an unmapped request with text, an
        extractor that failed on the body, or a prompt operation whose body held text where the
        extractor found no prompt (the app moved it); never raises into the request."""
        try:
            app, op = match.app.app, match.operation.operation_id
            if match.operation.kind is OperationKind.UNKNOWN:
                if operation.has_prompt or uninspectable is not None:
                    self.drift.unmapped(app, op)
                return
            if match.operation.extractor is None:
                return
            failed = uninspectable is not None and uninspectable.startswith("could not decode request")
            moved = (
                match.operation.kind is OperationKind.SEND_PROMPT
                and not operation.has_prompt
                and not extraction.attachments
                and bool(extraction.other_text)
            )
            self.drift.request(app, op, extracted=not (failed or moved))
        except Exception as exc:  # counting must never cost the request
            log.error("drift count failed (%s)", type(exc).__name__)

    async def _record_decision(self, flow: http.HTTPFlow, state: FlowState, *, forwarded: bool) -> bool:
        """Write the record before anything is forwarded. False when it could not be made
        durable and the recorder says not to forward (``logs.on_unrecordable: block``): the
        decision then becomes a block, and the request is never sent unrecorded."""
        record = self._record_of(state, None, "pending" if forwarded else "none")
        try:
            await self.recorder.record(record)
            return True
        except RecordNotDurable as exc:
            reason = str(exc)
        except Exception as exc:  # a recorder that fails in an unexpected way is not durable either
            reason = type(exc).__name__
        log.error("flow=%s record %s not durable (%s): request not forwarded", flow.id, state.record_id, reason)
        state.decision = dataclasses.replace(
            state.decision, action=Action.BLOCK, message=UNRECORDABLE_MESSAGE, outcome=f"blocked: log not durable ({reason})"
        )
        return False

    # -- warn and redact: what a decision means for this request (evaluation stays pure) ------
    def _enforce(self, flow: http.HTTPFlow, match: Match, operation: Operation, decision: Decision) -> Decision:
        if decision.action is Action.WARN:
            proceeded = self._warned_resend(operation, decision)
            if proceeded is None:
                return dataclasses.replace(decision, outcome=OUTCOME_WARNED)
            decision = dataclasses.replace(decision, outcome=proceeded)
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
        outcome = "redacted" if decision.action is Action.REDACT else f"{decision.outcome}; redacted"
        return dataclasses.replace(decision, outcome=outcome)

    def _warned_resend(self, operation: Operation, decision: Decision) -> str | None:
        """The outcome when this warned request may proceed (a resend within the window, with a
        reason where the rule requires one); None: stop it with the notice. The ledger matches
        on the request without its ``Justification:`` line (proxy/justification.py), so the
        resend with a reason is the same request as the first send without one."""
        window = ctx.options.promptfence_warn_window
        if not decision.justification_required:
            return OUTCOME_PROCEEDED if self.warnings.resend(operation, window) else None
        justified = split_justification(operation.prompt)
        keyed = dataclasses.replace(operation, prompt=justified.prompt)
        if justified.reason is None:
            # A resend without a reason is warned again and must not use up the first send's
            # place: the ledger entry it consumed is put back.
            if self.warnings.resend(keyed, window):
                self.warnings.resend(keyed, window)
            return None
        return OUTCOME_JUSTIFIED if self.warnings.resend(keyed, window) else None

    def _warn_notice(self, decision: Decision) -> str:
        minutes = max(1, round(ctx.options.promptfence_warn_window / 60))
        within = f"within {minutes} minute{'s' if minutes != 1 else ''}"
        if decision.justification_required:
            return (
                f"{decision.message} To proceed, send the same request again {within} with a line starting "
                f"'{JUSTIFICATION_PREFIX}' that says why you need to; your reason is recorded with the request."
            )
        return f"{decision.message} To proceed anyway, send the same request again {within}; it will be recorded."

    # -- identity: authentication before anything is forwarded -------------------------------
    async def _admit(self, flow: http.HTTPFlow) -> bool:
        if isinstance(self.identity, Gatekeeper):
            challenge: Challenge | None = await self.identity.admit(flow)
            if challenge is not None:
                flow.response = http.Response.make(challenge.status, challenge.body, dict(challenge.headers))
                return False
        return True

    async def http_connect(self, flow: http.HTTPFlow) -> None:
        """Proxy credentials and trusted identity headers of an HTTPS tunnel arrive on CONNECT;
        the CONNECT target is remembered: it names the app of every request in the tunnel."""
        try:
            self._tunnels[flow.client_conn.id] = flow.request.host
            await self._admit(flow)
        except Exception as exc:  # never let a tunnel open because a check raised
            log.error("flow=%s CONNECT check failed (%s): refused", flow.id, type(exc).__name__)
            flow.response = http.Response.make(403, GUARD_FAILED_MESSAGE.encode(), {"X-PromptFence": "error"})

    def client_disconnected(self, client: connection.Client) -> None:
        self._tunnels.pop(client.id, None)

    def done(self) -> None:
        self.drift.write_state()  # the last counters, for `promptfence apps status`

    async def _inspect(self, operation: Operation, other_text: str = "") -> Inspection:
        """The inspector's answer, or a failure that says which kind and how long it took.

        ``other_text`` (body fields the app's extractor did not take as the prompt) is inspected
        after the prompt; evidence found there keeps no span (it cannot be redacted in place)."""
        inspected = operation
        if other_text:
            inspected = dataclasses.replace(operation, prompt=operation.prompt + OTHER_FIELDS_SEPARATOR + other_text)
        inspection = await inspect_within(
            self.inspector,
            inspected,
            ctx.options.promptfence_inspect_timeout,
            uninspectable_chars=ctx.options.promptfence_timeout_uninspectable_chars,
        )
        return _relocate(inspection, len(operation.prompt)) if other_text else inspection

    def requestheaders(self, flow: http.HTTPFlow) -> Coroutine[Any, Any, None] | None:
        """Authenticate (407 when required) and strip identity headers first, when the identity
        resolver authenticates (then the hook is awaited: password checks run off the loop);
        traffic of hosts outside the catalogue is then streamed: never buffered, never delayed."""
        if isinstance(self.identity, Gatekeeper):
            return self._admit_then_stream(flow)
        self._stream_unless_known(flow)
        return None

    async def _admit_then_stream(self, flow: http.HTTPFlow) -> None:
        try:
            admitted = await self._admit(flow)
        except Exception as exc:  # a credential check that raises is a refusal, never a pass
            log.error("flow=%s identity check failed (%s): refused", flow.id, type(exc).__name__)
            flow.response = http.Response.make(403, GUARD_FAILED_MESSAGE.encode(), {"X-PromptFence": "error"})
            return
        if admitted:
            self._stream_unless_known(flow)

    def _stream_unless_known(self, flow: http.HTTPFlow) -> None:
        """Only traffic no name of which is a catalogue host streams (unbuffered, uninspected)."""
        decided = route(self.catalogue, flow, self._tunnels.get(flow.client_conn.id))
        if decided.host is None and decided.conflict is None:
            flow.request.stream = True

    # -- responses ---------------------------------------------------------------------------
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """Every response streams. An inspected operation's stream goes through a
        :class:`~proxy.tap.ResponseTap` that returns each chunk unchanged (no added delay) while
        its copy feeds the app's answer decoder; everything else streams straight through."""
        if flow.response is None:
            return
        state = flow.metadata.get(METADATA_KEY)
        try:
            if isinstance(state, FlowState) and not state.recorded:
                state.tap = ResponseTap(
                    new_decoder(match_flow(self.catalogue, flow, state.host)),
                    flow.response.headers.get("content-encoding", ""),
                    keep_copy_limit=ctx.options.promptfence_capture_bodies,
                )
                flow.response.stream = state.tap
            elif not flow.response.stream:
                flow.response.stream = True
        except Exception as exc:  # the answer still reaches the user; only our copy is lost
            log.error("flow=%s answer tap not set up (%s)", flow.id, type(exc).__name__)
            flow.response.stream = True

    async def response(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and not state.recorded:
            if flow.response is not None and state.tap is not None and state.tap.copy is not None:
                flow.response.raw_content = bytes(state.tap.copy)  # for `promptfence capture` only
            await self._complete(flow, state, "complete")

    async def error(self, flow: http.HTTPFlow) -> None:
        state = flow.metadata.get(METADATA_KEY)
        if isinstance(state, FlowState) and not state.recorded:
            state.notes.append("upstream error")
            await self._complete(flow, state, "upstream_error")

    def _answer(self, flow: http.HTTPFlow, state: FlowState) -> Answer | None:
        """The reconstructed answer: from the tap, or (a response that was not streamed) the body."""
        if state.tap is not None:
            state.response_bytes = state.tap.response_bytes
            return state.tap.finish()
        if flow.response is None:
            return None
        state.response_bytes = len(flow.response.raw_content or b"")
        decoder = new_decoder(match_flow(self.catalogue, flow, state.host))
        if decoder is None:
            return None
        encoding = flow.response.headers.get("content-encoding", "")
        return decode_whole(decoder, flow.response.raw_content or b"", encoding)

    def _record_of(self, state: FlowState, answer: Answer | None, answer_status: str) -> LogRecord:
        operation = state.operation
        if answer is not None and answer.conversation_id and not operation.conversation_id:
            operation = dataclasses.replace(operation, conversation_id=scrub(answer.conversation_id))
        return LogRecord(
            record_id=state.record_id,
            timestamp=state.timestamp,
            operation=operation,
            inspection=state.inspection,
            decision=state.decision,
            payload=Payload(
                prompt=state.sealed_prompt or state.operation.prompt,
                response=None if answer is None or answer.text is None else scrub(answer.text),
                attachments=state.operation.attachments,
                justification=state.justification,
            ),
            response_bytes=state.response_bytes,
            response_decode_error=None if answer is None else answer.error,
            answer_status=answer_status,
        )

    async def _complete(self, flow: http.HTTPFlow, state: FlowState, answer_status: str) -> None:
        """The answer ended (or broke off): complete the decision-time record with it."""
        state.recorded = True
        try:
            answer = self._answer(flow, state)
        except Exception as exc:  # a broken decoder costs the answer's copy, never the record
            log.error("flow=%s answer not decoded (%s)", flow.id, type(exc).__name__)
            answer = Answer(error=f"decoder failed: {type(exc).__name__}")
        if answer is not None and answer_status == "complete":
            self.drift.answer(
                state.operation.app,
                state.operation.operation_id,
                decoded=answer.text is not None and answer.error is None,
                unknown_shapes=answer.unknown_shapes,
            )
        if answer is not None:
            log.info(
                "flow=%s op=%s answer_chars=%s response_bytes=%d decode=%s",
                flow.id,
                state.operation.operation_id,
                "-" if answer.text is None else len(answer.text),
                state.response_bytes,
                answer.error or "ok",
            )
        record = self._record_of(state, answer, answer_status)
        try:
            await self.recorder.complete(record)
        except Exception as exc:  # the recorder spools; anything escaping is reported, not raised
            log.error("flow=%s log record %s not completed: %s", flow.id, record.record_id, type(exc).__name__)
