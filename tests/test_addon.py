"""The addon with mitmproxy's own test helpers (taddons / tflow) and stand-in ports."""

from __future__ import annotations

import asyncio
import json

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from policies.policy import load_policies
from promptfence.core import (
    Action,
    DetectorRun,
    DetectorStatus,
    Finding,
    Inspection,
    Operation,
    Topic,
)
from proxy.addon import METADATA_KEY, PromptFenceAddon
from proxy.catalogue import load_catalogue
from tests.support.addon import ListRecorder, chatgpt_flow

PII_INSPECTION = Inspection(
    findings=(Finding("presidio", "pii.US_SSN", Topic.PII, 0.9, None, "rule US_SSN"),),
    topics={Topic.PII: 0.9},
    runs=(DetectorRun("presidio", DetectorStatus.OK, 3.0),),
)
CLEAN_INSPECTION = Inspection(findings=(), topics={}, runs=(DetectorRun("presidio", DetectorStatus.OK, 2.0),))


class FakeInspector:
    def __init__(self, result: Inspection | Exception, delay: float = 0.0) -> None:
        self.result = result
        self.delay = delay
        self.seen: list[Operation] = []

    async def inspect(self, operation: Operation) -> Inspection:
        self.seen.append(operation)
        await asyncio.sleep(self.delay)
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def _addon(inspector: FakeInspector) -> tuple[PromptFenceAddon, ListRecorder]:
    recorder = ListRecorder()
    return PromptFenceAddon(load_catalogue(), inspector, load_policies([]), recorder), recorder


def _prompt_body(text: str) -> bytes:
    return json.dumps(
        {
            "action": "next",
            "conversation_id": "c-42",
            "messages": [
                {"id": "m-1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
            ],
        }
    ).encode()


async def test_pii_prompt_is_blocked_with_the_chatgpt_notice() -> None:
    inspector = FakeInspector(PII_INSPECTION)
    addon, recorder = _addon(inspector)
    with taddons.context(addon):
        flow = chatgpt_flow(_prompt_body("my ssn is 219-09-9999"))
        await addon.request(flow)
    assert inspector.seen[0].prompt == "my ssn is 219-09-9999"
    assert inspector.seen[0].conversation_id == "c-42"
    assert flow.response is not None and flow.response.status_code == 200
    assert flow.response.headers["X-PromptFence"] == "blocked"
    assert flow.response.headers["Content-Type"].startswith("text/event-stream")
    first = json.loads(flow.response.text.split("\n")[0].removeprefix("data: "))
    assert first["conversation_id"] == "c-42"
    assert "PII" in first["message"]["content"]["parts"][0]
    assert [r.decision.action for r in recorder.records] == [Action.BLOCK]
    assert recorder.records[0].payload.prompt == "my ssn is 219-09-9999"


async def test_clean_prompt_is_recorded_before_it_goes_upstream_and_completed_by_the_answer() -> None:
    addon, recorder = _addon(FakeInspector(CLEAN_INSPECTION))
    with taddons.context(addon):
        flow = chatgpt_flow(_prompt_body("write a haiku"))
        await addon.request(flow)
        assert flow.response is None
        # Durable before forwarding: a crash from here on loses at most the answer.
        assert [r.answer_status for r in recorder.records] == ["pending"]
        assert recorder.records[0].payload.prompt == "write a haiku"
        pending_id = recorder.records[0].record_id
        flow.response = tflow.tresp(content=b"data: [DONE]\n\n")
        addon.responseheaders(flow)
        assert callable(flow.response.stream)
        assert flow.response.stream(b"chunk-1") == b"chunk-1"  # passes through untouched
        await addon.response(flow)
    assert [r.decision.action for r in recorder.records] == [Action.ALLOW]
    assert recorder.records[0].record_id == pending_id
    assert recorder.records[0].answer_status == "complete"
    assert recorder.records[0].response_bytes == len(b"chunk-1")


@pytest.mark.parametrize(
    ("inspector", "status"),
    [
        (FakeInspector(ConnectionRefusedError()), DetectorStatus.UNAVAILABLE),
        (FakeInspector(CLEAN_INSPECTION, delay=2.0), DetectorStatus.TIMEOUT),
    ],
)
async def test_inspector_failure_fails_closed_under_the_default_policy(
    inspector: FakeInspector, status: DetectorStatus
) -> None:
    addon, recorder = _addon(inspector)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_inspect_timeout=0.2)
        flow = chatgpt_flow(_prompt_body("anything"))
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    record = recorder.records[0]
    assert record.inspection.runs[0].status is status
    assert record.inspection.failed_detectors == ("inspector",)
    assert record.decision.rule_ids == ("default:on_error",)


@pytest.mark.parametrize("body", [b"", b"{not json", b"[1,2,3]", b'{"messages": 7}', b"\xff\xfe\x00"])
async def test_undecodable_body_is_recorded_and_decided_by_on_error(body: bytes) -> None:
    inspector = FakeInspector(CLEAN_INSPECTION)
    addon, recorder = _addon(inspector)
    with taddons.context(addon):
        flow = chatgpt_flow(body)
        await addon.request(flow)
    assert inspector.seen == []
    assert recorder.records[0].inspection.runs[0].detector == "extractor"
    assert recorder.records[0].decision.action is Action.BLOCK


async def test_other_hosts_are_not_touched() -> None:
    inspector = FakeInspector(PII_INSPECTION)
    addon, recorder = _addon(inspector)
    with taddons.context(addon):
        flow = chatgpt_flow(_prompt_body("my ssn is 219-09-9999"))
        flow.request.host = "example.org"
        flow.client_conn.sni = "example.org"
        flow.request.headers["Host"] = "example.org"
        addon.requestheaders(flow)
        await addon.request(flow)
        assert flow.response is None and METADATA_KEY not in flow.metadata
        flow.response = tflow.tresp()
        addon.responseheaders(flow)
        assert flow.response.stream is True  # streamed straight through, never buffered
    assert inspector.seen == [] and recorder.records == []


async def test_non_prompt_operations_of_the_app_are_not_inspected() -> None:
    inspector = FakeInspector(PII_INSPECTION)
    addon, recorder = _addon(inspector)
    with taddons.context(addon):
        flow = chatgpt_flow(b"", path="/backend-api/models")
        flow.request.method = "GET"
        await addon.request(flow)
    assert inspector.seen == [] and recorder.records == [] and flow.response is None


async def test_resolve_pins_change_the_upstream_address_only_for_pinned_hosts() -> None:
    addon, _ = _addon(FakeInspector(CLEAN_INSPECTION))
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_resolve="chatgpt.com=127.0.0.1:9443")
        pinned = connection.Server(address=("chatgpt.com", 443))
        other = connection.Server(address=("example.org", 443))
        for server in (pinned, other):
            addon.server_connect(server_hooks.ServerConnectionHookData(server=server, client=tflow.tclient_conn()))
    assert pinned.address == ("127.0.0.1", 9443)
    assert other.address == ("example.org", 443)
