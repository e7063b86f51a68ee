"""Canonical request targets: what the catalogue matches, read the way an origin server reads it.

An evasive client does not need a new endpoint to walk around a path regex; it only needs a
spelling of the same endpoint that the origin's router accepts and the regex does not:
``/backend-api//conversation``, ``/Backend-API/conversation/``, ``/x/../backend-api/f/%63onversation``,
``/backend-api%2Fconversation;x=1``. So the catalogue never sees the raw target, only
:func:`canonical_path` of it, which undoes every such spelling at once:

- percent-decoding, repeated (bounded) so double encoding (``%2563``) is undone too, including
  ``%2F`` and ``%5C``: a router that decodes before routing must not see a different path than us;
- ``\\`` read as ``/`` (some stacks do);
- ``;params`` dropped from each segment;
- ``.`` and ``..`` segments resolved (RFC 3986 section 5.2.4), never above the root;
- empty segments (repeated slashes) and the trailing slash dropped.

Case is kept (extractors read ids from paths); the catalogue compiles its patterns
case-insensitively instead. Decoding is deliberately generous: a spelling that maps to a prompt
endpoint is inspected even if the origin would have answered 404, which costs an inspection,
never a bypass.
"""

from __future__ import annotations

from urllib.parse import unquote, unquote_plus

MAX_DECODE_ROUNDS = 4


def _decode_repeatedly(text: str, *, plus: bool = False) -> str:
    decode = unquote_plus if plus else unquote
    for _ in range(MAX_DECODE_ROUNDS):
        decoded = decode(text, errors="replace")
        if decoded == text:
            break
        text = decoded
    return text


def split_target(target: str) -> tuple[str, str]:
    """(path, query) of an origin-form request target; a fragment (never sent by browsers) is dropped."""
    target = target.split("#", 1)[0]
    path, _, query = target.partition("?")
    return path, query


def canonical_path(path: str) -> str:
    """The path an origin server routes on, for any spelling of it (see the module docstring)."""
    text = _decode_repeatedly(path.split("?", 1)[0]).replace("\\", "/")
    segments: list[str] = []
    for raw in text.split("/"):
        segment = raw.split(";", 1)[0]
        if segment in ("", "."):
            continue
        if segment == "..":
            if segments:
                segments.pop()
            continue
        segments.append(segment)
    return "/" + "/".join(segments)


def canonical_query(query: str) -> str:
    """The query with percent- and plus-encoding undone, for operations that match on it."""
    return _decode_repeatedly(query, plus=True)


def canonical_host(host: str) -> str:
    """Host names compare lower-case, without trailing dots or brackets, and without a port."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")
