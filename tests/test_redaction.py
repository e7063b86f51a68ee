"""Redact and warn in the addon: typed placeholders before the prompt leaves; coach, then proceed."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http
from mitmproxy.test import taddons, tflow

from policies.policy import parse_policy
from promptfence.core import (
    Action,
    DetectorRun,
    DetectorStatus,
    Finding,
    Inspection,
    Operation,
    Redaction,
    Span,
    Topic,
)
from promptfence.yamlsource import load_yaml_text
from proxy.addon import METADATA_KEY, PromptFenceAddon
from proxy.catalogue import load_catalogue
from proxy.extraction import RequestData
from proxy.identity import ConfiguredIdentity, IdentitySettings, hash_password
from proxy.redaction import RedactionError, redact_text, rewrite_request
from proxy.registry import EXTRACTORS
from tests.support.addon import ListRecorder, chatgpt_flow

POLICY = parse_policy(
    load_yaml_text(
        """
policy: coach
default: allow
on_error: block
rules:
  - id: redact-pii
    match: {operations: SendPrompt, topics: {PII: medium}}
    action: redact
  - id: warn-code
    match: {operations: SendPrompt, topics: {SOURCE_CODE: medium}}
    action: warn
    message: "This looks like source code ({topics})."
  - id: redact-uploads
    match: {operations: UploadFile, topics: {PII: medium}}
    action: redact
