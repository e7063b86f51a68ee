"""Request bodies as the inspector must see them: content-decoded, bounded, or uninspectable.

Everything here is under the sender's control, so every way it can fail is
:class:`Uninspectable` (the policy's ``on_uninspectable`` decides, default block), never an
infrastructure error that a fail-open ``on_error`` would wave through:

- a body over the size limit, before or after decoding (a gzip bomb stops at the limit: every
  decompressor is driven by :mod:`proxy.decompress` in bounded output pieces, never asked for
  "everything", and the limit is checked per piece);
- a ``Content-Encoding`` this module does not know, a chain of more than
  :data:`MAX_ENCODING_LAYERS`, or bytes that do not decode under the encoding they claim.

Browsers do not compress request bodies; ``gzip, gzip`` is decoded (twice) only because an
origin server might accept it, and it must not hide a prompt from us.
"""

from __future__ import annotations

from proxy.decompress import DecompressError, stage

MAX_ENCODING_LAYERS = 3


class Uninspectable(Exception):
    """The sender made this body impossible to inspect; ``str()`` is the reason, never content."""


def _undo(data: bytes, name: str, limit: int) -> bytes:
    """One encoding undone, pulling bounded pieces and stopping as soon as ``limit`` is passed."""
    try:
        current = stage(name)
    except KeyError:
        shown = name if name.isascii() and name.isprintable() and len(name) <= 32 else "(unprintable)"
        raise Uninspectable(f"unknown content-encoding {shown!r}") from None
    if current is None:
        return data
    out = bytearray()
    for pieces in (current.feed(data), current.finish()):
        try:
            for piece in pieces:
                out += piece
                if len(out) > limit:
                    raise Uninspectable(f"body over {limit} bytes once {name}-decoded")
        except DecompressError as exc:
            raise Uninspectable(f"body {exc}") from None
        finally:
            pieces.close()  # stopped at the limit: the decompressor goes now, not at collection
    if not current.complete:
        raise Uninspectable(f"{current.name} body is truncated")
    return bytes(out)


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
        data = _undo(data, name, limit)
    return data
