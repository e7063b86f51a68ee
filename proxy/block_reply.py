"""Replies that stand in for the app's answer when a policy blocks an operation.

A blank failure makes users retry and file tickets; a reply in the app's own format shows the
reason where they are looking. One function per reply shape, chosen by name in the catalogue
(``block_reply: chatgpt.assistant_notice``); each app's shapes live in its wire module
(:mod:`proxy.wire.chatgpt`, ...), the app-independent ones in :mod:`proxy.wire.generic`.

| app | operation | reply |
|---|---|---|
| ChatGPT | SendPrompt | ``chatgpt.assistant_notice``: a legacy snapshot stream, one assistant message, ``[DONE]`` |
| ChatGPT | prepare, Share, UploadFile | ``json.detail_403``: ``{"detail": {"message", "code"}}`` |
| Claude | every prompt-carrying operation, Share, UploadFile | ``claude.error_403``: ``{"type":"error","error":{"type":"permission_error",...}}`` |
| Gemini | SendPrompt | ``gemini.assistant_notice``: ``)]}'`` + one finished candidate frame + trailer |
| Gemini | Share, Gems, UploadFile | ``text.plain_403`` (the app shows its own generic error) |
| Perplexity | SendPrompt | ``perplexity.assistant_notice``: one terminal event (blocks + text) + ``end_of_stream`` |
| Perplexity | Share, UploadFile | ``json.detail_403`` |
"""

from __future__ import annotations

from proxy.registry import BLOCK_REPLIES, DEFAULT_BLOCK_REPLY
from proxy.wire.base import BlockReply, BlockReplyMaker

__all__ = ["BLOCK_REPLIES", "DEFAULT_BLOCK_REPLY", "BlockReply", "BlockReplyMaker"]
