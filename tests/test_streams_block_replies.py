"""Issue 16, item 4: a fixture of every block reply shape (docs/block-replies.md says what each app does with it).

``tests/fixtures/streams/block_replies/<name>.body`` is the reply as made for a fixed notice and
request ids (status and headers in ``<name>.json``). The makers must keep producing that shape
(ids, times and the lengths they change masked), and every stream reply must decode, with the
app's own answer decoder, to the notice as one complete answer: what the app renders.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from proxy.registry import BLOCK_REPLIES, DECODERS
from proxy.tap import decode_whole
from proxy.wire.base import Extraction

REPLIES = Path(__file__).parent / "fixtures" / "streams" / "block_replies"
NOTICE = "PromptFence blocked this prompt: it appears to contain personal information (PII)."
EXTRACTION = Extraction(conversation_id="conv-0001", message_id="msg-0001")
STREAM_DECODER = {
    "chatgpt.assistant_notice": "chatgpt.sse",
    "claude.assistant_notice": "claude.sse",
    "gemini.assistant_notice": "gemini.frames",
    "perplexity.assistant_notice": "perplexity.sse",
}
_VARYING = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "UUID"),
    (re.compile(r"\b(c|r|rc)_[0-9a-f]{16}"), r"\1_ID"),
    (re.compile(r"chatcompl_[0-9a-f]{24}"), "chatcompl_ID"),
    (re.compile(r'"create_time": [0-9.e+]+'), '"create_time": T'),
]


def _masked(body: bytes) -> str:
    text = body.decode("utf-8")
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    return text


def test_there_is_a_fixture_for_every_block_reply() -> None:
    assert sorted(p.stem for p in REPLIES.glob("*.body")) == sorted(BLOCK_REPLIES)


@pytest.mark.parametrize("name", sorted(BLOCK_REPLIES))
def test_the_maker_still_makes_the_fixture_shape(name: str) -> None:
    reply = BLOCK_REPLIES[name](NOTICE, EXTRACTION)
    meta = json.loads((REPLIES / f"{name}.json").read_text())
    assert reply.status == meta["status"] and dict(reply.headers) == meta["headers"]
    assert _masked(reply.body) == _masked((REPLIES / f"{name}.body").read_bytes())


@pytest.mark.parametrize("name", sorted(STREAM_DECODER))
def test_a_stream_reply_decodes_to_the_notice_as_a_complete_answer(name: str) -> None:
    answer = decode_whole(DECODERS[STREAM_DECODER[name]](), (REPLIES / f"{name}.body").read_bytes())
    assert (answer.text, answer.complete, answer.error) == (NOTICE, True, None)
    assert answer.unknown_shapes == 0


@pytest.mark.parametrize("name", sorted(set(BLOCK_REPLIES) - set(STREAM_DECODER)))
def test_an_error_reply_is_a_403_that_carries_the_notice(name: str) -> None:
    body = (REPLIES / f"{name}.body").read_bytes().decode()
    assert json.loads((REPLIES / f"{name}.json").read_text())["status"] == 403
    assert NOTICE in (body if name == "text.plain_403" else json.dumps(json.loads(body), ensure_ascii=False))
