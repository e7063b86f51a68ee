"""Issue 18: a quiet, readable start, and /metrics, /healthz, /readyz on both processes.

One ``promptfence up`` (what ``make run`` starts: the real inspector and the real proxy) with a
config that pins chatgpt.com to the local HTTPS stand-in. Ten prompts go through it over real
TLS; everything ``up`` and its two processes print is counted: a few start-up lines, the banner,
then exactly one line per inspected operation (no text in it), and nothing else: no mitmproxy
connection lines, no Alembic context lines, no faiss ``ModuleNotFoundError``. Then ``/metrics``
of both processes is parsed with ``prometheus_client``'s own text parser and must count those
ten operations (proxy) and the detectors that inspected them (inspector).
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.support.deployment import curl, proxy_config, run_cli, start_standin
from tests.support.procs import child_env, free_port, stop, wait_for

pytestmark = pytest.mark.slow

CANARY = f"canary-{uuid.uuid4().hex}"
PROMPTS = 10
BLOCKED = 4  # of the ten carry an SSN
BANNER = "PromptFence is running."
# What start-up may print before the banner: the inspector's detectors and address, the
# proxy's address and its metrics address, and the key generated on first start.
MAX_STARTUP_LINES = 8
OPERATION_LINE = re.compile(r"^\[[\d:.]+\] flow=\S+ op=chatgpt\.send_prompt prompt_chars=\d+ topics=\S+ failed=\S+ action=")


@dataclass
class Up:
    root: Path
    config: Path
    env: dict[str, str]
    proxy_port: int
    metrics_port: int
    inspector_port: int
    ca_cert: Path
    process: subprocess.Popen[bytes]
    out: Path
    err: Path

    def output_lines(self, which: str = "both") -> list[str]:
        """Non-blank lines of stdout (the banner and the proxy's log), stderr (the inspector's) or both."""
        paths = {"stdout": [self.out], "stderr": [self.err], "both": [self.out, self.err]}[which]
        text = "".join(p.read_text(errors="replace") for p in paths)
        return [line for line in text.splitlines() if line.strip()]


def _prompt(text: str) -> dict[str, object]:
    return {
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
        "conversation_id": f"conv-quiet-{uuid.uuid4().hex[:8]}",
    }


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    root = tmp_path_factory.mktemp("quiet")
    home = root / "home"
    env = child_env(home)
    standin = start_standin(root, ["chatgpt.com"], env, root / "standin-received.jsonl")
    proxy_port, inspector_port, metrics_port = free_port(), free_port(), free_port()
    config = root / "promptfence.yaml"
    text = proxy_config(home, proxy_port, standin, ["chatgpt.com"], f"port: {inspector_port}")
    config.write_text(text.replace("proxy:\n", f"proxy:\n  metrics_port: {metrics_port}\n", 1))
    out, err = root / "up.stdout", root / "up.stderr"
    with out.open("wb") as o, err.open("wb") as e:
        process = subprocess.Popen(
            [sys.executable, "-m", "promptfence", "up", "--config", str(config)], env=env, stdout=o, stderr=e
        )
    dep = Up(
        root,
        config,
        env,
        proxy_port,
        metrics_port,
        inspector_port,
        home / "mitmproxy" / "mitmproxy-ca-cert.pem",
        process,
        out,
        err,
    )
    try:
        standin.wait()
        wait_for(lambda: BANNER in out.read_text(), 300, "promptfence up banner", process)
        for i in range(PROMPTS):
            text = f"Jane Roe's SSN is 219-09-9999, {CANARY} {i}" if i < BLOCKED else f"A haiku on rain {CANARY} {i}"
            result = curl(
                proxy_port,
                dep.ca_cert,
                env,
                "https://chatgpt.com/backend-api/f/conversation",
                data=json.dumps(_prompt(text)),
                headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            )
            assert result.status == 200
        wait_for(lambda: len(_records(dep)) >= PROMPTS, 60, "ten log records")
        wait_for(lambda: sum(bool(OPERATION_LINE.search(x)) for x in dep.output_lines()) >= PROMPTS, 30, "op lines")
        yield dep
    finally:
        stop(process, signal.SIGINT)
        stop(standin.process)


def _records(dep: Up) -> list[dict[str, object]]:
    result = run_cli(dep.config, dep.env, "logs", "list", "--json", "--limit", "100")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def test_up_prints_one_line_per_operation_and_a_short_start(up: Up) -> None:
    # stdout: the proxy's log (mitmproxy's terminal log) and the banner; stderr: the inspector's
    # log, which has nothing to say per operation.
    lines = up.output_lines("stdout")
    inspector = up.output_lines("stderr")
    banner_at = next(i for i, line in enumerate(lines) if line.strip() == BANNER)
    startup, after = lines[:banner_at] + inspector, lines[banner_at:]
    banner_end = next(i for i, line in enumerate(after) if line.strip() == "Press Ctrl-C to stop.")
    running = after[banner_end + 1 :]
    assert len(startup) <= MAX_STARTUP_LINES, "\n".join(startup)
    assert not [line for line in inspector if "inspected" in line], "the inspector logs per operation"
    operations = [line for line in running if OPERATION_LINE.search(line)]
    assert len(operations) == PROMPTS, "\n".join(running)
    assert running == operations, "more than one line per operation:\n" + "\n".join(running)
    assert sum("action=block" in line for line in operations) == BLOCKED
    everything = "\n".join(up.output_lines())
    for noise in ("ModuleNotFoundError", "alembic", "Context impl", "client connect", "server connect", "absent"):
        assert noise not in everything, noise
    assert CANARY not in everything and "219-09-9999" not in everything


def _scrape(url: str) -> dict[str, list[Sample]]:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain; version=")
        text = resp.read().decode()
    families = {family.name: family.samples for family in text_string_to_metric_families(text)}
    assert families, text[:500]
    return families


def _value(samples: list[Sample], name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _status(url: str) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def test_metrics_health_and_readiness_on_both_processes(up: Up) -> None:
    proxy = _scrape(f"http://127.0.0.1:{up.metrics_port}/metrics")
    ops = proxy["promptfence_operations"]
    assert _value(ops, "promptfence_operations_total", app="chatgpt", kind="SendPrompt") == PROMPTS
    decisions = proxy["promptfence_decisions"]
    assert _value(decisions, "promptfence_decisions_total", app="chatgpt", action="block") == BLOCKED
    assert _value(decisions, "promptfence_decisions_total", app="chatgpt", action="allow") == PROMPTS - BLOCKED
    assert _value(proxy["promptfence_log_spool_depth"], "promptfence_log_spool_depth") == 0
    stored = _value(proxy["promptfence_log_records"], "promptfence_log_records_total", outcome="stored")
    assert stored >= PROMPTS  # decision-time records, plus the completions of the allowed ones
    assert _value(proxy["promptfence_log_write_failures"], "promptfence_log_write_failures_total") == 0
    assert _value(proxy["promptfence_inspection_failures"], "promptfence_inspection_failures_total") == 0
    assert _value(proxy["promptfence_proxy_guard_seconds"], "promptfence_proxy_guard_seconds_count") == PROMPTS

    inspector = _scrape(f"http://127.0.0.1:{up.inspector_port}/metrics")
    latency = inspector["promptfence_detector_latency_seconds"]
    detectors = {s.labels["detector"] for s in latency if s.name.endswith("_count")}
    assert {"presidio", "secrets"} <= detectors, detectors
    assert _value(latency, "promptfence_detector_latency_seconds_count", detector="presidio") == PROMPTS
    buckets = [s for s in latency if s.name.endswith("_bucket") and s.labels["detector"] == "presidio"]
    assert buckets and max(s.value for s in buckets) == PROMPTS  # the +Inf bucket holds them all
    requests = inspector["promptfence_inspector_requests"]
    assert _value(requests, "promptfence_inspector_requests_total", outcome="inspected") == PROMPTS
    assert "promptfence_detector_failures" in inspector
    pii = _value(inspector["promptfence_inspector_topics"], "promptfence_inspector_topics_total", topic="PII")
    assert pii >= BLOCKED

    for port in (up.metrics_port, up.inspector_port):
        assert _status(f"http://127.0.0.1:{port}/healthz")[0] == 200
        code, body = _status(f"http://127.0.0.1:{port}/readyz")
        assert code == 200 and body["status"] == "ready", body
