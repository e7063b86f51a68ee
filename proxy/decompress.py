"""Output-bounded, incremental ``Content-Encoding`` decoders for request bodies and the response tap.

Compressed bytes are the sender's: 1 MB of gzip can hold 1 GiB of zeros, and a few hundred bytes
of brotli hold 256 MiB. No decompressor here is ever asked for "everything" in one call: each
:meth:`Stage.feed` yields the output in pieces, so a caller checks its limit per piece and stops
pulling (closing the generator) the moment the limit is reached.

- ``gzip`` / ``deflate``: ``zlib.decompressobj().decompress(data, max_length)`` with the
  ``unconsumed_tail`` loop, input in slices (so the tail that zlib copies stays small); every
  gzip member is decoded, up to :data:`MAX_GZIP_MEMBERS`.
- ``br`` and ``zstd`` have no output bound in their Python APIs (brotli 1.1, zstandard 0.23), so
  they get their input in small fixed slices that bound one call's output (:class:`_SlicedStage`).
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Generator

Pieces = Generator[bytes, None, None]

PIECE = 64 * 1024  # target size of one output piece
INPUT_SLICE = 16 * 1024  # the most input handed to a decompressor in one call
MAX_GZIP_MEMBERS = 64
BROTLI_SLICE = 16  # measured: 16 bytes of a brotli bomb decode to at most 16 MiB
ZSTD_SLICE = 64  # at most 16 RLE blocks: 2 MiB


class DecompressError(Exception):
    """The bytes do not decode under the encoding they claim. ``str()`` is a predicate ("does not
    decode as gzip") for the caller to put a subject before; it never quotes content."""


class Stage:
    """One encoding undone incrementally. ``complete``: the encoding's own end marker was seen."""

    name = ""

    def feed(self, data: bytes) -> Pieces:
        raise NotImplementedError

    def finish(self) -> Pieces:
        yield from ()

    @property
    def complete(self) -> bool:
        return True


class _ZlibStage(Stage):
    def __init__(self, name: str, wbits: int | None) -> None:
        self.name = name
        self._wbits = wbits  # None: deflate, zlib-wrapped or raw, decided on the first two bytes
        self._head = b""
        self._obj: zlib._Decompress | None = None if wbits is None else zlib.decompressobj(wbits)
        self._members = 1
        self._eof = False

    @property
    def complete(self) -> bool:
        return self._obj is not None and self._obj.eof

    def _start(self, data: bytes) -> bytes:
        self._head += data
        if len(self._head) < 2:
            return b""
        head = self._head
        zlib_header = (head[0] & 0x0F) == 8 and ((head[0] << 8) | head[1]) % 31 == 0
        self._obj = zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)
        self._head = b""
        return head

    def feed(self, data: bytes) -> Pieces:
        if self._obj is None:
            data = self._start(data)
            if self._obj is None:
                return
        for start in range(0, len(data), INPUT_SLICE):
            yield from self._inflate(data[start : start + INPUT_SLICE])

    def _inflate(self, data: bytes) -> Pieces:
        obj = self._obj
        assert obj is not None
        while True:
            if obj.eof:
                if not data or self._wbits != 16 + zlib.MAX_WBITS:
                    return  # bytes after a deflate/zlib stream are ignored, as browsers do
                self._members += 1
                if self._members > MAX_GZIP_MEMBERS:
                    raise DecompressError(f"has more than {MAX_GZIP_MEMBERS} gzip members")
                obj = self._obj = zlib.decompressobj(self._wbits)
            try:
                out = obj.decompress(data, PIECE)
            except zlib.error:
                raise DecompressError(f"does not decode as {self.name}") from None
            if out:
                yield out
            data = obj.unconsumed_tail if not obj.eof else obj.unused_data
            if not data and len(out) < PIECE:
                return

    def finish(self) -> Pieces:
        if self._obj is None:
            if self._head:
                raise DecompressError(f"is truncated ({self.name})")
            return
        yield from self._inflate(b"")


class _SlicedStage(Stage):
    """A decompressor without an output bound, fed ``slice_size`` bytes of input per call.

    The slice bounds one call's output by the format's worst expansion per input byte: a brotli
    meta-block (at most 16 MiB) fits in a few bytes, a zstd RLE block (128 KiB) in four. Small
    slices cost about 0.1 microsecond per compressed byte (3 MB of brotli: 0.3 s).
    """

    def __init__(
        self, name: str, process: Callable[[bytes], bytes], errors: tuple[type[Exception], ...], slice_size: int
    ) -> None:
        self.name = name
        self._process = process
        self._errors = errors
        self._slice_size = slice_size

    def feed(self, data: bytes) -> Pieces:
        for start in range(0, len(data), self._slice_size):
            try:
                out = self._process(data[start : start + self._slice_size])
            except self._errors:
                raise DecompressError(f"does not decode as {self.name}") from None
            for at in range(0, len(out), PIECE):
                yield out[at : at + PIECE]


class _BrotliStage(_SlicedStage):
    def __init__(self) -> None:
        import brotli  # type: ignore[import-untyped]  # a mitmproxy dependency

        self._brotli = brotli.Decompressor()
        super().__init__("br", lambda data: bytes(self._brotli.process(data)), (brotli.error,), BROTLI_SLICE)

    @property
    def complete(self) -> bool:
        return bool(self._brotli.is_finished())


class _ZstdStage(_SlicedStage):
    def __init__(self) -> None:
        import zstandard  # a mitmproxy dependency

        obj = zstandard.ZstdDecompressor().decompressobj(read_across_frames=True)
        super().__init__("zstd", obj.decompress, (zstandard.ZstdError,), ZSTD_SLICE)


def stage(name: str) -> Stage | None:
    """The stage that undoes ``name`` (lower-case); None for identity; KeyError when unknown."""
    if name in ("", "identity"):
        return None
    if name in ("gzip", "x-gzip"):
        return _ZlibStage("gzip", 16 + zlib.MAX_WBITS)
    if name == "deflate":
        return _ZlibStage("deflate", None)
    if name == "br":
        return _BrotliStage()
    if name == "zstd":
        return _ZstdStage()
    raise KeyError(name)


class Chain:
    """A ``Content-Encoding`` chain (``gzip, br``: undo br first), output in bounded pieces."""

    def __init__(self, stages: list[Stage]) -> None:
        self.stages = stages

    def feed(self, data: bytes) -> Pieces:
        yield from self._through(0, data)

    def _through(self, index: int, data: bytes) -> Pieces:
        if index == len(self.stages):
            if data:
                yield data
            return
        for piece in self.stages[index].feed(data):
            yield from self._through(index + 1, piece)

    def finish(self) -> Pieces:
        for index, current in enumerate(self.stages):
            for piece in current.finish():
                yield from self._through(index + 1, piece)

    def incomplete(self) -> str | None:
        """The first stage whose stream did not reach its end marker, or None."""
        return next((s.name for s in self.stages if not s.complete), None)
