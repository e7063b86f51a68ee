"""Answer decoders on hostile streams: linear work (counted, not timed), bounds noted, bytes untouched."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from proxy import bench
from proxy.tap import ResponseTap
from proxy.wire import jsonpatch, sse
from proxy.wire.chatgpt import ChatGPTStreamDecoder
from proxy.wire.claude import ClaudeStreamDecoder
from proxy.wire.gemini import GeminiFrameDecoder
from proxy.wire.perplexity import PerplexityStreamDecoder

KiB = 1024


def _chunks(body: bytes, size: int = KiB) -> Iterator[bytes]:
    return (body[i : i + size] for i in range(0, len(body), size))


class _CountingPattern:
    """Stands in for the SSE line-end regex and counts the characters it is asked to scan."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern
        self.scanned = 0

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        self.scanned += len(text)
        return self.pattern.finditer(text)


def test_sse_scans_each_character_once_however_long_the_line(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = _CountingPattern(sse._EOL)
    monkeypatch.setattr(sse, "_EOL", counter)
    body = b"data: " + b"a" * (2 * 1024 * KiB) + b"\n\n" + b'data: {"completion":"ok"}\n\n'
    decoder = ClaudeStreamDecoder()
    for chunk in _chunks(body):
        decoder.feed(chunk)
    answer = decoder.close()
    assert counter.scanned <= len(body)  # quadratic before: every chunk rescanned the line so far
    assert answer.text == "ok"


def test_an_sse_line_over_the_bound_is_dropped_and_noted_and_the_stream_passes() -> None:
    body = b"data: " + b"a" * (200 * KiB) + b'\n\ndata: {"completion":"ok","stop_reason":"end"}\n\n'
    tap = ResponseTap(ClaudeStreamDecoder(max_event=64 * KiB))
    passed = b"".join(tap(chunk) for chunk in _chunks(body))
    answer = tap.finish()
    assert passed == body
    assert answer is not None and answer.text == "ok" and answer.complete
    assert answer.error == f"1 events over {64 * KiB} characters skipped"


def test_an_sse_event_of_many_short_data_lines_is_bounded_too() -> None:
    decoder = sse.SSEDecoder(max_event=1000)
    events = decoder.feed(b"data: x\n" * 1000 + b"\ndata: y\n\n")
    assert [e.data for e in events] == ["y"] and decoder.oversized == 1


def test_gemini_parses_a_huge_length_prefix_in_linear_work(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[int] = []
    parse = GeminiFrameDecoder._parse

    def counting(self: GeminiFrameDecoder, buf: str, final: bool) -> int:
        seen.append(len(buf))
        return parse(self, buf, final)

    monkeypatch.setattr(GeminiFrameDecoder, "_parse", counting)
    body = b")]}'\n\n999999999999\n" + b"a" * (4 * 1024 * KiB)
    decoder = GeminiFrameDecoder()
    for chunk in _chunks(body, 4 * KiB):
        decoder.feed(chunk)
    answer = decoder.close()
    assert sum(seen) <= 4 * len(body)  # each feed re-joined and re-encoded the whole buffer before
    assert answer.error == "1 undecodable frames"


def test_gemini_stops_past_its_frame_bound_and_says_so() -> None:
    body = b")]}'\n\n999999999999\n" + b"a" * (300 * KiB)
    tap = ResponseTap(GeminiFrameDecoder(max_frame=100 * KiB))
    assert b"".join(tap(chunk) for chunk in _chunks(body)) == body
    answer = tap.finish()
    assert answer is not None and answer.error is not None
    assert f"frame longer than {100 * KiB} characters: not decoded past it" in answer.error


def test_gemini_many_frames_in_one_piece_and_an_answer_after_a_wrong_length() -> None:
    from proxy.wire.gemini import answer_body, frame

    good = answer_body("hello 😀", "c_1", "r_1", "rc_1")
    noise = "".join(frame([["di", i]]) for i in range(20_000)).encode()
    body = good[:6] + noise + b"3\n[1]\n" + good[6:]  # a wrong length, then the real frames
    decoder = GeminiFrameDecoder()
    decoder.feed(body)
    answer = decoder.close()
    assert answer.text == "hello 😀"


def _chatgpt(events: int) -> bytes:
    finished = b'event: delta\ndata: {"p":"/message/status","o":"replace","v":"finished_successfully"}\n\n'
    return bench.chatgpt_append_deltas(0) + b'event: delta\ndata: {"v":"abcd"}\n\n' * events + finished + b"data: [DONE]\n\n"


def test_chatgpt_appends_build_the_text_in_parts() -> None:
    decoder = ChatGPTStreamDecoder()
    for chunk in _chunks(_chatgpt(10_000)):
        decoder.feed(chunk)
    part = jsonpatch.get(next(iter(decoder._docs.values())), "/message/content/parts/0")
    assert isinstance(part, jsonpatch.TextBuilder) and part.length == 4 * 10_001  # never copied whole
    answer = decoder.close()
    assert answer.text == "abcd" * 10_001 and answer.error is None and answer.complete


def test_chatgpt_answer_budget_cuts_and_notes() -> None:
    answer = ResponseTap_answer(ChatGPTStreamDecoder(answer_limit=4000), _chatgpt(5000))
    assert answer.text is not None and len(answer.text) == 4000
    assert answer.error == "answer longer than 4000 characters: not decoded past it"


def test_truncate_and_insert_are_charged_to_the_budget() -> None:
    doc: Any = {"a": jsonpatch.TextBuilder("x" * 100), "l": [1, 2, 3]}
    assert jsonpatch.cost(doc, "truncate", "/a") == 100
    assert jsonpatch.cost(doc, "add", "/l/0") == 3 and jsonpatch.cost(doc, "add", "/l/-") == 0
    assert jsonpatch.cost(doc, "append", "/a") == 0
    assert jsonpatch.apply(doc, "truncate", "/a", 2) == ({"a": "xx", "l": [1, 2, 3]}, True)


def ResponseTap_answer(decoder: Any, body: bytes) -> Any:
    tap = ResponseTap(decoder)
    assert b"".join(tap(chunk) for chunk in _chunks(body)) == body
    return tap.finish()


def _perplexity_event(chunks: list[str], offset: int, answer: str | None = None) -> str:
    block: dict[str, object] = {"chunks": chunks, "chunk_starting_offset": offset}
    if answer is not None:
        block["answer"] = answer
    return (
        "event: message\r\ndata: "
        + json.dumps({"blocks": [{"intended_usage": "ask_text", "markdown_block": block}]})
        + "\r\n\r\n"
    )


def test_perplexity_splices_chunks_in_place() -> None:
    decoder = PerplexityStreamDecoder()
    decoder.feed(_perplexity_event(["a"], 0).encode())
    kept = decoder._chunks["ask_text"]
    for i in range(1, 5000):
        decoder.feed(_perplexity_event([f"{i % 10}"], i).encode())
    decoder.feed(_perplexity_event(["X", "Y"], 2).encode())  # a splice replaces the tail
    assert decoder._chunks["ask_text"] is kept  # one list, extended: no copy of the prefix per event
    decoder.feed(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
    answer = decoder.close()
    assert answer.text == "a1XY" and answer.error is None


def test_perplexity_answer_budget_counts_what_is_kept_not_what_was_replaced() -> None:
    decoder = PerplexityStreamDecoder(answer_limit=100)
    for _ in range(50):  # the same 80 characters restarted at offset 0: never over 100
        decoder.feed(_perplexity_event(["x" * 40, "y" * 40], 0).encode())
    decoder.feed(_perplexity_event(["z" * 40], 2).encode())  # 120: over
    decoder.feed(b"event: end_of_stream\r\ndata: {}\r\n\r\n")
    answer = decoder.close()
    assert answer.text == "x" * 40 + "y" * 40
    assert answer.error == "answer longer than 100 characters: not decoded past it"


def test_claude_answer_budget() -> None:
    body = b'data: {"completion":"abcd"}\n\n' * 100 + b'data: {"completion":"","stop_reason":"end"}\n\n'
    answer = ResponseTap_answer(ClaudeStreamDecoder(answer_limit=10), body)
    assert answer.text == "abcdabcd" and "answer longer than 10 characters" in answer.error


def test_the_benchmark_streams_finish_well_within_a_minute_at_4_mb() -> None:
    """A regression to quadratic time shows as a timeout here (16 MB took minutes before)."""
    code = "from proxy.bench import hostile_stream_timings as t; import json; print(json.dumps(t(4 * 2**20)))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    rows = json.loads(done.stdout)
    assert [r["name"] for r in rows] == [name for name, *_ in bench.CASES]
    assert all(r["bytes"] > 0.99 * 4 * 2**20 or "gzip" in r["name"] for r in rows)
    assert "response inflates more than" in rows[-1]["note"]