""",
        "coach.yaml",
    ),
    "coach.yaml",
)


class Policies:
    def decide(self, operation: Operation, inspection: Inspection):  # type: ignore[no-untyped-def]
        from policies.policy import evaluate

        return evaluate([POLICY], operation, inspection)


class EmailInspector:
    """Finds e-mail addresses (with spans) and marks prompts containing 'def ' as code."""

    async def inspect(self, operation: Operation) -> Inspection:
        findings: list[Finding] = []
        for word in set(operation.prompt.replace("\n", " ").split(" ")):
            if "@" in word:
                start = 0
                while (i := operation.prompt.find(word, start)) >= 0:
                    findings.append(Finding("t", "pii.EMAIL_ADDRESS", Topic.PII, 0.95, Span(i, i + len(word)), "rule"))
                    start = i + 1
        topics = {Topic.PII: 0.95} if findings else {}
        if "def " in operation.prompt:
            topics[Topic.SOURCE_CODE] = 0.9
        return Inspection(tuple(findings), topics, (DetectorRun("t", DetectorStatus.OK, 1.0),))


def _body(*parts: str, assistant: str = "Sure, here you go.") -> bytes:
    return json.dumps(
        {
            "action": "next",
            "conversation_id": "c-1",
            "messages": [
                {"id": "m-1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": list(parts)}},
                {"id": "a-1", "author": {"role": "assistant"}, "content": {"content_type": "text", "parts": [assistant]}},
            ],
        }
    ).encode()


def _addon(identity: ConfiguredIdentity | None = None) -> tuple[PromptFenceAddon, ListRecorder]:
    recorder = ListRecorder()
    return PromptFenceAddon(load_catalogue(), EmailInspector(), Policies(), recorder, identity), recorder


async def test_redact_replaces_spans_with_typed_placeholders_before_forwarding() -> None:
    addon, recorder = _addon()
    with taddons.context(addon):
        flow = chatgpt_flow(_body("Write to jane.roe@example.com and", "cc bob@example.org please"))
        await addon.request(flow)
        assert flow.response is None  # forwarded
        sent = json.loads(flow.request.content or b"")
        assert sent["messages"][0]["content"]["parts"] == ["Write to [EMAIL_ADDRESS] and", "cc [EMAIL_ADDRESS] please"]
        assert sent["messages"][1]["content"]["parts"] == ["Sure, here you go."]  # assistant history untouched
        assert int(flow.request.headers["content-length"]) == len(flow.request.raw_content or b"")
        flow.response = tflow.tresp(content=b"data: [DONE]\n\n")
        addon.responseheaders(flow)
        await addon.response(flow)
    (record,) = recorder.records
    meta = record.metadata()
    assert meta["decision"]["action"] == "redact" and meta["decision"]["outcome"] == "redacted"
    assert meta["decision"]["redacted"] == {"EMAIL_ADDRESS": 2}
    assert "jane.roe" not in json.dumps(meta)  # kinds and counts, never the values
    assert "jane.roe@example.com" in record.payload.prompt  # the sealed payload keeps what the user wrote


async def test_redact_where_the_app_request_cannot_be_rewritten_blocks() -> None:
    """Claude has no request rewriter: a redact decision there blocks instead of leaking."""
    addon, recorder = _addon()
    with taddons.context(addon):
        flow = chatgpt_flow(
            json.dumps({"prompt": "mail jane.roe@example.com"}).encode(),
            "/api/organizations/o/chat_conversations/c/completion",
        )
        flow.request.host = "claude.ai"
        flow.client_conn.sni = "claude.ai"
        flow.request.headers["Host"] = "claude.ai"
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    assert b"jane.roe" not in (flow.response.content or b"")
    decision = recorder.records[0].decision
    assert decision.action is Action.BLOCK and decision.rule_ids == ("redact-pii",)
    assert decision.outcome == "blocked: no request rewriter for claude.completion"
    with pytest.raises(RedactionError, match="no request rewriter"):
        rewrite_request("chatgpt.file_metadata", RequestData(body=b"{}"), "a@b.c", (Redaction(0, 5, "EMAIL_ADDRESS"),))


async def test_redact_on_a_body_that_does_not_hold_the_prompt_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    addon, recorder = _addon()
    import proxy.addon as addon_module

    def broken(flow: http.HTTPFlow, *args: object) -> None:
        raise RedactionError("the body does not hold the inspected prompt")

    monkeypatch.setattr(addon_module, "apply_to_flow", broken)
    with taddons.context(addon):
        flow = chatgpt_flow(_body("mail jane.roe@example.com"))
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    assert b"jane.roe" not in flow.response.content  # type: ignore[operator]
    decision = recorder.records[0].decision
    assert decision.action is Action.BLOCK and decision.outcome.startswith("blocked: the body does not hold")


async def test_warn_stops_the_first_send_and_an_identical_resend_proceeds_and_is_recorded() -> None:
    addon, recorder = _addon()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_warn_window=120.0)
        first = chatgpt_flow(_body("def f(): return 1"))
        await addon.request(first)
        assert first.response is not None and first.response.headers["X-PromptFence"] == "warned"
        notice = json.loads(first.response.text.split("\n")[0].removeprefix("data: "))  # type: ignore[union-attr]
        text = notice["message"]["content"]["parts"][0]
        assert "source code (SOURCE_CODE)" in text and "send the same request again within 2 minutes" in text

        different = chatgpt_flow(_body("def g(): return 2"))
        await addon.request(different)
        assert different.response is not None  # another prompt: warned too

        again = chatgpt_flow(_body("def f(): return 1"))
        await addon.request(again)
        assert again.response is None  # proceeds
        again.response = tflow.tresp(content=b"data: [DONE]\n\n")
        addon.responseheaders(again)
        await addon.response(again)

        third = chatgpt_flow(_body("def f(): return 1"))
        await addon.request(third)
        assert third.response is not None  # the resend was used up: warned again
    outcomes = [r.decision.outcome for r in recorder.records]
    assert outcomes.count("stopped with warning") == 3 and "proceeded after warning" in outcomes
    assert all(r.decision.action is Action.WARN and r.decision.rule_ids == ("warn-code",) for r in recorder.records)


async def test_warn_window_expires() -> None:
    addon, _ = _addon()
    with taddons.context(addon) as tctx:
        tctx.configure(addon, promptfence_warn_window=0.05)
        await addon.request(chatgpt_flow(_body("def f(): pass")))
        await asyncio.sleep(0.1)
        late = chatgpt_flow(_body("def f(): pass"))
        await addon.request(late)
        assert late.response is not None


async def test_a_warned_prompt_that_proceeds_is_still_redacted() -> None:
    addon, recorder = _addon()
    with taddons.context(addon):
        await addon.request(chatgpt_flow(_body("def f(): mail('ann@example.com')")))
        again = chatgpt_flow(_body("def f(): mail('ann@example.com')"))
        await addon.request(again)
    assert again.response is None
    assert b"ann@example.com" not in (again.request.content or b"")
    assert b"[EMAIL_ADDRESS]" in (again.request.content or b"")
    assert again.metadata[METADATA_KEY].decision.outcome == "proceeded after warning; redacted"
    assert recorder.records[0].decision.outcome == "stopped with warning"


async def test_addon_answers_407_and_strips_identity_headers(tmp_path: Path) -> None:
    identity = ConfiguredIdentity(
        IdentitySettings(users={"alice": hash_password("pw", n=2**10)}, auth_required=True, header="X-User")
    )
    addon, _ = _addon(identity)
    with taddons.context(addon):
        flow = chatgpt_flow(_body("hi"))
        flow.request.headers["X-User"] = "hannah"
        hook = addon.requestheaders(flow)
        assert hook is not None
        await hook
        assert flow.response is not None and flow.response.status_code == 407
        assert "Proxy-Authenticate" in flow.response.headers and "X-User" not in flow.request.headers
        ok = chatgpt_flow(_body("hi"))
        ok.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(b"alice:pw").decode()
        hook = addon.requestheaders(ok)
        assert hook is not None
        await hook
        assert ok.response is None and "Proxy-Authorization" not in ok.request.headers
        connect = chatgpt_flow(b"")
        connect.request.method = "CONNECT"
        await addon.http_connect(connect)
        assert connect.response is not None and connect.response.status_code == 407


# -- the rewriter itself -----------------------------------------------------------------------


@given(
    parts=st.lists(st.text(alphabet="ab @.\n", max_size=12), min_size=1, max_size=4),
    raw_spans=st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=4),
)
def test_rewritten_body_always_extracts_to_the_redacted_prompt(
    parts: list[str], raw_spans: list[tuple[int, int]]
) -> None:
    from policies.policy import merge_redactions

    body = _body(*parts)
    prompt = EXTRACTORS["chatgpt.conversation"](RequestData(body=body)).prompt
    spans = merge_redactions(
        Redaction(s, min(s + n, len(prompt)), "EMAIL_ADDRESS") for s, n in raw_spans if s < len(prompt)
    )
    spans = tuple(r for r in spans if r.start < r.end)
    try:
        rewritten = rewrite_request("chatgpt.conversation", RequestData(body=body), prompt, spans)
    except RedactionError:
        # refused (so the addon blocks) only when a span crosses the boundary between two parts
        assert len(parts) > 1 and any("\n" in prompt[r.start : r.end] for r in spans)
        return
    assert EXTRACTORS["chatgpt.conversation"](RequestData(body=rewritten)).prompt == redact_text(prompt, spans)


def test_prepare_drafts_are_redacted_too() -> None:
    for partial in ("mail ann@x.io", {"content": {"parts": ["mail ann@x.io"]}}):
        body = json.dumps({"partial_query": partial}).encode()
        out = rewrite_request(
            "chatgpt.prepare", RequestData(body=body), "mail ann@x.io", (Redaction(5, 13, "EMAIL_ADDRESS"),)
        )
        assert b"ann@x.io" not in out and b"[EMAIL_ADDRESS]" in out


async def test_an_email_hidden_in_an_assistant_message_cannot_be_redacted_so_it_blocks() -> None:
    """Requests carry no assistant messages; one that does is inspected as other request fields,
    and evidence there has no place in the prompt to redact, so the redact rule blocks."""
    addon, recorder = _addon()
    with taddons.context(addon):
        flow = chatgpt_flow(_body("Write a poem", assistant="mail jane.roe@example.com"))
        await addon.request(flow)
    assert flow.response is not None and flow.response.headers["X-PromptFence"] == "blocked"
    assert b"jane.roe" in (flow.request.content or b"")  # never forwarded, so nothing was rewritten
    assert recorder.records[0].decision.action is Action.BLOCK
