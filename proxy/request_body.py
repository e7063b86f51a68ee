"""Request bodies as the inspector must see them: content-decoded, bounded, or uninspectable.

Everything here is under the sender's control, so every way it can fail is
:class:`Uninspectable` (the policy's ``on_uninspectable`` decides, default block), never an
infrastructure error that a fail-open ``on_error`` would wave through:

- a body over the size limit, before or after decoding (a gzip bomb stops at the limit: every
  decompressor here is driven with an output bound, never asked for "everything");
- a ``Content-Encoding`` this module does not know, a chain of more than
  :data:`MAX_ENCODING_LAYERS`, or bytes that do not decode under the encoding they claim.

Browsers do not compress request bodies; ``gzip, gzip`` is decoded (twice) only because an
origin server might accept it, and it must not hide a prompt from us.
"""

from __future__ import annotations

import io
import zlib
from collections.abc import Callable

MAX_ENCODING_LAYERS = 3
_BROTLI_SLICE = 1024


class Uninspectable(Exception):
    """The sender made this body impossible to inspect; ``str()`` is the reason, never content."""


def _zlib(data: bytes, wbits: int, limit: int, name: str) -> bytes:
    out = bytearray()
    rest = data
    while rest:
        obj = zlib.decompressobj(wbits)
        try:
            out += obj.decompress(rest, limit + 1 - len(out))
        except zlib.error:
            raise Uninspectable(f"body does not decode as {name}") from None
        if len(out) > limit or obj.unconsumed_tail:
            raise Uninspectable(f"body over {limit} bytes once {name}-decoded")
        if not obj.eof:
            raise Uninspectable(f"{name} body is truncated")
        rest = obj.unused_data if wbits > 16 else b""  # gzip: further members follow
    return bytes(out)


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, 16 + zlib.MAX_WBITS, limit, "gzip")


def _deflate(data: bytes, limit: int) -> bytes:
    zlib_header = len(data) >= 2 and (data[0] & 0x0F) == 8 and ((data[0] << 8) | data[1]) % 31 == 0
    return _zlib(data, zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS, limit, "deflate")


def _brotli(data: bytes, limit: int) -> bytes:
    import brotli  # type: ignore[import-untyped]  # a mitmproxy dependency

    decoder = brotli.Decompressor()
    out = bytearray()
    try:
        for start in range(0, len(data), _BROTLI_SLICE):  # small slices bound each call's output
            out += decoder.process(data[start : start + _BROTLI_SLICE])
            if len(out) > limit:
                raise Uninspectable(f"body over {limit} bytes once br-decoded")
        finished = bool(decoder.is_finished())
    except brotli.error:
        raise Uninspectable("body does not decode as br") from None
    if not finished:
        raise Uninspectable("br body is truncated")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    import zstandard  # a mitmproxy dependency

    try:
        reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True)
        out = reader.read(limit + 1)
    except zstandard.ZstdError:
        raise Uninspectable("body does not decode as zstd") from None
    if len(out) > limit:
        raise Uninspectable(f"body over {limit} bytes once zstd-decoded")
    return bytes(out)


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def decoded_body(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The body with its ``Content-Encoding`` chain undone (last applied, first undone)."""
    if len(raw) > limit:
        raise Uninspectable(f"body too large ({len(raw)} bytes, limit {limit})")
    names = [n.strip().lower() for n in content_encoding.split(",")]
    names = [n for n in names if n and n != "identity"]
    if len(names) > MAX_ENCODING_LAYERS:
        raise Uninspectable(f"{len(names)} content-encodings (at most {MAX_ENCODING_LAYERS} are decoded)")
    data = raw
    for name in reversed(names):
        decoder = _DECODERS.get(name)
        if decoder is None:
            shown = name if name.isascii() and name.isprintable() and len(name) <= 32 else "(unprintable)"
            raise Uninspectable(f"unknown content-encoding {shown!r}")
        data = decoder(data, limit)
    return data
