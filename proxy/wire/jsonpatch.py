"""Tolerant JSON-Pointer edits (RFC 6901 paths) for the delta encodings of the apps.

ChatGPT's delta encoding v1 and Perplexity's ``diff_block`` both edit a JSON document with
operations on pointer paths. :func:`apply` returns the new document and never raises: an
operation whose path does not fit the document is reported (False) and skipped, because a
stream that moved a field must degrade to "could not decode", not to an exception.

**Linear appends.** An answer streamed as thousands of 4-character ``append`` operations must
not copy the whole text each time: lists are extended in place, and with ``builders=True`` a
string that is appended to becomes a :class:`TextBuilder` (parts joined once, when read with
:func:`text`). Documents edited with builders are read through :func:`text`.
"""

from __future__ import annotations

import copy
from typing import Any

_MISSING = object()


class TextBuilder:
    """A string under construction: O(1) amortised appends; ``str()`` joins the parts (once)."""

    __slots__ = ("_parts", "length")

    def __init__(self, text: str) -> None:
        self._parts = [text]
        self.length = len(text)

    def append(self, text: str) -> None:
        self._parts.append(text)
        self.length += len(text)

    def __str__(self) -> str:
        if len(self._parts) > 1:
            self._parts = ["".join(self._parts)]
        return self._parts[0]

    def __repr__(self) -> str:
        return f"TextBuilder(<{self.length} characters>)"


def text(value: Any) -> str | None:
    """``value`` as a string when it is one (or a :class:`TextBuilder`), else None."""
    if isinstance(value, str):
        return value
    if isinstance(value, TextBuilder):
        return str(value)
    return None


def _tokens(path: str) -> list[str] | None:
    if path == "":
        return []
    if not path.startswith("/"):
        return None
    return [t.replace("~1", "/").replace("~0", "~") for t in path[1:].split("/")]


def _index(container: list[Any], token: str, *, allow_end: bool) -> int | None:
    if token == "-":
        return len(container) if allow_end else None
    if not token.isdigit():
        return None
    index = int(token)
    limit = len(container) if allow_end else len(container) - 1
    return index if 0 <= index <= limit else None


def _parent(doc: Any, tokens: list[str], *, create: bool) -> Any:
    node = doc
    for token in tokens[:-1]:
        if isinstance(node, dict):
            if token not in node and create:
                node[token] = {}
            node = node.get(token, _MISSING)
        elif isinstance(node, list):
            i = _index(node, token, allow_end=False)
            node = node[i] if i is not None else _MISSING
        else:
            return _MISSING
        if node is _MISSING:
            return _MISSING
    return node


def get(doc: Any, path: str) -> Any:
    tokens = _tokens(path)
    if tokens is None:
        return None
    if not tokens:
        return doc
    parent = _parent(doc, tokens, create=False)
    last = tokens[-1]
    if isinstance(parent, dict):
        return parent.get(last)
    if isinstance(parent, list):
        i = _index(parent, last, allow_end=False)
        return parent[i] if i is not None else None
    return None


def cost(doc: Any, op: str, path: str) -> int:
    """What one operation may copy or move besides its value: the target's length for
    ``truncate``, the items after the index for a list ``add``/``remove``; 0 for the O(1) ones.
    Decoders charge it to their answer budget, so no sequence of edits is quadratic."""
    if op not in ("truncate", "add", "remove"):
        return 0
    tokens = _tokens(path)
    if not tokens:
        return _size(doc) if op == "truncate" and tokens is not None else 0
    if op == "truncate":
        return _size(get(doc, path))
    parent = _parent(doc, tokens, create=False)
    if isinstance(parent, list) and op in ("add", "remove"):
        i = _index(parent, tokens[-1], allow_end=True)
        return 0 if i is None else len(parent) - i
    return 0


def _size(value: Any) -> int:
    if isinstance(value, TextBuilder):
        return value.length
    return len(value) if isinstance(value, (str, list)) else 0


def apply(doc: Any, op: str, path: str, value: Any, *, builders: bool = False) -> tuple[Any, bool]:
    """Apply one operation; returns (document, applied).

    ``add`` (RFC 6902: inserts into lists), ``replace`` (sets, creating a missing key),
    ``append`` (string concatenation, list extension, or an object merged into an object
    shallowly, as ChatGPT appends to ``/message/metadata``; a missing target is set),
    ``remove``, ``truncate`` (cut a string or list to ``value`` items) and JSON-Patch's
    ``copy``/``move``/``test`` are not needed by any app and count as not applied.
    """
    tokens = _tokens(path)
    if tokens is None:
        return doc, False
    if not tokens:
        if op in ("add", "replace"):
            return copy.deepcopy(value), True
        if op == "append":
            return _appended(doc, value, builders)
        if op == "truncate":
            return _truncated(doc, value)
        return doc, False
    parent = _parent(doc, tokens, create=op in ("add", "replace", "append"))
    last = tokens[-1]
    if isinstance(parent, dict):
        current = parent.get(last, _MISSING)
        if op in ("add", "replace"):
            parent[last] = copy.deepcopy(value)
        elif op == "append":
            parent[last], ok = _appended(None if current is _MISSING else current, value, builders)
            return doc, ok
        elif op == "remove" and current is not _MISSING:
            del parent[last]
        elif op == "truncate" and current is not _MISSING:
            parent[last], ok = _truncated(current, value)
            return doc, ok
        else:
            return doc, False
        return doc, True
    if isinstance(parent, list):
        if op == "add":
            i = _index(parent, last, allow_end=True)
            if i is None:
                return doc, False
            parent.insert(i, copy.deepcopy(value))
            return doc, True
        i = _index(parent, last, allow_end=op in ("replace", "append"))
        if i is None:
            return doc, False
        if i == len(parent):  # replace/append one past the end: grow the list
            parent.append(None)
        if op == "replace":
            parent[i] = copy.deepcopy(value)
        elif op == "append":
            parent[i], ok = _appended(parent[i], value, builders)
            return doc, ok
        elif op == "remove":
            del parent[i]
        elif op == "truncate":
            parent[i], ok = _truncated(parent[i], value)
            return doc, ok
        else:
            return doc, False
        return doc, True
    return doc, False


def _appended(current: Any, value: Any, builders: bool) -> tuple[Any, bool]:
    if current is None:
        return copy.deepcopy(value), True
    if isinstance(current, TextBuilder) and isinstance(value, str):
        current.append(value)
        return current, True
    if isinstance(current, str) and isinstance(value, str):
        if not builders:
            return current + value, True
        built = TextBuilder(current)
        built.append(value)
        return built, True
    if isinstance(current, dict) and isinstance(value, dict):  # shallow merge: keys of value win
        current.update(copy.deepcopy(value))
        return current, True
    if isinstance(current, list):  # documents own their lists (values are deep-copied in)
        if isinstance(value, list):
            current.extend(copy.deepcopy(value))
        else:
            current.append(copy.deepcopy(value))
        return current, True
    return current, False


def _truncated(current: Any, value: Any) -> tuple[Any, bool]:
    if isinstance(current, TextBuilder):
        current = str(current)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0 and isinstance(current, (str, list)):
        if isinstance(current, list):
            del current[value:]
            return current, True
        return current[:value], True
    return current, False
