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
from dataclasses import dataclass, field
from typing import Protocol

from mitmproxy import ctx, http
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

from promptfence.core import (
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
from proxy.extraction import Extraction
from proxy.flowmap import extract, match_flow, new_decoder
from proxy.identity import ClientAddressIdentity, IdentityResolver
from proxy.tap import ResponseTap, decode_whole
from proxy.wire.base import Answer

log = logging.getLogger("promptfence.proxy")

METADATA_KEY = "promptfence"


class InspectionPort(Protocol):
    async def inspect(self, operation: Operation) -> Inspection: ...


class DecisionPort(Protocol):
    def decide(self, operation: Operation, inspection: Inspection) -> Decision: ...


class RecordPort(Protocol):
    async def record(self, record: LogRecord) -> None: ...


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
        operation = Operation(
            app=match.app.app,
            app_type=match.app.app_type,
            operation_id=match.operation.operation_id,
            kind=match.operation.kind,
            identity=self.identity.identify(flow),
            prompt=extraction.prompt,
            conversation_id=extraction.conversation_id,
            message_id=extraction.message_id,
            parent_message_id=extraction.parent_message_id,
            model=extraction.model,
            attachments=extraction.attachments,
            host=flow.request.pretty_host,
            path=flow.request.path.split("?", 1)[0],
        )
        if extract_error is not None:
            inspection = Inspection.failure("extractor", DetectorStatus.INVALID_OUTPUT, extract_error)
        elif operation.has_prompt:
            inspection = await self._inspect(operation)
        else:
            inspection = Inspection(findings=(), topics={}, runs=())
        decision = self.policy.decide(operation, inspection)
        state = FlowState(operation, inspection, decision, started)
        flow.metadata[METADATA_KEY] = state
        log.info(
            "flow=%s op=%s prompt_chars=%d prompt_digest=%s topics=%s failed=%s action=%s rules=%s",
            flow.id,
            operation.operation_id,
            len(operation.prompt),
            text_digest(operation.prompt),
            ",".join(f"{t.value}:{c.name.lower()}" for t, c in inspection.detected().items()) or "-",
            ",".join(inspection.failed_detectors) or "-",
            decision.action.value,
            ",".join(decision.rule_ids) or "-",
        )
        if decision.blocks:
            reply = BLOCK_REPLIES[match.operation.block_reply](decision.message, extraction)
            flow.response = http.Response.make(reply.status, reply.body, dict(reply.headers))
            await self._finish(flow, state)

    async def _inspect(self, operation: Operation) -> Inspection:
        timeout = ctx.options.promptfence_inspect_timeout
        try:
            return await asyncio.wait_for(self.inspector.inspect(operation), timeout)
        except TimeoutError:
            return Inspection.failure("inspector", DetectorStatus.TIMEOUT, f"no answer within {timeout:g}s")
        except Exception as exc:  # any failure of the port is a recorded error, not a crash
            return Inspection.failure("inspector", DetectorStatus.UNAVAILABLE, type(exc).__name__)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        """Traffic of hosts outside the catalogue is streamed: never buffered, never delayed."""
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
