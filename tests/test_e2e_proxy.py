"""Issue 3 through the real proxy: a real ``promptfence capture`` (mitmdump + the PromptFence
addon + the recorder) over real TLS in front of the HTTPS stand-in, one deployment for the module.

- a ChatGPT Share is blocked by a one-line policy;
- a slow non-GenAI download and a slow GenAI answer both reach the client chunk by chunk
  (the first chunk arrives before upstream has finished): nothing is buffered;
- the streamed answer lands in the log record (length, conversation id from the stream);
- the flows recorded to a HAR and a .mitm file replay offline with the expected decisions,
  and ``--policy`` shows what a changed policy decides differently.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from promptfence.cli import main as promptfence_main
from promptfence.core import text_digest
from tests.support.deployment import GENAI_HOSTS, ProxyDeployment, start_proxy
from tests.support.procs import wait_for
from tests.support.standin import SLOW_PAUSE_S

pytestmark = pytest.mark.slow

NO_SHARING = """policy: no-sharing
default: allow
on_error: allow
rules:
  - {id: no-public-links, match: {operations: [Share]}, action: block, message: "Sharing conversations is disabled by policy."}
"""
ALLOW_SHARING_BLOCK_CHATGPT = """policy: what-if
default: allow
on_error: allow
rules:
  - {id: chatgpt-off, match: {apps: [chatgpt], operations: [SendPrompt]}, action: block}
