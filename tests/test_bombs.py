"""Decompression bombs: request bodies are refused as uninspectable and the response tap stops
decoding at its limit, per decoded piece, with the process growing by tens of MB at most."""

from __future__ import annotations

import gzip
import subprocess
import sys
import textwrap
import zlib

import brotli  # type: ignore[import-untyped]
import pytest
import zstandard

from proxy.request_body import Uninspectable, decoded_body
from proxy.tap import MAX_INFLATION, RATIO_FREE_BYTES, ResponseTap
from proxy.wire.claude import ClaudeStreamDecoder

MiB = 2**20


def gzip_zeros(size: int, *, line: bytes = b"") -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    block = (line * (MiB // len(line))) if line else bytes(MiB)
    return b"".join(compressor.compress(block) for _ in range(size // MiB)) + compressor.flush()


_RSS_SCRIPT = """
import resource, sys, zlib
import brotli, zstandard
from proxy.request_body import Uninspectable, decoded_body
from proxy.tap import ResponseTap
from proxy.wire.claude import ClaudeStreamDecoder
from tests.test_bombs import gzip_zeros
kind, side = sys.argv[1], sys.argv[2]
if kind == "gzip":
    body = gzip_zeros(2**30, line=b"data: " + b"0" * 1016 + b"\\n\\n")  # 1 GiB -> about 1 MB
elif kind == "br":
    body = brotli.compress(bytes(256 * 2**20), quality=5)  # 256 MiB -> 405 bytes
else:
    c = zstandard.ZstdCompressor().compressobj()
    body = b"".join([c.compress(bytes(2**20)) for _ in range(1024)] + [c.flush()])  # 1 GiB
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
if side == "request":
    try:
        decoded_body(body, kind, 8 * 2**20)
        outcome = "decoded"
    except Uninspectable as exc:
        outcome = str(exc)
else:
    tap = ResponseTap(ClaudeStreamDecoder(), kind, decode_limit=4 * 2**20)
    for i in range(0, len(body), 16384):
        assert tap(body[i : i + 16384]) == body[i : i + 16384]
    answer = tap.finish()
    outcome = f"{answer.error}|{tap.decoded_bytes}"
grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024
print(f"{grown}|{outcome}")
"""


@pytest.mark.parametrize("kind", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("side", ["request", "response"])
def test_a_bomb_costs_tens_of_mb_at_most(kind: str, side: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_RSS_SCRIPT), kind, side],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    grown, outcome = done.stdout.strip().split("|", 1)
    assert int(grown) < 64, f"grew {grown} MB"
    if side == "request":
        assert outcome == f"body over {8 * MiB} bytes once {kind}-decoded"
    else:
        error, decoded = outcome.rsplit("|", 1)
        # Fed as the network delivers it, the bomb trips the inflation limit before the 4 MiB
        # decode limit (which test_the_tap_checks_its_limit_per_piece_of_one_chunk pins exactly).
        assert f"response inflates more than {MAX_INFLATION}:1" in error
        assert RATIO_FREE_BYTES <= int(decoded) <= RATIO_FREE_BYTES + MAX_INFLATION * 16384


def test_the_tap_checks_its_limit_per_piece_of_one_chunk() -> None:
    """One 1 MB chunk holding 1 GiB: the limit is met inside the chunk, the chunk passes whole."""
    bomb = gzip_zeros(2**30)
    tap = ResponseTap(ClaudeStreamDecoder(), "gzip", decode_limit=MiB)
    assert tap(bomb) is bomb
    answer = tap.finish()
    assert tap.decoded_bytes == MiB and tap.response_bytes == len(bomb)
    assert answer is not None and answer.error is not None
    assert answer.error.startswith(f"answer larger than {MiB} bytes: not decoded past it")


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("br", brotli.compress),
        ("zstd", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_request_bodies_decode_up_to_exactly_the_limit(encoding: str, compress: object) -> None:
    assert callable(compress)
    body = b"x" * 1000
    assert decoded_body(compress(body), encoding, 1000) == body
    with pytest.raises(Uninspectable, match="body over 999 bytes"):
        decoded_body(compress(body), encoding, 999)


def test_every_gzip_member_is_decoded_and_their_number_is_bounded() -> None:
    assert decoded_body(gzip.compress(b"hello ") + gzip.compress(b"world"), "gzip", 100) == b"hello world"
    with pytest.raises(Uninspectable, match="more than 64 gzip members"):
        decoded_body(gzip.compress(b"") * 65, "gzip", 10_000)
    with pytest.raises(Uninspectable, match="truncated"):
        decoded_body(gzip.compress(b"hello world")[:-4], "gzip", 100)


def test_a_multi_member_gzip_answer_is_decoded_by_the_tap() -> None:
    events = b'data: {"completion":"Par"}\n\n', b'data: {"completion":"is","stop_reason":"end"}\n\n'
    wire = gzip.compress(events[0]) + gzip.compress(events[1])
    tap = ResponseTap(ClaudeStreamDecoder(), "gzip")
    assert tap(wire) == wire
    answer = tap.finish()
    assert answer is not None and answer.text == "Paris" and answer.error is None


def test_a_chunk_never_inflates_past_the_ratio_limit() -> None:
    """A 1000:1 answer fed as the network delivers it (16 KiB chunks): decoding stops once it
    inflates past MAX_INFLATION times the wire bytes, so one call never decodes megabytes."""
    bomb = gzip_zeros(2**30, line=b"data: " + b"0" * 1016 + b"\n\n")
    tap = ResponseTap(ClaudeStreamDecoder(), "gzip")
    most = 0
    for start in range(0, len(bomb), 16 * 1024):
        before = tap.decoded_bytes
        piece = bomb[start : start + 16 * 1024]
        assert tap(piece) is piece
        most = max(most, tap.decoded_bytes - before)
    answer = tap.finish()
    assert answer is not None and answer.error is not None
    assert f"response inflates more than {MAX_INFLATION}:1" in answer.error
    assert RATIO_FREE_BYTES <= tap.decoded_bytes <= MAX_INFLATION * tap.response_bytes
    assert most <= RATIO_FREE_BYTES + MAX_INFLATION * 16 * 1024


def test_ordinary_compressed_answers_are_not_taken_for_bombs() -> None:
    """Real answers compress 5-30x; a repetitive SSE answer in 16 KiB chunks decodes whole."""
    events = b"".join(b'data: {"type":"content_block_delta","delta":{"text":"word %d "}}\n\n' % i for i in range(150_000))
    wire = gzip.compress(events)
    assert len(events) / len(wire) < MAX_INFLATION
    tap = ResponseTap(ClaudeStreamDecoder(), "gzip")
    for start in range(0, len(wire), 16 * 1024):
        tap(wire[start : start + 16 * 1024])
    tap.finish()
    assert tap.decoded_bytes == len(events)
