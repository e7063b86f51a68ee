"""Timings of the answer decoders on hostile streams (``promptfence bench hostile``).

Each stream is what a hostile or broken upstream could send; each used to cost quadratic time on
the proxy's event loop. They go through :class:`~proxy.tap.ResponseTap` in 16 KiB chunks, as
mitmproxy hands them over. Light: imports only the proxy's own wire code (no sqlalchemy, torch).
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Callable

from proxy.tap import ResponseTap
from proxy.wire.base import AnswerDecoder
from proxy.wire.chatgpt import ChatGPTStreamDecoder
from proxy.wire.claude import ClaudeStreamDecoder
from proxy.wire.gemini import GeminiFrameDecoder
from proxy.wire.perplexity import PerplexityStreamDecoder

CHUNK = 16 * 1024


def sse_line_without_newline(size: int) -> bytes:
    return b"data: " + b"a" * max(0, size - 6)


def gemini_huge_length_prefix(size: int) -> bytes:
    head = b")]}'\n\n999999999999\n"
    return head + b"a" * max(0, size - len(head))


def chatgpt_append_deltas(size: int) -> bytes:
    head = (
        'event: delta_encoding\ndata: "v1"\n\n'
        'event: delta\ndata: {"p":"","o":"add","v":{"message":{"id":"m","author":{"role":"assistant"},'
        '"content":{"content_type":"text","parts":[""]},"recipient":"all"}},"c":0}\n\n'
        'event: delta\ndata: {"p":"/message/content/parts/0","o":"append","v":"abcd"}\n\n'
    )
    event = 'event: delta\ndata: {"v":"abcd"}\n\n'
    return (head + event * max(0, (size - len(head)) // len(event))).encode()


def perplexity_chunk_per_event(size: int) -> bytes:
    events: list[str] = []
    total = 0
    while total < size:
        block = {
            "intended_usage": "ask_text",
            "markdown_block": {"chunks": ["abcd"], "chunk_starting_offset": len(events)},
        }
        event = "event: message\r\ndata: " + json.dumps({"blocks": [block]}) + "\r\n\r\n"
        events.append(event)
        total += len(event)
    return "".join(events).encode()


def gzip_bomb(size: int) -> bytes:
    """64 x ``size`` bytes of SSE data lines (1 GiB for 16 MiB), gzip-compressed (about 1000:1)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    line = b"data: " + b"0" * 1018 + b"\n\n"  # ~1 KiB events: the bomb is in the decompression
    block = line * 1024
    parts = [compressor.compress(block) for _ in range(max(1, 64 * size // len(block)))]
    return b"".join(parts) + compressor.flush()


def _time(decoder: AnswerDecoder, body: bytes, encoding: str = "") -> tuple[float, float, str | None]:
    """Seconds decoding the whole body, the longest single call (how long one chunk holds the
    proxy's event loop: other flows run between chunks), and the answer's note."""
    tap = ResponseTap(decoder, encoding)
    longest = 0.0
    started = time.perf_counter()
    for start in range(0, len(body), CHUNK):
        piece = body[start : start + CHUNK]
        before = time.perf_counter()
        if tap(piece) is not piece:
            raise AssertionError("the tap changed the user's bytes")
        longest = max(longest, time.perf_counter() - before)
    before = time.perf_counter()
    answer = tap.finish()
    longest = max(longest, time.perf_counter() - before)
    return time.perf_counter() - started, longest, None if answer is None else answer.error


CASES: list[tuple[str, Callable[[int], bytes], Callable[[], AnswerDecoder], str]] = [
    ("sse line without newline", sse_line_without_newline, ClaudeStreamDecoder, ""),
    ("gemini length prefix 999999999999", gemini_huge_length_prefix, GeminiFrameDecoder, ""),
    ("chatgpt 4-character append deltas", chatgpt_append_deltas, ChatGPTStreamDecoder, ""),
    ("perplexity one chunk per event", perplexity_chunk_per_event, PerplexityStreamDecoder, ""),
    ("gzip response bomb (64x size) through the tap", gzip_bomb, ClaudeStreamDecoder, "gzip"),
]


def hostile_stream_timings(size_bytes: int = 16 * 2**20) -> list[dict[str, object]]:
    """One dict per hostile stream: name, seconds (decoding through the tap), longest_call_ms (the
    longest the tap held the event loop for one 16 KiB chunk), bytes (on the wire), note (the
    answer's error: how the bound that cut decoding was recorded; never content)."""
    results: list[dict[str, object]] = []
    for name, make, decoder, encoding in CASES:
        body = make(size_bytes)
        seconds, longest, note = _time(decoder(), body, encoding)
        results.append(
            {
                "name": name,
                "seconds": round(seconds, 3),
                "longest_call_ms": round(longest * 1000, 1),
                "bytes": len(body),
                "note": note or "",
            }
        )
    return results


if __name__ == "__main__":
    for row in hostile_stream_timings():
        print(
            f"{row['name']:45s} {row['bytes']:>10} B {row['seconds']:>8} s {row['longest_call_ms']:>7} ms  {row['note']}"
        )
