"""The addon with mitmproxy's own test helpers (taddons / tflow) and stand-in ports."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from mitmproxy import connection
from mitmproxy.proxy import server_hooks
from mitmproxy.test import taddons, tflow

from policies.policy import load_policies
from promptfence.core import (
    Action,
    Decision,
    DetectorRun,
    DetectorStatus,
    Finding,
    Inspection,
    LogRecord,
    Operation,
    Topic,
)
from promptfence.errors import RecordNotDurable
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
async def test_undecodable_body_is_recorded_and_decided_by_on_uninspectable(body: bytes) -> None:
    inspector = FakeInspector(CLEAN_INSPECTION)
    addon, recorder = _addon(inspector)
    with taddons.context(addon):
        flow = chatgpt_flow(body)
        await addon.request(flow)
    assert inspector.seen == []
    assert recorder.records[0].inspection.runs[0].detector == "extractor"
    assert recorder.records[0].inspection.runs[0].status is DetectorStatus.UNINSPECTABLE
    assert recorder.records[0].decision.action is Action.BLOCK
    assert recorder.records[0].decision.rule_ids == ("default:on_uninspectable",)


FAIL_OPEN = """\
policy: fail-open
default: allow
on_error: allow
"""


def _fail_open_addon(inspector: FakeInspector, tmp_path: Path) -> tuple[PromptFenceAddon, ListRecorder]:
    (tmp_path / "fail-open.yaml").write_text(FAIL_OPEN)
    recorder = ListRecorder()
    policies = load_policies([tmp_path / "fail-open.yaml"])
    return PromptFenceAddon(load_catalogue(), inspector, policies, recorder), recorder


async def test_a_long_prompt_that_times_out_is_uninspectable_not_fail_open(tmp_path: Path) -> None:
    slow = Inspection(
        findings=(), topics={}, runs=(DetectorRun("presidio", DetectorStatus.TIMEOUT, 5000.0, "deadline"),)
    )
    addon, recorder = _fail_open_addon(FakeInspector(slow), tmp_path)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_timeout_uninspectable_chars=1000)
        short = chatgpt_flow(_prompt_body("short prompt"))
        await addon.request(short)
        assert short.response is None  # a slow model on a short prompt: on_error (allow) decides
        long = chatgpt_flow(_prompt_body("x " * 1000))
        await addon.request(long)
    assert long.response is not None and long.response.headers["X-PromptFence"] == "blocked"
    assert recorder.records[-1].inspection.runs[0].status is DetectorStatus.UNINSPECTABLE
    assert recorder.records[-1].decision.rule_ids == ("fail-open:on_uninspectable",)


async def test_a_long_prompt_whose_whole_inspection_times_out_is_uninspectable(tmp_path: Path) -> None:
    addon, recorder = _fail_open_addon(FakeInspector(CLEAN_INSPECTION, delay=2.0), tmp_path)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_inspect_timeout=0.1, promptfence_timeout_uninspectable_chars=1000)
        flow = chatgpt_flow(_prompt_body("y " * 1000))
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    run = recorder.records[0].inspection.runs[0]
    assert run.status is DetectorStatus.UNINSPECTABLE and run.elapsed_ms >= 100


class _BrokenPolicy:
    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        raise RuntimeError("policy bug")


async def test_a_hook_that_fails_answers_the_request_itself() -> None:
    addon = PromptFenceAddon(load_catalogue(), FakeInspector(CLEAN_INSPECTION), _BrokenPolicy(), ListRecorder())
    with taddons.context(addon):
        flow = chatgpt_flow(_prompt_body("hello"))
        await addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 503  # never forwarded


class _FullDiskRecorder(ListRecorder):
    async def record(self, record: LogRecord) -> None:
        raise RecordNotDurable("spool not writable: ENOSPC")


async def test_a_prompt_whose_record_is_not_durable_is_not_forwarded() -> None:
    recorder = _FullDiskRecorder()
    addon = PromptFenceAddon(load_catalogue(), FakeInspector(CLEAN_INSPECTION), load_policies([]), recorder)
    with taddons.context(addon):
        flow = chatgpt_flow(_prompt_body("a clean prompt"))
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    assert b"audit log" in (flow.response.content or b"")


async def test_a_host_header_that_contradicts_the_tunnel_is_misdirected() -> None:
    inspector = FakeInspector(CLEAN_INSPECTION)
    addon, _ = _addon(inspector)
    with taddons.context(addon):
        connect = tflow.tflow()
        connect.request.method = "CONNECT"
        connect.request.host = "chatgpt.com"
        flow = chatgpt_flow(_prompt_body("hello"))
        flow.client_conn = connect.client_conn
        flow.client_conn.sni = "chatgpt.com"
        await addon.http_connect(connect)
        flow.request.headers["Host"] = "other.example"
        addon.requestheaders(flow)
        assert not flow.request.stream  # buffered: it names a catalogue host
        await addon.request(flow)
    assert flow.response is not None and flow.response.status_code == 421
    assert inspector.seen == []


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
