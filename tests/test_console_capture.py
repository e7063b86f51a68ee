"""Issue 18: ``promptfence capture`` as the README runs it gets *inspected* records.

``promptfence capture --mitm flows.mitm --har flows.har`` with a config whose inspector is local
and not running: capture must start the real inspector itself, say where it listens and what it
records, and every prompt must be inspected by the detectors (not recorded as a fail-closed
block). Stopping capture writes the HAR and stops the inspector it started. A proxy port that
is taken, and ``--no-start-inspector`` with no inspector, are clear errors that name the way out.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deployment import curl, proxy_config, run_cli, start_standin
from tests.support.procs import child_env, free_port, port_open, proxy_python, stop, wait_for

pytestmark = pytest.mark.slow

CANARY = f"canary-{uuid.uuid4().hex}"


@dataclass
class Capture:
    root: Path
    config: Path
    env: dict[str, str]
    proxy_port: int
    inspector_port: int
    ca_cert: Path
    process: subprocess.Popen[bytes]
    out: Path
    mitm: Path
    har: Path


@pytest.fixture(scope="module")
def capture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Capture]:
    root = tmp_path_factory.mktemp("capture")
    home = root / "home"
    env = child_env(home)
    standin = start_standin(root, ["chatgpt.com"], env, root / "standin-received.jsonl")  # no stand-in inspector
    proxy_port, inspector_port = free_port(), free_port()
    config = root / "promptfence.yaml"
    text = proxy_config(home, proxy_port, standin, ["chatgpt.com"], f"port: {inspector_port}")
    config.write_text(text.replace("proxy:\n", f"proxy:\n  metrics_port: {free_port()}\n", 1))
    keys = run_cli(config, env, "keys", "generate")
    assert keys.returncode == 0, keys.stderr
    out, mitm, har = root / "capture.out", root / "flows.mitm", root / "flows.har"
    with out.open("wb") as log:
        process = subprocess.Popen(
            [
                proxy_python(),
                "-m",
                "promptfence",
                "capture",
                "--mitm",
                str(mitm),
                "--har",
                str(har),
                "--config",
                str(config),
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    dep = Capture(
        root,
        config,
        env,
        proxy_port,
        inspector_port,
        home / "mitmproxy" / "mitmproxy-ca-cert.pem",
        process,
        out,
        mitm,
        har,
    )
    try:
        standin.wait()
        wait_for(lambda: port_open(proxy_port) and dep.ca_cert.is_file(), 300, "capture listening", process)
        yield dep
    finally:
        stop(process, signal.SIGTERM)
        stop(standin.process)


def _send(dep: Capture, text: str, conversation: str) -> int:
    body = {
        "action": "next",
        "messages": [
            {"id": str(uuid.uuid4()), "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
        ],
        "parent_message_id": "client-created-root",
        "model": "auto",
        "conversation_id": conversation,
    }
    return curl(
        dep.proxy_port,
        dep.ca_cert,
        dep.env,
        "https://chatgpt.com/backend-api/f/conversation",
        data=json.dumps(body),
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    ).status


def test_capture_starts_an_inspector_and_records_inspected_operations(capture: Capture) -> None:
    banner = capture.out.read_text(errors="replace")
    assert "PromptFence capture is running." in banner
    assert f"http://127.0.0.1:{capture.proxy_port}" in banner
    assert f"http://127.0.0.1:{capture.inspector_port} (started by capture" in banner
    assert str(capture.mitm) in banner and str(capture.har) in banner and "chatgpt.com" in banner
    assert _send(capture, f"Jane Roe, SSN 219-09-9999. {CANARY}", "conv-cap-pii") == 200
    assert _send(capture, f"A haiku about autumn. {CANARY}", "conv-cap-ok") == 200

    def records() -> dict[str, dict[str, object]]:
        listed = run_cli(capture.config, capture.env, "logs", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return {str(r["conversation_id"]): r for r in map(json.loads, listed.stdout.splitlines())}

    wait_for(lambda: len(records()) >= 2, 60, "two records")
    found = records()
    for record in found.values():
        assert record["detectors_failed"] == [], record["detector_errors"]
        assert {"presidio", "secrets"} <= set(record["detectors_run"])  # type: ignore[arg-type]
    pii = found["conv-cap-pii"]
    assert pii["decision"]["action"] == "block"  # type: ignore[index]
    assert "block-pii-in-prompts" in pii["decision"]["rule_ids"]  # type: ignore[index]
    assert found["conv-cap-ok"]["decision"]["action"] == "allow"  # type: ignore[index]

    assert stop(capture.process, signal.SIGTERM) == 0
    wait_for(lambda: not port_open(capture.inspector_port), 30, "the inspector capture started to stop")
    har = json.loads(capture.har.read_text())
    assert len(har["log"]["entries"]) == 2
    assert capture.mitm.stat().st_size > 0 and (capture.har.stat().st_mode & 0o777) == 0o600
    assert "capture: stopped" in capture.out.read_text(errors="replace")
    assert CANARY not in capture.out.read_text(errors="replace")


def test_a_taken_port_and_a_required_missing_inspector_are_clear_errors(tmp_path: Path) -> None:
    env = child_env(tmp_path / "home")
    inspector_port = free_port()
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path / 'home'}\ninspector:\n  port: {inspector_port}\n")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        argv = [
            proxy_python(),
            "-m",
            "promptfence",
            "capture",
            "--har",
            str(tmp_path / "x.har"),
            "--config",
            str(config),
        ]
        result = subprocess.run([*argv, "--port", str(taken)], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"port {taken}" in result.stderr and "--port N" in result.stderr
    result = subprocess.run(
        [*argv, "--port", str(free_port()), "--no-start-inspector"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert f"no inspector answers at http://127.0.0.1:{inspector_port}" in result.stderr
    assert "promptfence inspector" in result.stderr
    assert not (tmp_path / "x.har").exists()
