"""The walking skeleton end to end: ``promptfence up`` -> real mitmdump over real TLS -> stand-in.

One module-scoped deployment: the README's run command (``promptfence up``) with a config file
that pins chatgpt.com to a local HTTPS stand-in. curl talks to the proxy and trusts the CA the
proxy generated; the proxy verifies the stand-in against a test CA. Every prompt carries a
unique canary so the last test can prove no prompt text leaked into any output or file.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deployment import curl, proxy_config, run_cli, start_standin
from tests.support.procs import child_env, free_port, port_open, stop, wait_for

pytestmark = pytest.mark.slow

CANARY_BLOCKED = f"canary-{uuid.uuid4().hex}"
CANARY_ALLOWED = f"canary-{uuid.uuid4().hex}"


@dataclass
class Deployment:
    root: Path
    home: Path
    config: Path
    proxy_port: int
    inspector_port: int
    ca_cert: Path
    received: Path
    up: subprocess.Popen[bytes]
    up_out: Path
    up_err: Path
    standin: subprocess.Popen[bytes]
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, self.env, *args)

    def curl_chatgpt(self, payload: dict[str, object], path: str = "/backend-api/f/conversation") -> tuple[str, str]:
        """curl over real TLS through the proxy; the response head and body."""
        result = curl(
            self.proxy_port,
            self.ca_cert,
            self.env,
            f"https://chatgpt.com{path}",
            data=json.dumps(payload),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        return result.headers, result.body


def _send_prompt(text: str, conversation_id: str | None = None) -> dict[str, object]:
    body: dict[str, object] = {
        "action": "next",
        "messages": [
            {
                "id": str(uuid.uuid4()),
                "author": {"role": "user"},
                "content": {"content_type": "text", "parts": [text]},
                "metadata": {},
            }
        ],
        "parent_message_id": "client-created-root",
        "model": "auto",
        "supported_encodings": ["v1"],
    }
    if conversation_id:
        body["conversation_id"] = conversation_id
    return body


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("e2e")
    home = root / "home"
    env = child_env(home)
    # No stand-in inspector: ``promptfence up`` starts the real one.
    standin = start_standin(root, ["chatgpt.com", "chat.openai.com"], env, root / "standin-received.jsonl")
    proxy_port, inspector_port = free_port(), free_port()
    config = root / "promptfence.yaml"
    config.write_text(proxy_config(home, proxy_port, standin, ["chatgpt.com"], f"port: {inspector_port}"))
    up_out, up_err = root / "up.stdout", root / "up.stderr"
    with up_out.open("wb") as out, up_err.open("wb") as err:
        up = subprocess.Popen(
            [sys.executable, "-m", "promptfence", "up", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=err,
        )
    dep = Deployment(
        root,
        home,
        config,
        proxy_port,
        inspector_port,
        home / "mitmproxy" / "mitmproxy-ca-cert.pem",
        standin.received,
        up,
        up_out,
        up_err,
        standin.process,
        env,
    )
    try:
        standin.wait()
        wait_for(lambda: "PromptFence is running." in up_out.read_text(), 240, "promptfence up banner", up)
        yield dep
    finally:
        stop(up, signal.SIGINT)
        stop(standin.process)


def test_banner_says_where_the_proxy_and_ca_are(deployment: Deployment) -> None:
    banner = deployment.up_out.read_text()
    assert f"127.0.0.1:{deployment.proxy_port}" in banner
    assert str(deployment.ca_cert) in banner
    assert deployment.ca_cert.is_file()
    assert "generated admin key pair" in banner  # no key configured: one was made


def test_prompt_with_email_and_ssn_is_blocked_with_a_readable_reply(deployment: Deployment) -> None:
    text = f"Please update the record for Jane Roe, jane.roe@example.com, SSN 219-09-9999. {CANARY_BLOCKED}"
    headers, body = deployment.curl_chatgpt(_send_prompt(text, "conv-blocked-1"))
    assert headers.splitlines()[0].split()[1] == "200"
    assert "x-promptfence: blocked" in headers.lower()
    events = [line.removeprefix("data: ") for line in body.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    message = json.loads(events[0])
    assert message["conversation_id"] == "conv-blocked-1"
    assert message["message"]["author"]["role"] == "assistant"
    notice = message["message"]["content"]["parts"][0]
    assert "PromptFence blocked this prompt" in notice and "PII" in notice
    assert CANARY_BLOCKED not in body  # the notice never echoes the prompt
    assert CANARY_BLOCKED not in deployment.received.read_text()  # it never left


def test_harmless_prompt_reaches_upstream(deployment: Deployment) -> None:
    text = f"Write a haiku about autumn leaves. {CANARY_ALLOWED}"
    headers, body = deployment.curl_chatgpt(_send_prompt(text, "conv-allowed-1"))
    assert headers.splitlines()[0].split()[1] == "200"
    assert "x-promptfence" not in headers.lower()
    assert "Stand-in answer" in body and "[DONE]" in body
    received = [json.loads(line) for line in deployment.received.read_text().splitlines()]
    assert any(CANARY_ALLOWED in r["body"] and r["host"] == "chatgpt.com" for r in received)


def _records(deployment: Deployment) -> list[dict[str, object]]:
    result = deployment.cli("logs", "list", "--json")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_logs_list_shows_both(deployment: Deployment) -> None:
    wait_for(lambda: len(_records(deployment)) >= 2, 30, "two log records")
    records = {r["conversation_id"]: r for r in _records(deployment)}
    blocked, allowed = records["conv-blocked-1"], records["conv-allowed-1"]
    assert blocked["decision"]["action"] == "block"  # type: ignore[index]
    assert "block-pii-in-prompts" in blocked["decision"]["rule_ids"]  # type: ignore[index]
    assert blocked["topics"]["PII"]["confidence"] in ("medium", "high")  # type: ignore[index]
    assert allowed["decision"]["action"] == "allow"  # type: ignore[index]
    assert allowed["app"] == "chatgpt" and allowed["operation"] == "SendPrompt"
    assert allowed["response_bytes"] > 0  # type: ignore[operator]
    table = deployment.cli("logs", "list")
    assert "conv-blocked-1" in table.stdout and "block" in table.stdout


def test_logs_show_decrypts_with_the_key_and_refuses_the_wrong_one(deployment: Deployment) -> None:
    records = {r["conversation_id"]: r for r in _records(deployment)}
    record_id = str(records["conv-blocked-1"]["record_id"])
    shown = deployment.cli("logs", "show", record_id, "--key", str(deployment.home / "keys" / "admin.key"))
    assert shown.returncode == 0, shown.stderr
    assert CANARY_BLOCKED in shown.stdout and "jane.roe@example.com" in shown.stdout

    other = deployment.root / "other"
    gen = deployment.cli("keys", "generate", "--private", str(other / "x.key"), "--public", str(other / "x.pub"))
    assert gen.returncode == 0, gen.stderr
    wrong = deployment.cli("logs", "show", record_id, "--key", str(other / "x.key"))
    assert wrong.returncode == 2
    assert "sealed to key id" in wrong.stderr
    assert CANARY_BLOCKED not in wrong.stdout + wrong.stderr


def test_no_prompt_text_in_any_output_or_file(deployment: Deployment) -> None:
    """The canary planted in both prompts appears nowhere but in the stand-in's own record."""
    wait_for(lambda: len(_records(deployment)) >= 2, 30, "records")
    stop(deployment.up, signal.SIGINT)
    assert deployment.up.returncode == 0, deployment.up_err.read_text()[-2000:]
    assert not port_open(deployment.proxy_port) and not port_open(deployment.inspector_port)
    checked = 0
    for path in [deployment.up_out, deployment.up_err, *deployment.home.rglob("*")]:
        if path.is_file():
            data = path.read_bytes()
            checked += 1
            for canary in (CANARY_BLOCKED, CANARY_ALLOWED):
                assert canary.encode() not in data, f"prompt text leaked into {path}"
    assert checked >= 4  # stdout, stderr, the database, the keys (at least)
    # The logs exist (the proxy's one line per operation; issue 18 made the inspector's per-
    # inspection line DEBUG); no text in them.
    assert "op=chatgpt.send_prompt prompt_chars=" in deployment.up_out.read_text()
