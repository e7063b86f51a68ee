"""The ChatGPT catalogue entry and extractors, from the shapes in shared/design/apps/chatgpt.md."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from promptfence.core import OperationKind
from promptfence.errors import ConfigError
from promptfence.yamlsource import load_yaml_text
from proxy.catalogue import load_catalogue, parse_app
from proxy.extraction import EXTRACTORS, ExtractionError, RequestData
from proxy.wire.chatgpt import conversation

CATALOGUE = load_catalogue()

# The synthetic multimodal example from the design notes (made-up ids).
MULTIMODAL = {
    "action": "next",
    "messages": [
        {
            "id": "11111111-aaaa-4bbb-8ccc-000000000001",
            "author": {"role": "user"},
            "content": {
                "content_type": "multimodal_text",
                "parts": [
                    {"content_type": "image_asset_pointer", "asset_pointer": "file-service://file-EXAMPLE01"},
                    "Summarise the table in this screenshot.",
                ],
            },
            "metadata": {"attachments": [{"id": "file-EXAMPLE01", "name": "table.png", "mimeType": "image/png"}]},
        }
    ],
    "conversation_id": "22222222-bbbb-4ccc-8ddd-000000000002",
    "parent_message_id": "33333333-cccc-4ddd-8eee-000000000003",
    "model": "auto",
}


@pytest.mark.parametrize(
    ("host", "method", "path", "operation"),
    [
        ("chatgpt.com", "POST", "/backend-api/f/conversation", "chatgpt.send_prompt"),
        ("chatgpt.com", "POST", "/backend-api/conversation", "chatgpt.send_prompt"),
        ("chatgpt.com", "POST", "/backend-anon/f/conversation", "chatgpt.send_prompt"),
        ("CHAT.OPENAI.COM", "POST", "/backend-api/conversation?x=1", "chatgpt.send_prompt"),
        ("chatgpt.com", "POST", "/backend-api/f/conversation/prepare", "chatgpt.prepare"),
        ("chatgpt.com", "POST", "/backend-api/share/create", "chatgpt.share"),
        ("chatgpt.com", "POST", "/backend-api/files", "chatgpt.upload_file"),
        ("chatgpt.com", "GET", "/backend-api/f/conversation", "chatgpt.unknown"),
        ("chatgpt.com", "GET", "/backend-api/models", "chatgpt.unknown"),
    ],
)
def test_matching(host: str, method: str, path: str, operation: str) -> None:
    match = CATALOGUE.match(host, method, path)
    assert match is not None and match.operation.operation_id == operation


def test_unknown_hosts_do_not_match() -> None:
    assert CATALOGUE.match("example.org", "POST", "/backend-api/f/conversation") is None
    assert CATALOGUE.match("notchatgpt.com", "POST", "/backend-api/f/conversation") is None


def test_multimodal_extraction() -> None:
    extraction = conversation(RequestData(json.dumps(MULTIMODAL).encode()))
    assert extraction.prompt == "Summarise the table in this screenshot."
    assert extraction.conversation_id == "22222222-bbbb-4ccc-8ddd-000000000002"
    assert extraction.parent_message_id == "33333333-cccc-4ddd-8eee-000000000003"
    assert extraction.message_id == "11111111-aaaa-4bbb-8ccc-000000000001"
    assert extraction.model == "auto"
    assert extraction.attachments == ("file-service://file-EXAMPLE01", "table.png")


def test_assistant_messages_and_continue_carry_no_prompt() -> None:
    body = {"action": "next", "messages": [{"author": {"role": "assistant"}, "content": {"parts": ["old answer"]}}]}
    assert conversation(RequestData(json.dumps(body).encode())).prompt == ""
    assert conversation(RequestData(b'{"action": "continue", "conversation_id": "c"}')).prompt == ""


@given(st.binary(max_size=300))
def test_extractors_raise_only_extraction_errors(body: bytes) -> None:
    for extractor in EXTRACTORS.values():
        with contextlib.suppress(ExtractionError):
            extractor(RequestData(body, headers={"content-type": "multipart/form-data; boundary=x"}))
            extractor(RequestData(body))


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    ["messages", "content", "parts", "author", "role", "metadata", "attachments", "conversation_id"]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=20,
    )
)
def test_extractors_tolerate_any_json_shape(value: object) -> None:
    for extractor in EXTRACTORS.values():
        with contextlib.suppress(ExtractionError):
            extractor(RequestData(json.dumps(value).encode()))


def test_share_and_upload_kinds() -> None:
    share = CATALOGUE.match("chatgpt.com", "POST", "/backend-api/share/create")
    assert share is not None and share.operation.kind is OperationKind.SHARE
    upload = CATALOGUE.match("chatgpt.com", "POST", "/backend-api/files")
    assert upload is not None and upload.operation.kind is OperationKind.UPLOAD_FILE


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("name: X\napp_type: t\nhosts: [a]\noperations: [{id: x.a, kind: Other, path: /}]\n", 1, "app"),
        (
            "app: x\nname: X\napp_type: t\nhosts: [a]\noperations:\n- id: x.a\n  kind: Dance\n  path: /\n",
            7,
            "operations[0].kind",
        ),
        (
            "app: x\nname: X\napp_type: t\nhosts: [a]\noperations:\n- id: x.a\n  kind: Other\n  path: '('\n",
            8,
            "operations[0].path",
        ),
        (
            "app: x\nname: X\napp_type: t\nhosts: [a]\noperations:\n- id: x.a\n  kind: Other\n  path: /\n  extractor: nope\n",
            9,
            "operations[0].extractor",
        ),
        (
            "app: x\nname: X\napp_type: t\nhosts: [a]\noperations:\n- id: y.a\n  kind: Other\n  path: /\n",
            6,
            "operations[0].id",
        ),
    ],
)
def test_bad_app_files(text: str, line: int, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_app(load_yaml_text(text, "x.yaml"), "x.yaml")
    assert (info.value.line, info.value.field) == (line, field)


def test_every_shipped_app_file_parses() -> None:
    files = sorted((Path(__file__).parents[1] / "proxy" / "apps").glob("*.yaml"))
    assert files and len(CATALOGUE.apps) == len(files)
