"""Every app operation against its wire fixture: mapping, extraction, answer reconstruction.

The property tests are the acceptance points of issue 3: for every fixture, decoding the
stream split at arbitrary boundaries gives the same answer, and mutated or truncated bodies
never raise out of the decoder (nor out of the response tap the proxy streams through).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from promptfence.core import OperationKind
from proxy.catalogue import load_catalogue
from proxy.registry import BLOCK_REPLIES, DECODERS, EXTRACTORS
from proxy.tap import ResponseTap
from proxy.wire.base import Answer, Extraction, ExtractionError, RequestData
from tests.support.fixtures import WireFixture, load_fixtures

CATALOGUE = load_catalogue()
FIXTURES = load_fixtures()
WITH_ANSWER = [f for f in FIXTURES if f.expected["answer"] is not None]
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _ids(fixtures: list[WireFixture]) -> list[str]:
    return [f.id for f in fixtures]


def _match(fixture: WireFixture) -> Any:
    match = CATALOGUE.match(fixture.host, fixture.method, fixture.path)
    assert match is not None, f"{fixture.id} matches no operation"
    return match


def _request(fixture: WireFixture) -> RequestData:
    return RequestData(
        body=fixture.body,
        path=fixture.bare_path,
        query=fixture.query,
        headers={k.lower(): v for k, v in fixture.headers.items()},
    )


def _decode(fixture: WireFixture, chunks: list[bytes]) -> Answer:
    name = _match(fixture).operation.decoder
    assert name is not None, f"{fixture.id} has an answer but its operation no decoder"
    decoder = DECODERS[name]()
    for chunk in chunks:
        decoder.feed(chunk)
    return decoder.close()


def _answer_dict(answer: Answer) -> dict[str, Any]:
    return {
        "text": answer.text,
        "conversation_id": answer.conversation_id,
        "message_id": answer.message_id,
        "title": answer.title,
        "complete": answer.complete,
    }


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(max(c, 0), len(data)) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def test_every_app_has_a_fixture_for_each_operation_kind() -> None:
    for app in CATALOGUE.apps:
        kinds = {f.expected["kind"] for f in FIXTURES if f.app == app.app}
        used = {op.kind.value for op in app.operations}
        assert OperationKind.UNKNOWN.value in used, f"{app.app} has no catch-all Unknown operation"
        assert kinds >= used, f"{app.app} lacks fixtures for {used - kinds}"
    assert {f.app for f in FIXTURES} == {a.app for a in CATALOGUE.apps}


@pytest.mark.parametrize("fixture", FIXTURES, ids=_ids(FIXTURES))
def test_fixture_maps_to_its_operation_and_extracts(fixture: WireFixture) -> None:
    match = _match(fixture)
    assert match.app.app == fixture.app
    assert match.operation.operation_id == fixture.expected["operation_id"]
    assert match.operation.kind.value == fixture.expected["kind"]
    expected = fixture.expected["extraction"]
    if expected is None:
        assert not match.operation.inspect
        return
    assert match.operation.inspect and match.operation.extractor is not None
    extraction = EXTRACTORS[match.operation.extractor](_request(fixture))
    got = dataclasses.asdict(extraction)
    got["attachments"] = list(got["attachments"])
    assert got.pop("other_text") == ""  # set by flowmap.extract, never by an app's extractor
    assert got == expected


@pytest.mark.parametrize("fixture", WITH_ANSWER, ids=_ids(WITH_ANSWER))
def test_fixture_answer_is_reconstructed(fixture: WireFixture) -> None:
    assert fixture.response is not None
    answer = _decode(fixture, [fixture.response])
    assert _answer_dict(answer) == fixture.expected["answer"]
    assert answer.error is None


@pytest.mark.parametrize("fixture", WITH_ANSWER, ids=_ids(WITH_ANSWER))
def test_byte_at_a_time_gives_the_same_answer(fixture: WireFixture) -> None:
    assert fixture.response is not None
    chunks = [fixture.response[i : i + 1] for i in range(len(fixture.response))]
    assert _answer_dict(_decode(fixture, chunks)) == fixture.expected["answer"]


@pytest.mark.parametrize("fixture", WITH_ANSWER, ids=_ids(WITH_ANSWER))
@SETTINGS
@given(data=st.data())
def test_any_chunking_gives_the_same_answer(fixture: WireFixture, data: st.DataObject) -> None:
    assert fixture.response is not None
    cuts = data.draw(st.lists(st.integers(0, len(fixture.response)), max_size=40), label="cuts")
    answer = _decode(fixture, _split(fixture.response, cuts))
    assert _answer_dict(answer) == fixture.expected["answer"]
    assert answer.error is None


def _mutate(body: bytes, ops: list[tuple[int, int, int]]) -> bytes:
    out = bytearray(body)
    for kind, position, value in ops:
        if not out:
            out.append(value)
            continue
        i = position % len(out)
        if kind == 0:
            out[i] = value
        elif kind == 1:
            del out[i]
        elif kind == 2:
            out.insert(i, value)
        else:
            del out[i:]
    return bytes(out)


MUTATION = st.lists(st.tuples(st.integers(0, 3), st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8)


@pytest.mark.parametrize("fixture", WITH_ANSWER, ids=_ids(WITH_ANSWER))
@SETTINGS
@given(ops=MUTATION, cuts=st.lists(st.integers(0, 10**6), max_size=10))
def test_mutated_or_truncated_streams_never_raise_and_pass_through_unchanged(
    fixture: WireFixture, ops: list[tuple[int, int, int]], cuts: list[int]
) -> None:
    assert fixture.response is not None
    body = _mutate(fixture.response, ops)
    chunks = _split(body, [c % (len(body) + 1) for c in cuts])
    name = _match(fixture).operation.decoder
    assert name is not None
    tap = ResponseTap(DECODERS[name]())
    passed = b"".join(tap(chunk) for chunk in chunks) + tap(b"")
    answer = tap.finish()
    assert passed == body  # the user gets exactly the bytes upstream sent
    assert answer is not None and isinstance(answer, Answer)
    assert answer.text is None or isinstance(answer.text, str)
    if answer.error is not None:
        assert fixture.expected["answer"]["text"] not in answer.error  # notes never quote the answer


@pytest.mark.parametrize("fixture", WITH_ANSWER, ids=_ids(WITH_ANSWER))
@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_truncated_stream_is_noted_as_could_not_decode(fixture: WireFixture, fraction: float) -> None:
    assert fixture.response is not None
    answer = _decode(fixture, [fixture.response[: int(len(fixture.response) * fraction)]])
    assert answer.error is not None and not answer.complete


@pytest.mark.parametrize("fixture", [f for f in FIXTURES if f.body], ids=_ids([f for f in FIXTURES if f.body]))
@SETTINGS
@given(ops=MUTATION)
def test_mutated_request_bodies_raise_only_extraction_errors(
    fixture: WireFixture, ops: list[tuple[int, int, int]]
) -> None:
    request = dataclasses.replace(_request(fixture), body=_mutate(fixture.body, ops))
    for extractor in EXTRACTORS.values():
        try:
            result = extractor(request)
        except ExtractionError:
            continue
        assert isinstance(result, Extraction)


NOTICE = "PromptFence blocked this prompt (PII). Remove the personal data and send it again — ✓ 🙂"


@pytest.mark.parametrize("app", ["chatgpt", "claude", "gemini", "perplexity"])
def test_send_prompt_block_reply_is_a_well_formed_answer_or_error_of_the_app(app: str) -> None:
    fixture = next(f for f in FIXTURES if f.app == app and f.name == "send_prompt")
    match = _match(fixture)
    extraction = EXTRACTORS[match.operation.extractor or ""](_request(fixture))
    reply = BLOCK_REPLIES[match.operation.block_reply](NOTICE, extraction)
    assert reply.headers["X-PromptFence"] == "blocked"
    if reply.status == 200:  # an answer in the app's own stream format: the notice must decode back
        decoder = DECODERS[match.operation.decoder or ""]()
        decoder.feed(reply.body)
        answer = decoder.close()
        assert answer.text == NOTICE and answer.complete and answer.error is None
        if extraction.conversation_id:
            assert answer.conversation_id == extraction.conversation_id
    else:
        assert reply.status == 403
        assert NOTICE in json.dumps(json.loads(reply.body), ensure_ascii=False)


@pytest.mark.parametrize("name", sorted(BLOCK_REPLIES))
def test_every_block_reply_carries_the_message(name: str) -> None:
    reply = BLOCK_REPLIES[name](NOTICE, Extraction(conversation_id="c-1"))
    assert NOTICE.encode() in reply.body or NOTICE in json.dumps(json.loads(reply.body), ensure_ascii=False)
    assert reply.headers["X-PromptFence"] == "blocked"


@pytest.mark.parametrize("app", ["chatgpt", "claude", "gemini", "perplexity"])
def test_every_prompt_share_and_upload_operation_has_a_block_reply_of_its_app_or_a_generic_one(app: str) -> None:
    spec = next(a for a in CATALOGUE.apps if a.app == app)
    for op in spec.operations:
        if op.inspect:
            assert op.block_reply.split(".")[0] in (app, "json", "text")
        if op.kind is OperationKind.SEND_PROMPT and op.decoder is not None:
            assert op.block_reply.startswith(app)


@pytest.mark.parametrize(
    ("host", "method", "path", "operation"),
    [
        ("gemini.google.com", "POST", "/_/BardChatUi/data/batchexecute?rpcids=MaZiqc&rt=c", "gemini.unknown"),
        ("gemini.google.com", "POST", "/_/BardChatUi/data/batchexecute?rpcids=MaZiqc,fuVx7", "gemini.share"),
        ("gemini.google.com", "POST", "/_/BardChatUi/data/batchexecute?rpcids=oMH3Zd", "gemini.gem_instructions"),
        ("gemini.google.com", "POST", "/upload", "gemini.unknown"),  # uploads only on content-push
        ("content-push.googleapis.com", "POST", "/upload/?upload_id=x", "gemini.upload_file"),
        ("files.oaiusercontent.com", "PUT", "/file-x?sig=1", "chatgpt.upload_blob"),
        ("chatgpt.com", "PUT", "/backend-api/anything", "chatgpt.unknown"),
        ("chatgpt.com", "PATCH", "/backend-api/share/s-1", "chatgpt.share_publish"),
        ("claude.ai", "POST", "/api/organizations/o/chat_conversations/c/retry_completion", "claude.send_prompt"),
        ("claude.ai", "POST", "/api/generate_chat_title", "claude.title"),
        ("ppl-ai-file-upload.s3.amazonaws.com", "POST", "/", "perplexity.upload_blob"),
        ("www.perplexity.ai", "POST", "/", "perplexity.unknown"),
    ],
)
def test_host_and_query_selectors(host: str, method: str, path: str, operation: str) -> None:
    match = CATALOGUE.match(host, method, path)
    assert match is not None and match.operation.operation_id == operation


def test_unknown_decoder_and_bad_query_regex_are_config_errors_with_positions() -> None:
    from promptfence.errors import ConfigError
    from promptfence.yamlsource import load_yaml_text
    from proxy.catalogue import parse_app

    base = "app: x\nname: X\napp_type: t\nhosts: [a]\noperations:\n- id: x.a\n  kind: Other\n  path: /\n"
    for extra, line, field in [
        ("  decoder: nope\n", 9, "operations[0].decoder"),
        ("  query: '('\n", 9, "operations[0].query"),
    ]:
        with pytest.raises(ConfigError) as info:
            parse_app(load_yaml_text(base + extra, "x.yaml"), "x.yaml")
        assert (info.value.line, info.value.field) == (line, field)