"""
PII_PROMPT = "Please update the record for Jane Roe, jane.roe@example.com, SSN 219-09-9999."
CLEAN_PROMPT = "Write a haiku about autumn leaves."
SLOW_PROMPT = "Tell me a slow story."


def _chatgpt_body(text: str, conversation_id: str | None = None) -> str:
    body: dict[str, object] = {
        "action": "next",
        "messages": [
            {"id": str(uuid.uuid4()), "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
        ],
        "parent_message_id": "client-created-root",
        "model": "auto",
        "supported_encodings": ["v1"],
    }
    if conversation_id:
        body["conversation_id"] = conversation_id
    return json.dumps(body)


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    root = tmp_path_factory.mktemp("e2e-proxy")
    mitm, har = root / "capture.mitm", root / "capture.har"
    dep = start_proxy(
        root,
        command=["capture", "--mitm", str(mitm), "--har", str(har)],
        policies={"no-sharing.yaml": NO_SHARING},
        hosts=[*GENAI_HOSTS, "slow.example.net"],
    )
    dep.extra.update(mitm=mitm, har=har)
    try:
        yield dep
    finally:
        dep.stop()


def _records(dep: ProxyDeployment) -> list[dict[str, Any]]:
    result = dep.cli("logs", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_chatgpt_share_is_blocked_by_a_one_line_policy(deployment: ProxyDeployment) -> None:
    body = json.dumps({"conversation_id": "conv-to-share", "current_node_id": "a-1", "is_anonymous": True})
    result = deployment.curl(
        "https://chatgpt.com/backend-api/share/create", data=body, headers={"Content-Type": "application/json"}
    )
    assert result.status == 403
    assert "x-promptfence: blocked" in result.headers.lower()
    assert json.loads(result.body)["detail"]["message"] == "Sharing conversations is disabled by policy."
    assert not any(r["path"] == "/backend-api/share/create" for r in deployment.received_requests())
    # The same host's other operations still pass (the rule is about Share only).
    other = deployment.curl("https://chatgpt.com/backend-api/models")
    assert other.status == 200 and "x-promptfence" not in other.headers.lower()


def _first_chunk_timing(
    deployment: ProxyDeployment, host: str, method: str, path: str, **kw: Any
) -> tuple[float, float, bytes]:
    conn = deployment.tunnel(host)
    try:
        started = time.monotonic()
        conn.request(method, path, **kw)
        response = conn.getresponse()
        assert response.status == 200
        first = response.read1(65536)
        first_at = time.monotonic() - started
        rest = response.read()
        return first_at, time.monotonic() - started, first + rest
    finally:
        conn.close()


def test_non_genai_traffic_streams_through_unbuffered(deployment: ProxyDeployment) -> None:
    first_at, total, body = _first_chunk_timing(deployment, "slow.example.net", "GET", "/stream/slow")
    assert body == b"first chunk\nsecond chunk\nlast chunk\n"
    assert total >= 2 * SLOW_PAUSE_S  # upstream really was slow...
    assert first_at < SLOW_PAUSE_S  # ...and the first chunk still came before upstream finished


def test_genai_answer_streams_undelayed_and_its_text_reaches_the_log(deployment: ProxyDeployment) -> None:
    first_at, total, body = _first_chunk_timing(
        deployment,
        "chatgpt.com",
        "POST",
        "/backend-api/f/conversation",
        body=_chatgpt_body(SLOW_PROMPT),
        headers={"Content-Type": "application/json", "X-Standin-Delay": "2"},
    )
    assert b"Stand-in answer" in body and body.rstrip().endswith(b"data: [DONE]")
    assert total >= 2 and first_at < 1.5
    # Records carry a keyed HMAC of the prompt (the key stays with the proxy), never a plain digest.
    from logs.store import load_or_create_digest_key, prompt_hmac

    wait_for(lambda: (deployment.home / "keys" / "log-digest.key").is_file(), 30, "the log digest key")
    digest = prompt_hmac(load_or_create_digest_key(deployment.home / "keys" / "log-digest.key"), SLOW_PROMPT)
    wait_for(lambda: any(r.get("prompt_hmac") == digest for r in _records(deployment)), 30, "the log record")
    record = next(r for r in _records(deployment) if r.get("prompt_hmac") == digest)
    assert "prompt_digest" not in record and text_digest(SLOW_PROMPT) not in json.dumps(record)
    assert record["response_chars"] == len("Stand-in answer from upstream.")
    assert record["response_decode_error"] is None
    assert record["conversation_id"] == "c-standin"  # the request had none: taken from the stream


GEMINI_FORM = urllib.parse.urlencode(
    {"f.req": json.dumps([None, json.dumps([["Plan a picnic for four people", 0, None, []], ["en"], ["", "", ""]])])}
)
CLAUDE_PATH = "/api/organizations/org-1/chat_conversations/conv-claude-1/completion"


@pytest.fixture(scope="module")
def captured(deployment: ProxyDeployment) -> dict[str, Path]:
    """Traffic for every app through the capturing proxy; then the proxy stops and writes the HAR."""
    json_headers = {"Content-Type": "application/json"}
    for text, conv in ((PII_PROMPT, "conv-pii"), (CLEAN_PROMPT, "conv-clean")):
        result = deployment.curl(
            "https://chatgpt.com/backend-api/f/conversation", data=_chatgpt_body(text, conv), headers=json_headers
        )
        assert result.status == 200 and "[DONE]" in result.body
    share = deployment.curl(
        "https://chatgpt.com/backend-api/share/create",
        data=json.dumps({"conversation_id": "conv-clean", "current_node_id": "a-1"}),
        headers=json_headers,
    )
    assert share.status == 403
    claude = deployment.curl(
        f"https://claude.ai{CLAUDE_PATH}",
        data=json.dumps({"prompt": "Suggest three names for a cat.", "attachments": []}),
        headers=json_headers,
    )
    gemini = deployment.curl(
        "https://gemini.google.com/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate?rt=c",
        data=GEMINI_FORM,
        headers={"Content-Type": "application/x-www-form-urlencoded;charset=utf-8"},
    )
    perplexity = deployment.curl(
        "https://www.perplexity.ai/rest/sse/perplexity_ask",
        data=json.dumps({"query_str": "What is the capital of France?", "params": {"mode": "concise"}}),
        headers=json_headers,
    )
    assert claude.status == gemini.status == perplexity.status == 200
    assert deployment.stop() == 0, deployment.proxy_log.read_text()[-3000:]
    mitm, har = deployment.extra["mitm"], deployment.extra["har"]
    assert mitm.is_file() and har.is_file()
    assert mitm.stat().st_mode & 0o777 == 0o600 and har.stat().st_mode & 0o777 == 0o600
    return {"mitm": mitm, "har": har, "config": deployment.config}


def _replay(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[str, str]:
    capsys.readouterr()
    assert promptfence_main(["replay", *args]) == 0
    out = capsys.readouterr()
    return out.out, out.err


EXPECTED = {  # (operation id, conversation id or None) -> (action, rule id)
    ("chatgpt.send_prompt", "conv-pii"): ("block", "block-pii-in-prompts"),
    ("chatgpt.send_prompt", "conv-clean"): ("allow", None),
    ("chatgpt.share", None): ("block", "no-public-links"),
    ("claude.send_prompt", None): ("allow", None),
    ("gemini.send_prompt", None): ("allow", None),
    ("perplexity.send_prompt", None): ("allow", None),
}


@pytest.mark.parametrize("kind", ["har", "mitm"])
def test_replay_prints_the_expected_decisions(
    captured: dict[str, Path], kind: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMPTFENCE_HOME", str(captured["config"].parent / "home"))
    out, _ = _replay(capsys, str(captured[kind]), "--json", "--config", str(captured["config"]))
    rows = [json.loads(line) for line in out.splitlines()]
    for (operation_id, conversation), (action, rule) in EXPECTED.items():
        matching = [
            r
            for r in rows
            if r["operation_id"] == operation_id and (conversation is None or r["conversation_id"] == conversation)
        ]
        assert matching, f"{operation_id} missing from the {kind} replay"
        row = matching[0]
        assert row["decision"]["action"] == action, row
        rules = row["decision"]["rule_ids"]
        assert (rule in rules) if rule else all(r.endswith(":default") for r in rules), row
    assert all("prompt_digest" not in r and "answer_digest" not in r for r in rows)  # no guessable hashes
    sends = [r for r in rows if r["operation_id"] == "chatgpt.send_prompt"]
    pii = next(r for r in sends if r["conversation_id"] == "conv-pii")
    assert pii["topics"]["PII"]["confidence"] in ("medium", "high")
    clean = next(r for r in sends if r["conversation_id"] == "conv-clean")
    assert clean["answer_chars"] == len("Stand-in answer from upstream.") and clean["response_decode_error"] is None
    apps = {r["app"]: r for r in rows}
    assert apps["claude"]["conversation_id"] == "conv-claude-1"
    assert apps["gemini"]["answer_chars"] == len("Paris is the capital of France.")
    assert apps["perplexity"]["conversation_id"] == "c0000000-0000-4000-8000-000000000001"  # from the stream
    assert all(r["user"] == "ip:127.0.0.1" for r in rows)
    assert PII_PROMPT not in out and "jane.roe" not in out  # topics and decisions only, never the prompt


def test_replay_table_and_what_if_policy(
    captured: dict[str, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PROMPTFENCE_HOME", str(captured["config"].parent / "home"))
    other = tmp_path / "what-if.yaml"
    other.write_text(ALLOW_SHARING_BLOCK_CHATGPT)
    out, err = _replay(capsys, str(captured["har"]), "--policy", str(other), "--config", str(captured["config"]))
    lines = out.splitlines()
    assert lines[0].split()[:8] == ["FILE", "FLOW", "APP", "OPERATION", "USER", "TOPICS", "DECISION", "ANSWER"]
    share = next(line for line in lines if "chatgpt.share" in line)
    assert "block (no-public-links)" in share and share.rstrip().endswith("yes")  # the what-if allows sharing
    clean_rows = [line for line in lines if "chatgpt.send_prompt" in line and "PII" not in line]
    assert clean_rows and all("block (chatgpt-off)" in line and line.endswith("yes") for line in clean_rows)
    claude = next(line for line in lines if "claude.send_prompt" in line)
    assert "allow" in claude and not claude.endswith("yes")
    assert "decided differently" in err
    assert PII_PROMPT not in out + err and CLEAN_PROMPT not in out + err
