"""Issue 16, item 1: the behaviours of the apps' real answer streams that the first fixtures lacked.

Each ``tests/fixtures/streams/<name>.body`` (synthetic text, real shape) has a ``<name>.json``
with the decoder to use and the exact answer expected: text, conversation and message ids,
completeness and the error note. Every fixture is also decoded one byte at a time and under
arbitrary chunkings (hypothesis): chunking must never change a result.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.registry import DECODERS
from proxy.tap import ResponseTap
from proxy.wire import jsonpatch
from proxy.wire.base import Answer
from proxy.wire.chatgpt import ChatGPTStreamDecoder
from proxy.wire.gemini import GeminiFrameDecoder
from proxy.wire.sse import SSEDecoder

STREAMS = Path(__file__).parent / "fixtures" / "streams"


@dataclass(frozen=True)
class StreamFixture:
    name: str
    decoder: str
    body: bytes
    expected: Answer


def _fixtures() -> list[StreamFixture]:
    found = []
    for path in sorted(STREAMS.glob("*.json")):
        spec = json.loads(path.read_text(encoding="utf-8"))
        expected = Answer(
            text=spec["text"],
            conversation_id=spec["conversation_id"],
            message_id=spec["message_id"],
            complete=spec["complete"],
            error=spec["error"],
        )
        found.append(StreamFixture(path.stem, spec["decoder"], path.with_suffix(".body").read_bytes(), expected))
    return found


FIXTURES = _fixtures()


def _decode(fixture: StreamFixture, chunks: list[bytes]) -> Answer:
    tap = ResponseTap(DECODERS[fixture.decoder]())
    for chunk in chunks:
        assert tap(chunk) == chunk  # the user's bytes pass untouched
    answer = tap.finish()
    assert answer is not None
    return answer


def _exact(answer: Answer) -> tuple[object, ...]:
    return (answer.text, answer.conversation_id, answer.message_id, answer.complete, answer.error)


def test_there_is_a_fixture_for_every_behaviour() -> None:
    names = {f.name for f in FIXTURES}
    for behaviour in (
        "chatgpt_done_without_blank_line",  # [DONE] then EOF, no blank line
        "claude_stop_without_line_end",  # the last line has no line end at all
        "chatgpt_metadata_append",  # an object appended to /message/metadata
        "chatgpt_done_while_in_progress",  # [DONE] is not completeness
        "gemini_bare_array",  # no length lines
        "gemini_error_code",  # code at [5][0]
        "gemini_trailer_without_e",  # di / af.httprm and no e frame
        "perplexity_diff_patch_fails",  # counted and noted
    ):
        assert behaviour in names


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_fixture_decodes_exactly(fixture: StreamFixture) -> None:
    assert _exact(_decode(fixture, [fixture.body])) == _exact(fixture.expected)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
def test_byte_at_a_time_gives_the_same_answer(fixture: StreamFixture) -> None:
    chunks = [fixture.body[i : i + 1] for i in range(len(fixture.body))]
    assert _exact(_decode(fixture, chunks)) == _exact(fixture.expected)


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cuts=st.lists(st.integers(0, 10**6), max_size=12))
def test_any_chunking_gives_the_same_answer(fixture: StreamFixture, cuts: list[int]) -> None:
    body = fixture.body
    points = sorted({c % (len(body) + 1) for c in cuts} | {0, len(body)})
    chunks = [body[a:b] for a, b in itertools.pairwise(points)]
    assert _exact(_decode(fixture, chunks)) == _exact(fixture.expected)


# -- the pieces behind the fixtures -------------------------------------------------------------


def test_the_sse_parser_keeps_whatwg_by_default_and_dispatches_the_pending_event_on_request() -> None:
    strict = SSEDecoder()
    assert strict.feed(b"data: [DONE]\n") == [] and strict.close() == []
    assert strict.truncated
    lenient = SSEDecoder()
    lenient.feed(b"data: a\n\nevent: x\ndata: [DONE]\n")
    events = lenient.close(dispatch_pending=True)
    assert [(e.event, e.data) for e in events] == [("x", "[DONE]")]
    assert lenient.truncated and not lenient.tail_unterminated
    cut = SSEDecoder()
    cut.feed(b'data: {"type": "mess')
    assert [e.data for e in cut.close(dispatch_pending=True)] == ['{"type": "mess']
    assert cut.tail_unterminated


def test_a_pending_event_without_data_is_not_dispatched() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\nevent: only\nid: 4\n")
    assert decoder.close(dispatch_pending=True) == []


def test_an_oversized_pending_event_stays_dropped_at_close() -> None:
    decoder = SSEDecoder(max_event=10)
    decoder.feed(b"data: " + b"x" * 50 + b"\n")
    assert decoder.close(dispatch_pending=True) == []
    assert decoder.oversized == 1


def test_a_cut_last_line_is_a_truncated_event_not_an_undecodable_one() -> None:
    body = b'event: delta_encoding\ndata: "v1"\n\nevent: delta\ndata: {"p": "", "o": "add", "v": {"mess'
    answer = _decode(StreamFixture("cut", "chatgpt.sse", body, Answer()), [body])
    assert answer.error == "stream ended without [DONE] (truncated event)"  # not "1 undecodable events"


def test_appending_an_object_to_an_object_is_a_shallow_merge() -> None:
    doc = {"m": {"a": 1, "b": {"x": 1}}}
    assert jsonpatch.apply(doc, "append", "/m", {"b": {"y": 2}, "c": 3}) == (
        {"m": {"a": 1, "b": {"y": 2}, "c": 3}},
        True,
    )
    assert jsonpatch.apply({"m": "text"}, "append", "/m", {"a": 1}) == ({"m": "text"}, False)


def test_chatgpt_counts_completion_by_the_message_not_by_done() -> None:
    fixture = next(f for f in FIXTURES if f.name == "chatgpt_done_while_in_progress")
    answer = _decode(fixture, [fixture.body])
    assert not answer.complete and answer.text is not None
    for finished in (
        '{"p": "/message/status", "o": "replace", "v": "finished_successfully"}',
        '{"p": "/message/end_turn", "o": "replace", "v": true}',
        '{"p": "/message/metadata", "o": "append", "v": {"is_complete": true}}',
    ):
        body = fixture.body.replace(b"data: [DONE]", b"event: delta\ndata: " + finished.encode() + b"\n\ndata: [DONE]")
        done = _decode(fixture, [body])
        assert done.complete and done.error is None, finished


def test_gemini_waits_for_a_bare_array_split_across_lines_and_chunks() -> None:
    fixture = next(f for f in FIXTURES if f.name == "gemini_bare_array")
    decoder = GeminiFrameDecoder()
    newline = fixture.body.index(b"\n,")
    decoder.feed(fixture.body[: newline + 1])  # the first line of the array, nothing else yet
    decoder.feed(fixture.body[newline + 1 :])
    answer = decoder.close()
    assert answer.text == fixture.expected.text and answer.error is None


def test_gemini_error_with_details_still_reads_the_detailed_code() -> None:
    detail = b'[["wrb.fr",null,null,null,null,[3,null,[["type.googleapis.com/x.BardErrorInfo",[1037]]]]]]'
    body = b")]}'\n\n" + detail + b"\n"
    answer = _decode(StreamFixture("e", "gemini.frames", body, Answer()), [body])
    assert answer.error == "the app reported error code 1037" and not answer.complete


def test_unknown_event_shapes_are_counted_but_are_not_errors_of_the_answer() -> None:
    fixture = next(f for f in FIXTURES if f.name == "chatgpt_done_without_blank_line")
    body = b'data: {"type": "something_new", "x": 1}\n\n' + fixture.body
    answer = _decode(fixture, [body])
    assert _exact(answer) == _exact(fixture.expected)
    assert answer.unknown_shapes == 1
    assert ChatGPTStreamDecoder().close().unknown_shapes == 0
