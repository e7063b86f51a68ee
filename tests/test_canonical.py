"""Canonical request targets: every spelling of a path is one operation (property tests)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.canonical import canonical_host, canonical_path, canonical_query
from proxy.catalogue import load_catalogue

CATALOGUE = load_catalogue()
FIXTURES = Path(__file__).parent / "fixtures" / "apps"
REQUESTS = [json.loads(p.read_text()) for p in sorted(FIXTURES.glob("*/*/request.json"))]
EXAMPLES = [(r["host"], r["method"], r["path"]) for r in REQUESTS]


def _op(host: str, method: str, target: str) -> str | None:
    match = CATALOGUE.match(host, method, target)
    return None if match is None else match.operation.operation_id


def _encode_char(c: str) -> str:
    return "".join(f"%{b:02X}" for b in c.encode())


@st.composite
def respelled(draw: st.DrawFn, path: str) -> str:
    """``path`` put through a random sequence of spellings an origin server reads the same."""
    segments = path.strip("/").split("/")
    out: list[str] = []
    for segment in segments:
        chars = []
        for c in segment:
            how = draw(st.sampled_from(["keep", "keep", "keep", "encode", "double", "case"]))
            if how == "encode":
                chars.append(_encode_char(c))
            elif how == "double":
                chars.append(_encode_char(c).replace("%", "%25"))
            elif how == "case":
                chars.append(c.swapcase())
            else:
                chars.append(c)
        segment = "".join(chars)
        if draw(st.booleans()):
            segment += ";" + draw(st.sampled_from(["x=1", "jsessionid=abc", ""]))
        prefix = draw(st.sampled_from(["", "", "./", "zz/../", "./zz/../", "/"]))
        out.append(prefix + segment)
    separators = [draw(st.sampled_from(["/", "/", "//", "%2F", "%2f", "\\", "/./"])) for _ in out]
    text = "".join(sep + seg for sep, seg in zip(separators, out, strict=True))
    if draw(st.booleans()):
        text += draw(st.sampled_from(["/", "//", "/.", "/./"]))
    return text


@pytest.mark.parametrize(("host", "method", "target"), EXAMPLES, ids=[f"{h}{t[:40]}" for h, _, t in EXAMPLES])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_every_spelling_of_an_operations_path_is_that_operation(
    host: str, method: str, target: str, data: st.DataObject
) -> None:
    path, _, query = target.partition("?")
    spelled = data.draw(respelled(path))
    assert canonical_path(spelled).casefold() == canonical_path(path).casefold()
    expected = _op(host, method, target)
    assert expected is not None
    assert _op(host, method, spelled + (f"?{query}" if query else "")) == expected


PATH_ALPHABET = st.sampled_from([*"abcfnortv/._-;=%2F5C3", "backend-api", "conversation", "api", ".."])


@settings(max_examples=400, deadline=None)
@given(
    a=st.lists(PATH_ALPHABET, max_size=14).map("".join),
    b=st.lists(PATH_ALPHABET, max_size=14).map("".join),
    method=st.sampled_from(["POST", "PUT", "GET"]),
    host=st.sampled_from(["chatgpt.com", "claude.ai", "gemini.google.com", "www.perplexity.ai"]),
)
def test_paths_with_one_canonical_form_map_to_one_operation(a: str, b: str, method: str, host: str) -> None:
    a, b = "/" + a, "/" + b
    if canonical_path(a) == canonical_path(b):
        assert _op(host, method, a) == _op(host, method, b)
    # and a path is always the operation of its own canonical form
    assert _op(host, method, a) == _op(host, method, canonical_path(a))


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("/backend-api/conversation/", "/backend-api/conversation"),
        ("//backend-api/conversation", "/backend-api/conversation"),
        ("/backend-api//conversation", "/backend-api/conversation"),
        ("/backend-api/f/%63onversation", "/backend-api/f/conversation"),
        ("/backend-api%2Fconversation", "/backend-api/conversation"),
        ("/./backend-api/conversation", "/backend-api/conversation"),
        ("/x/../backend-api/conversation", "/backend-api/conversation"),
        ("/backend-api/conversation;x=1", "/backend-api/conversation"),
        ("/backend-api/%252e%252e/backend-api/conversation", "/backend-api/conversation"),
        ("/../../backend-api\\conversation", "/backend-api/conversation"),
        ("/", "/"),
        ("", "/"),
    ],
)
def test_canonical_path_examples(raw: str, canonical: str) -> None:
    assert canonical_path(raw) == canonical


def test_issue_examples_map_to_send_prompt_case_insensitively() -> None:
    for raw in ("/Backend-API/conversation", "/BACKEND-API/F/CONVERSATION/", "/backend-api/f/%43onversation"):
        assert _op("chatgpt.com", "post", raw) == "chatgpt.send_prompt", raw


def test_query_and_host_canonical_forms() -> None:
    assert canonical_query("rpcids=%66uVx7&rt=c") == "rpcids=fuVx7&rt=c"
    assert _op("gemini.google.com", "POST", "/_/BardChatUi/data/batchexecute?rpcids=%66uVx7") == "gemini.share"
    assert canonical_host("ChatGPT.COM.:443") == "chatgpt.com"
    assert canonical_host("[::1]:8080") == "::1"
    assert CATALOGUE.app_for_host("CHATGPT.com.") is not None
    assert CATALOGUE.app_for_host("notchatgpt.com") is None
    assert CATALOGUE.app_for_host("") is None


def test_path_shape_keeps_the_route_and_drops_the_data() -> None:
    from promptfence.core import path_shape

    assert path_shape("/backend-api/brand-new-endpoint") == "/backend-api/brand-new-endpoint"
    shape = path_shape("/api/organizations/0f1e-22/chat_conversations/c9/completion")
    assert shape == "/api/organizations/{*}/chat_conversations/..."
    assert "219" not in path_shape("/lookup/219-09-9999") and path_shape("/") == "/"
