"""Text a known operation's body carries outside the modelled prompt is inspected with it."""

from __future__ import annotations

import json

from proxy.wire.base import Extraction, RequestData
from proxy.wire.chatgpt import conversation
from proxy.wire.generic import other_fields_text

JSON = {"content-type": "application/json"}


def _other(body: object, headers: dict[str, str] = JSON, opaque: frozenset[str] = frozenset()) -> str:
    data = RequestData(json.dumps(body).encode() if not isinstance(body, bytes) else body, headers=headers)
    return other_fields_text(data, conversation(data) if headers is JSON else Extraction(), opaque)


def test_the_prompt_and_the_apps_schema_values_are_not_repeated() -> None:
    body = {
        "action": "next",
        "conversation_id": "c0ffee00-0000-4000-8000-000000000001",
        "messages": [
            {
                "id": "6f1c1a2e-1111-4222-8333-444455556666",
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": ["write a haiku\nabout autumn"]},
            }
        ],
        "model": "gpt-4o",
        "timezone_offset_min": -60,
        "timezone": "Europe/Berlin",
        "client_contextual_info": {"page_height": 1080, "time_since_loaded": 1767225600},
        "supports_buffering": True,
    }
    assert _other(body) == ""


def test_hidden_data_is_found_wherever_it_sits() -> None:
    body = {
        "messages": [
            {"author": {"role": "user"}, "content": {"parts": ["hello"]}},
            {"author": {"role": "assistant"}, "content": {"parts": ["ssn 219-09-9999"]}},
        ],
        "metadata": {"x": [{"y": "jane.roe@example.com"}], "card": "4111111111111111", "key": "AKIAZ7QWERTYUIOP1234"},
        "n": 4111111111111111,
    }
    other = _other(body).split("\n")
    assert other == ["ssn 219-09-9999", "jane.roe@example.com", "4111111111111111", "AKIAZ7QWERTYUIOP1234"]


def test_opaque_fields_are_left_out_and_forms_are_read() -> None:
    form = b"f.req=%5B%22hello%20there%22%5D&at=AJvLN6MzOoTLMOuTNEbEeIcnYz8Q%3A1733058000000"
    headers = {"content-type": "application/x-www-form-urlencoded;charset=UTF-8"}
    assert "AJvLN6Mz" in _other(form, headers)
    assert _other(form, headers, frozenset({"at"})) == "hello there"
