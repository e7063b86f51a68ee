"""The generic layers: the WHATWG SSE parser, JSON-Pointer edits and the response tap's content decoding."""

from __future__ import annotations

import gzip
import itertools
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.tap import ResponseTap, decode_whole
from proxy.wire import jsonpatch
from proxy.wire.chatgpt import ChatGPTStreamDecoder
from proxy.wire.sse import SSEDecoder, SSEEvent
from tests.support.fixtures import load_fixtures


def _events(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    out = [e for c in chunks for e in decoder.feed(c)]
    return out + decoder.close()


@pytest.mark.parametrize(
    ("stream", "expected"),
    [
        (b"data: a\n\n", [("message", "a")]),
        (b"data: a\r\n\r\n", [("message", "a")]),
        (b"data: a\r\rdata: b\r\r", [("message", "a"), ("message", "b")]),
        (b"data:a\ndata: b\ndata\n\n", [("message", "a\nb\n")]),  # no-space, multi-line, bare field
        (b"event: delta\ndata: x\n\ndata: y\n\n", [("delta", "x"), ("message", "y")]),  # type resets
        (b": comment\n:\ndata: z\n\n", [("message", "z")]),
        (b"event: only\n\ndata: w\n\n", [("message", "w")]),  # no data: no dispatch, type reset
        (b"\xef\xbb\xbfdata: bom\n\n", [("message", "bom")]),
        (b"data:  two spaces\n\n", [("message", " two spaces")]),
        (b"data: unterminated", []),  # an incomplete event at EOF is discarded
        (b"dat\xc3\xa9: x\ndata: caf\xc3\xa9\n\n", [("message", "café")]),
        (b"retry: 10x\nid: a\x00b\ndata: r\n\n", [("message", "r")]),
    ],
)
def test_whatwg_event_stream_rules(stream: bytes, expected: list[tuple[str, str]]) -> None:
    assert [(e.event, e.data) for e in _events(stream)] == expected
    assert [(e.event, e.data) for e in _events(*[stream[i : i + 1] for i in range(len(stream))])] == expected


def test_id_and_retry_fields() -> None:
    events = _events(b"id: 7\nretry: 1500\ndata: a\n\ndata: b\n\n")
    assert [(e.id, e.retry) for e in events] == [("7", 1500), ("7", 1500)]


def test_truncation_is_reported() -> None:
    decoder = SSEDecoder()
    decoder.feed(b"data: a\n\ndata: b")
    decoder.close()
    assert decoder.truncated


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["data", "event", "id", ":"]), st.text(max_size=8)), max_size=12),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.lists(st.integers(0, 400), max_size=12),
)
def test_any_line_ending_and_chunking_gives_the_same_events(
    fields: list[tuple[str, str]], eol: str, cuts: list[int]
) -> None:
    lines = []
    for name, value in fields:
        clean = value.replace("\r", "").replace("\n", "")
        lines.append(f":{clean}" if name == ":" else f"{name}: {clean}")
        lines.append("")
    stream = eol.join(lines).encode() + eol.encode()
    whole = _events(stream)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    assert _events(*[stream[a:b] for a, b in itertools.pairwise(points)]) == whole


@pytest.mark.parametrize(
    ("doc", "op", "path", "value", "result", "ok"),
    [
        ({"a": "x"}, "append", "/a", "y", {"a": "xy"}, True),
        ({"a": [1]}, "append", "/a", [2, 3], {"a": [1, 2, 3]}, True),
        ({"a": [1, 3]}, "add", "/a/1", 2, {"a": [1, 2, 3]}, True),
        ({"a": [1]}, "add", "/a/-", 2, {"a": [1, 2]}, True),
        ({"a": {}}, "replace", "/a/b~1c", 1, {"a": {"b/c": 1}}, True),
        ({"a": "abcdef"}, "truncate", "/a", 3, {"a": "abc"}, True),
        ({"a": 1}, "remove", "/a", None, {}, True),
        ({"a": 1}, "append", "/a", "x", {"a": 1}, False),
        ({"a": [1]}, "replace", "/a/5", 2, {"a": [1]}, False),
        ("text", "add", "/x", 1, "text", False),
        ({"a": 1}, "move", "/a", 1, {"a": 1}, False),
    ],
)
def test_json_pointer_edits(doc: object, op: str, path: str, value: object, result: object, ok: bool) -> None:
    assert jsonpatch.apply(doc, op, path, value) == (result, ok)


def _chatgpt_fixture() -> bytes:
    fixture = next(f for f in load_fixtures() if f.id == "chatgpt/send_prompt")
    assert fixture.response is not None
    return fixture.response


COMPRESSORS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": lambda data: zstandard.ZstdCompressor().compress(data),
    "gzip, br": lambda data: brotli.compress(gzip.compress(data)),
}


@pytest.mark.parametrize("encoding", sorted(COMPRESSORS))
@settings(max_examples=20, deadline=None)
@given(cuts=st.lists(st.integers(0, 10**6), max_size=20))
def test_tap_decodes_content_encodings_incrementally_and_passes_bytes_untouched(encoding: str, cuts: list[int]) -> None:
    wire = COMPRESSORS[encoding](_chatgpt_fixture())
    tap = ResponseTap(ChatGPTStreamDecoder(), encoding)
    points = sorted({c % (len(wire) + 1) for c in cuts} | {0, len(wire)})
    passed = b"".join(tap(wire[a:b]) for a, b in itertools.pairwise(points)) + tap(b"")
    answer = tap.finish()
    assert passed == wire and tap.response_bytes == len(wire)
    assert answer is not None and answer.text == "Paris is the capital of France." and answer.error is None


def test_raw_deflate_is_accepted_too() -> None:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    wire = compressor.compress(_chatgpt_fixture()) + compressor.flush()
    assert decode_whole(ChatGPTStreamDecoder(), wire, "deflate").text == "Paris is the capital of France."


@pytest.mark.parametrize(("encoding", "body"), [("gzip", b"not gzip at all"), ("compress", b"x"), ("br", b"\xff" * 10)])
def test_broken_or_unknown_encoding_is_noted_and_bytes_still_pass(encoding: str, body: bytes) -> None:
    tap = ResponseTap(ChatGPTStreamDecoder(), encoding)
    assert tap(body) == body
    answer = tap.finish()
    assert answer is not None and answer.error is not None and answer.text is None


def test_decode_limit_stops_decoding_not_the_stream() -> None:
    tap = ResponseTap(ChatGPTStreamDecoder(), decode_limit=100)
    body = _chatgpt_fixture()
    assert tap(body) == body
    answer = tap.finish()
    assert answer is not None and answer.error is not None and "larger than 100 bytes" in answer.error


def test_copy_is_kept_only_within_its_limit() -> None:
    tap = ResponseTap(None, keep_copy_limit=10)
    tap(b"12345")
    assert tap.copy == bytearray(b"12345")
    tap(b"678901")
    assert tap.copy is None and tap.response_bytes == 11
