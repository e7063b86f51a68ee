"""The response tap: the user's bytes pass untouched and undelayed while a copy is decoded.

mitmproxy calls ``flow.response.stream`` with every chunk as it arrives and forwards whatever
the callable returns; :class:`ResponseTap` returns the chunk it was given, unchanged, and
feeds a copy to the app's answer decoder. The answer is never buffered on the way to the user.

**Content-Encoding.** With streaming on, mitmproxy hands over the bytes as sent (compressed if
the server compressed them). We decode ``gzip``, ``deflate``, ``br`` and ``zstd`` incrementally
here, in the tap, instead of narrowing the browser's ``Accept-Encoding``: the request reaching
the app stays byte-for-byte what the browser sent (no fingerprint change for Cloudflare and
friends, no bigger answers on the wire), and an unknown or broken encoding only costs us the
decoded copy ("could not decode"), never the user's answer.

Nothing here raises into mitmproxy: a failing decompressor or decoder is recorded as an error
string (type names only, never content) and decoding stops for that flow.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable

from proxy.wire.base import Answer, AnswerDecoder

DEFAULT_DECODE_LIMIT = 64 * 1024 * 1024


class ContentDecodeError(Exception):
    pass


class _Stage:
    def __init__(self, process: Callable[[bytes], bytes], flush: Callable[[], bytes]) -> None:
        self.process = process
        self.flush = flush


def _zlib_stage(wbits: int) -> _Stage:
    obj = zlib.decompressobj(wbits)
    return _Stage(obj.decompress, obj.flush)


class _DeflateStage(_Stage):
    """HTTP ``deflate`` is meant to be zlib-wrapped; some servers send raw deflate. Detect it."""

    def __init__(self) -> None:
        self._obj: zlib._Decompress | None = None
        self._head = b""
        super().__init__(self._process, self._flush)

    def _process(self, data: bytes) -> bytes:
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            zlib_header = (self._head[0] & 0x0F) == 8 and ((self._head[0] << 8) | self._head[1]) % 31 == 0
            self._obj = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
            data, self._head = self._head, b""
        return self._obj.decompress(data)

    def _flush(self) -> bytes:
        if self._obj is None:
            return b""
        return self._obj.flush()


def _brotli_stage() -> _Stage:
    import brotli  # type: ignore[import-untyped]  # a mitmproxy dependency

    obj = brotli.Decompressor()

    def process(data: bytes) -> bytes:
        return bytes(obj.process(data))

    return _Stage(process, lambda: b"")


def _zstd_stage() -> _Stage:
    import zstandard  # a mitmproxy dependency

    obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
    return _Stage(obj.decompress, obj.flush)


def _stage(name: str) -> _Stage | None:
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return _zlib_stage(16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _DeflateStage()
    if name == "br":
        return _brotli_stage()
    if name == "zstd":
        return _zstd_stage()
    raise ContentDecodeError(f"unsupported content-encoding {name!r}")


class IncrementalContentDecoder:
    """Undo a ``Content-Encoding`` chain (``gzip, br`` = gzip first, so undo br first) chunk by chunk."""

    def __init__(self, content_encoding: str) -> None:
        names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
        stages = [_stage(n) for n in reversed(names)]
        self._stages = [s for s in stages if s is not None]

    def decode(self, data: bytes) -> bytes:
        for stage in self._stages:
            data = stage.process(data)
        return data

    def flush(self) -> bytes:
        out = b""
        for stage in self._stages:
            out = (stage.process(out) if out else b"") + stage.flush()
        return out


class ResponseTap:
    """``flow.response.stream``: count, optionally copy, decode; always return the chunk as given."""

    def __init__(
        self,
        decoder: AnswerDecoder | None,
        content_encoding: str = "",
        *,
        keep_copy_limit: int = 0,
        decode_limit: int = DEFAULT_DECODE_LIMIT,
    ) -> None:
        self.decoder = decoder
        self.response_bytes = 0
        self.decoded_bytes = 0
        self.error: str | None = None
        self._decode_limit = decode_limit
        self._copy_limit = keep_copy_limit
        self.copy: bytearray | None = bytearray() if keep_copy_limit > 0 else None
        self._content: IncrementalContentDecoder | None = None
        self._answer: Answer | None = None
        if decoder is not None:
            try:
                self._content = IncrementalContentDecoder(content_encoding)
            except ContentDecodeError as exc:
                self._stop(str(exc))

    def __call__(self, chunk: bytes) -> bytes:
        self.response_bytes += len(chunk)
        if self.copy is not None:
            if len(self.copy) + len(chunk) <= self._copy_limit:
                self.copy += chunk
            else:
                self.copy = None  # too big to keep whole: keep nothing rather than a misleading part
        if chunk and self.decoder is not None and self._content is not None:
            try:
                self._feed(self._content.decode(chunk))
            except Exception as exc:  # never into mitmproxy: the user's bytes are already on their way
                self._stop(f"could not decode response: {type(exc).__name__}")
        return chunk

    def _feed(self, data: bytes) -> None:
        if not data or self.decoder is None:
            return
        self.decoded_bytes += len(data)
        if self.decoded_bytes > self._decode_limit:
            self._stop(f"answer larger than {self._decode_limit} bytes: not decoded")
            return
        self.decoder.feed(data)

    def _stop(self, error: str) -> None:
        self.error = self.error or error
        self._content = None

    def finish(self) -> Answer | None:
        """The reconstructed answer (once; later calls return the same), or None without a decoder."""
        if self._answer is not None or self.decoder is None:
            return self._answer
        if self._content is not None:
            try:
                self._feed(self._content.flush())
            except Exception as exc:
                self._stop(f"could not decode response: {type(exc).__name__}")
        try:
            answer = self.decoder.close()
        except Exception as exc:
            answer = Answer(error=f"decoder failed: {type(exc).__name__}")
        if self.error is not None:
            answer.error = self.error if answer.error is None else f"{self.error}; {answer.error}"
        self._answer = answer
        return answer


def decode_whole(decoder: AnswerDecoder, body: bytes, content_encoding: str = "") -> Answer:
    """Decode a complete body (replay, buffered responses) through the same path as the tap."""
    tap = ResponseTap(decoder, content_encoding)
    tap(body)
    tap(b"")
    return tap.finish() or Answer(error="no decoder")
