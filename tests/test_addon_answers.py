"""The addon's response side with mitmproxy's own helpers: the tap streams, the record gets the answer."""

from __future__ import annotations

import gzip

import pytest
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from promptfence.core import (
    Action,
    Decision,
    DetectorRun,
    DetectorStatus,
    Inspection,
    LogRecord,
    Operation,
)
from proxy.addon import METADATA_KEY, PromptFenceAddon
from proxy.catalogue import load_catalogue
from proxy.tap import ResponseTap
from tests.support.addon import ListRecorder
from tests.support.fixtures import WireFixture, load_fixtures

CLEAN = Inspection(findings=(), topics={}, runs=(DetectorRun("fake", DetectorStatus.OK, 1.0),))
SEND_PROMPTS = [f for f in load_fixtures() if f.expected["answer"] is not None]


class CleanInspector:
    async def inspect(self, operation: Operation) -> Inspection:
        return CLEAN


class AllowAll:
    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        return Decision(Action.ALLOW, (), "test")


def _flow(fixture: WireFixture) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request.host = fixture.host
    flow.client_conn.sni = fixture.host
    flow.request.port = 443
    flow.request.scheme = "https"
    flow.request.method = fixture.method
    flow.request.path = fixture.path
    flow.request.headers.clear()
    flow.request.headers["Host"] = fixture.host
    for key, value in fixture.headers.items():
        flow.request.headers[key] = value
    flow.request.content = fixture.body
    return flow


async def _run(
    fixture: WireFixture, body: bytes, *, encoding: str = "", chunk: int = 7, stream: bool = True
) -> tuple[http.HTTPFlow, LogRecord, bytes]:
    recorder = ListRecorder()
    addon = PromptFenceAddon(load_catalogue(), CleanInspector(), AllowAll(), recorder)
    with taddons.context(addon):
        flow = _flow(fixture)
        await addon.request(flow)
        assert flow.response is None  # allowed: goes upstream
        headers = dict(fixture.response_headers)
        if encoding:
            headers["content-encoding"] = encoding
        flow.response = http.Response.make(200, body, headers)
        passed = b""
        if stream:
            addon.responseheaders(flow)
            assert isinstance(flow.response.stream, ResponseTap)
            for i in range(0, len(body), chunk):
                piece = body[i : i + chunk]
                out = flow.response.stream(piece)
                assert out is piece  # the very same bytes object: untouched, nothing buffered
                passed += out
            assert flow.response.stream(b"") == b""
            # Written before forwarding; the answer completes it once the stream ends.
            assert [r.answer_status for r in recorder.records] == ["pending"]
            assert recorder.records[0].payload.response is None
        await addon.response(flow)
    assert len(recorder.records) == 1
    return flow, recorder.records[0], passed


@pytest.mark.parametrize("fixture", SEND_PROMPTS, ids=[f.id for f in SEND_PROMPTS])
async def test_streamed_answer_goes_into_the_record(fixture: WireFixture) -> None:
    assert fixture.response is not None
    _, record, passed = await _run(fixture, fixture.response)
    expected = fixture.expected["answer"]
    assert passed == fixture.response
    assert record.payload.response == expected["text"]
    assert record.response_decode_error is None
    assert record.response_bytes == len(fixture.response)
    # The conversation id comes from the request, or from the stream when the request had none.
    request_cid = fixture.expected["extraction"]["conversation_id"]
    assert record.operation.conversation_id == (request_cid or expected["conversation_id"])
    assert record.metadata()["response_chars"] == len(expected["text"])


async def test_gzip_answer_is_decoded_in_the_tap() -> None:
    fixture = next(f for f in SEND_PROMPTS if f.id == "chatgpt/send_prompt")
    assert fixture.response is not None
    wire = gzip.compress(fixture.response)
    _, record, passed = await _run(fixture, wire, encoding="gzip", chunk=5)
    assert passed == wire
    assert record.payload.response == "Paris is the capital of France."
    assert record.operation.conversation_id == "c-0002"


async def test_truncated_answer_passes_and_is_recorded_as_not_decoded() -> None:
    fixture = next(f for f in SEND_PROMPTS if f.id == "claude/send_prompt")
    assert fixture.response is not None
    cut = fixture.response[: len(fixture.response) // 2] + b"\x00\xff{garbage"
    _, record, passed = await _run(fixture, cut)
    assert passed == cut
    assert record.response_decode_error is not None
    assert record.metadata()["response_decode_error"] == record.response_decode_error
    assert record.decision.action is Action.ALLOW


async def test_unstreamed_response_is_decoded_from_the_body() -> None:
    fixture = next(f for f in SEND_PROMPTS if f.id == "gemini/send_prompt")
    assert fixture.response is not None
    flow, record, _ = await _run(fixture, fixture.response, stream=False)
    assert record.payload.response == "Paris is the capital of France."
    assert record.response_bytes == len(fixture.response)
    assert flow.metadata[METADATA_KEY].recorded


async def test_capture_option_keeps_a_copy_of_the_answer_for_the_recorded_flow() -> None:
    fixture = next(f for f in SEND_PROMPTS if f.id == "perplexity/send_prompt")
    assert fixture.response is not None
    recorder = ListRecorder()
    addon = PromptFenceAddon(load_catalogue(), CleanInspector(), AllowAll(), recorder)
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_capture_bodies=1 << 20)
        flow = _flow(fixture)
        await addon.request(flow)
        flow.response = http.Response.make(200, b"", dict(fixture.response_headers))
        addon.responseheaders(flow)
        assert callable(flow.response.stream)
        flow.response.stream(fixture.response)
        await addon.response(flow)
    assert flow.response.raw_content == fixture.response
    assert recorder.records[0].payload.response == fixture.expected["answer"]["text"]
