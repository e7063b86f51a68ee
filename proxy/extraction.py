"""Request-body extractors: pure functions from a body to what the user sent.

Extractors are looked up by name from the app catalogue (``extractor: chatgpt.conversation``)
in the explicit :data:`EXTRACTORS` registry. They must be tolerant: a body that does not have
the expected shape raises :class:`ExtractionError` (which the addon records as "could not
decode"), never anything else, and the error message never quotes the body.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any


class ExtractionError(ValueError):
    """The body did not have the shape the catalogue promised."""


@dataclass(frozen=True)
class Extraction:
    prompt: str = field(default="", repr=False)
    conversation_id: str | None = None
    message_id: str | None = None
    parent_message_id: str | None = None
    model: str | None = None
    attachments: tuple[str, ...] = field(default=(), repr=False)


Extractor = Callable[[bytes], Extraction]


def _json_object(body: bytes) -> Mapping[str, Any]:
    try:
        data = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ExtractionError("body is not JSON") from None
    if not isinstance(data, dict):
        raise ExtractionError("body is not a JSON object")
    return data


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def chatgpt_conversation(body: bytes) -> Extraction:
    """SendPrompt: join the string parts of every non-assistant message.

    Object parts (images) are skipped as text but kept as attachment references, and
    ``metadata.attachments`` names are kept too (documents appear only there).
    """
    data = _json_object(body)
    messages = data.get("messages") or []
    if not isinstance(messages, list):
        raise ExtractionError("messages is not a list")
    texts: list[str] = []
    attachments: list[str] = []
    last_id: str | None = None
    for message in messages:
        if not isinstance(message, dict):
            continue
        author = message.get("author")
        role = author.get("role") if isinstance(author, dict) else None
        if role == "assistant":
            continue
        last_id = _opt_str(message.get("id")) or last_id
        content = message.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        for part in parts if isinstance(parts, list) else []:
            if isinstance(part, str):
                texts.append(part)
            elif isinstance(part, dict) and isinstance(part.get("asset_pointer"), str):
                attachments.append(part["asset_pointer"])
        metadata = message.get("metadata")
        files = metadata.get("attachments") if isinstance(metadata, dict) else None
        for item in files if isinstance(files, list) else []:
            if isinstance(item, dict):
                name = _opt_str(item.get("name")) or _opt_str(item.get("id"))
                if name:
                    attachments.append(name)
    return Extraction(
        prompt="\n".join(texts),
        conversation_id=_opt_str(data.get("conversation_id")),
        message_id=last_id,
        parent_message_id=_opt_str(data.get("parent_message_id")),
        model=_opt_str(data.get("model")),
        attachments=tuple(dict.fromkeys(attachments)),
    )


def chatgpt_prepare(body: bytes) -> Extraction:
    """Draft text sent before the prompt: ``partial_query`` is a message or a string."""
    data = _json_object(body)
    partial = data.get("partial_query")
    prompt = ""
    if isinstance(partial, str):
        prompt = partial
    elif isinstance(partial, dict):
        content = partial.get("content")
        parts = content.get("parts") if isinstance(content, dict) else None
        prompt = "\n".join(p for p in (parts or []) if isinstance(p, str))
    return Extraction(
        prompt=prompt,
        conversation_id=_opt_str(data.get("conversation_id")),
        model=_opt_str(data.get("model")),
    )


def chatgpt_share(body: bytes) -> Extraction:
    data = _json_object(body)
    return Extraction(
        conversation_id=_opt_str(data.get("conversation_id")),
        message_id=_opt_str(data.get("current_node_id")),
    )


def chatgpt_file_metadata(body: bytes) -> Extraction:
    data = _json_object(body)
    name = _opt_str(data.get("file_name"))
    return Extraction(attachments=(name,) if name else ())


EXTRACTORS: Mapping[str, Extractor] = {
    "chatgpt.conversation": chatgpt_conversation,
    "chatgpt.prepare": chatgpt_prepare,
    "chatgpt.share": chatgpt_share,
    "chatgpt.file_metadata": chatgpt_file_metadata,
}
