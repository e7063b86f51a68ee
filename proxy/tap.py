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

**Bounds.** Decompressors are driven by :mod:`proxy.decompress` in bounded output pieces and
the decode limit is checked per piece: a gzip bomb costs at most the limit, never the bomb, and
the answer is decoded up to the limit ("answer larger than N bytes: not decoded past it"). A
compressed answer that inflates more than :data:`MAX_INFLATION` times its wire size stops being
decoded there, so one 16 KiB chunk never costs the event loop more than ~1 MiB of decoding.

Nothing here raises into mitmproxy: a failing decompressor or decoder is recorded as an error
string (type names only, never content) and decoding stops for that flow.
"""

from __future__ import annotations

from proxy.decompress import PIECE, Chain, DecompressError, Pieces, stage
from proxy.wire.base import Answer, AnswerDecoder

DEFAULT_DECODE_LIMIT = 64 * 1024 * 1024
# A compressed answer that inflates more than this many times its wire size (past the first
# RATIO_FREE_BYTES) is a bomb, not text: real SSE answers compress 5-30x. Without it one 16 KiB
# chunk of a 1000:1 gzip stream is 16 MiB to decode in a single call on the event loop (0.5 s);
# with it a 16 KiB chunk decodes to at most ~1 MiB (~25 ms).
MAX_INFLATION = 50
RATIO_FREE_BYTES = 256 * 1024


class ContentDecodeError(Exception):
    pass


class IncrementalContentDecoder:
    """Undo a ``Content-Encoding`` chain (``gzip, br`` = gzip first, so undo br first) chunk by chunk.

    :meth:`decode` and :meth:`flush` yield the output in bounded pieces (see :mod:`proxy.decompress`):
    a caller that stops iterating stops the decompression there.
    """

    def __init__(self, content_encoding: str) -> None:
        names = [n.strip().lower() for n in content_encoding.split(",") if n.strip()]
        stages = []
        for name in reversed(names):
            try:
                current = stage(name)
            except KeyError:
                raise ContentDecodeError(f"unsupported content-encoding {name!r}") from None
            if current is not None:
                stages.append(current)
        self._chain = Chain(stages)

    @property
    def compressed(self) -> bool:
        """Whether any stage decompresses (``identity`` alone does not)."""
        return bool(self._chain.stages)

    def decode(self, data: bytes) -> Pieces:
        if not self._chain.stages:
            for start in range(0, len(data), PIECE):
                yield data[start : start + PIECE]
            return
        yield from self._chain.feed(data)

    def flush(self) -> Pieces:
        yield from self._chain.finish()


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
        self._compressed = self._content is not None and self._content.compressed

    def __call__(self, chunk: bytes) -> bytes:
        self.response_bytes += len(chunk)
        if self.copy is not None:
            if len(self.copy) + len(chunk) <= self._copy_limit:
                self.copy += chunk
            else:
                self.copy = None  # too big to keep whole: keep nothing rather than a misleading part
        if chunk and self.decoder is not None and self._content is not None:
            self._pull(self._content.decode(chunk))
        return chunk

    def _pull(self, pieces: Pieces) -> None:
        """Feed decoded pieces to the decoder, the limit checked per piece; never raises."""
        try:
            for piece in pieces:
                if not self._feed(piece):
                    break
        except Exception as exc:  # never into mitmproxy: the user's bytes are already on their way
            detail = str(exc) if isinstance(exc, DecompressError) else type(exc).__name__
            self._stop(f"could not decode response: {detail}")
        finally:
            pieces.close()  # left at the limit: the decompression stops here, not at collection

    def _feed(self, data: bytes) -> bool:
        """Feed one piece; False once the decode limit is reached (decoding stops there)."""
        if self.decoder is None or self._content is None:
            return False
        room = self._decode_limit - self.decoded_bytes
        inflated = self.decoded_bytes + len(data)
        if self._compressed and inflated > RATIO_FREE_BYTES and inflated > MAX_INFLATION * self.response_bytes:
            self._stop(
                f"response inflates more than {MAX_INFLATION}:1: not decoded past {self.decoded_bytes} bytes"
            )
            return False
        if len(data) > room:
            if room > 0:
                self.decoded_bytes += room
                self.decoder.feed(data[:room])
            self._stop(f"answer larger than {self._decode_limit} bytes: not decoded past it")
            return False
        self.decoded_bytes += len(data)
        self.decoder.feed(data)
        return True

    def _stop(self, error: str) -> None:
        self.error = self.error or error
        self._content = None

    def finish(self) -> Answer | None:
        """The reconstructed answer (once; later calls return the same), or None without a decoder."""
        if self._answer is not None or self.decoder is None:
            return self._answer
        if self._content is not None:
            self._pull(self._content.flush())
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
