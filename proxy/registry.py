"""The one place where the per-app wire modules are assembled into name -> function registries.

The catalogue YAML names extractors, decoders and block replies (``extractor: gemini.upload``);
these dicts resolve them. They are explicit on purpose (never ``__subclasses__`` or entry-point
discovery): a reviewer sees every function that can touch a request. Adding an app is one line
in :data:`WIRE_MODULES`; a duplicated name is an import-time error.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import ModuleType
from typing import TypeVar

from proxy.wire import chatgpt, claude, gemini, generic, perplexity
from proxy.wire.base import BlockReplyMaker, DecoderFactory, Extractor, SocketDecoderFactory

WIRE_MODULES: tuple[ModuleType, ...] = (generic, chatgpt, claude, gemini, perplexity)

T = TypeVar("T")


def _merge(attribute: str) -> dict[str, T]:
    merged: dict[str, T] = {}
    for module in WIRE_MODULES:
        entries: Mapping[str, T] = getattr(module, attribute)
        for name, value in entries.items():
            if name in merged:
                raise RuntimeError(f"{attribute} name {name!r} is defined twice (second in {module.__name__})")
            merged[name] = value
    return merged


EXTRACTORS: Mapping[str, Extractor] = _merge("EXTRACTORS")
DECODERS: Mapping[str, DecoderFactory] = _merge("DECODERS")
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = _merge("BLOCK_REPLIES")
# Answers over WebSockets, by "<app>.websocket": the socket guard decodes an app's server messages.
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = _merge("SOCKET_DECODERS")
DEFAULT_BLOCK_REPLY = generic.DEFAULT_BLOCK_REPLY
