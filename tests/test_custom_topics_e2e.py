"""Issue 19 item 4 end to end: a company topic described in YAML blocks its examples, not its counter-examples.

A real ``promptfence inspector`` (Presidio, the secrets and code detectors, and the custom-topic
detector on the shipped MiniLM encoder; no intent head, no memory, to keep start-up short) and
a real ``promptfence proxy`` over real TLS in front of the HTTPS stand-in. The policy blocks
``PROJECT_FALCON`` at medium confidence; the topic is defined only by the test's topic file.
Prompts that are neither examples nor counter-examples (paraphrases) check that the
nearest-exemplar detector generalises a little, as the docs promise.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployment import CurlResult, curl, proxy_config, run_cli, start_standin
from tests.support.procs import child_env, free_port, port_open, proxy_python, stop, wait_for

pytestmark = pytest.mark.slow

FALCON = {
    "topic": "PROJECT_FALCON",
    "description": "Plans, dates, budget and suppliers of Project Falcon, our unreleased delivery drone.",
    "source": "written for this test",
    "examples": [
        "Summarise the Project Falcon launch timeline for the board meeting.",
        "What is the remaining budget for the Falcon drone programme this quarter?",
        "Draft a supplier email about the Falcon drone battery delivery delay.",
        "List the open risks in the Project Falcon flight certification plan.",
        "Rewrite the Falcon roadmap slide: prototype in March, pilot in June, launch in October.",
        "Which factories are shortlisted to build the Falcon delivery drone airframe?",
        "Prepare talking points on Project Falcon's delayed beta for the all-hands.",
        "Compare the two motor suppliers bidding for the Falcon drone contract.",
    ],
    "counter_examples": [
        "How fast can a peregrine falcon dive?",
        "Recommend a good book about birds of prey.",
        "What are the FAA rules for flying a hobby drone in a park?",
        "Write a poem about a falcon over the mountains.",
        "Summarise this week's team lunch options.",
        "Explain how quadcopter drones keep their balance.",
        "What does a product roadmap usually contain?",
        "Draft an email inviting the team to the summer party.",
    ],
}
POLICY = """policy: falcon
default: allow
on_error: block
rules:
  - id: falcon-stays-inside
    match: {operations: SendPrompt, topics: {PROJECT_FALCON: medium}}
    action: block
    message: "Project Falcon is confidential ({topics})."
"""
NEW_FALCON = "Can you turn the Project Falcon drone budget and launch dates into a one-page summary?"
UNRELATED = "Give me a recipe for a vegetarian lasagne."


@dataclass
class Deployment:
    home: Path
    config: Path
    proxy_port: int
    env: dict[str, str]
    ca_cert: Path

    def send(self, text: str) -> CurlResult:
        body = {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [text]},
                }
            ],
            "parent_message_id": "client-created-root",
            "model": "auto",
        }
        return curl(
            self.proxy_port,
            self.ca_cert,
            self.env,
            "https://chatgpt.com/backend-api/f/conversation",
            data=json.dumps(body),
            headers={"Content-Type": "application/json"},
        )

    def records(self) -> list[dict[str, Any]]:
        result = run_cli(self.config, self.env, "logs", "list", "--json", "--limit", "500")
        assert result.returncode == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]


def _ready(port: int) -> bool:
    if not port_open(port):
        return False
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    root = tmp_path_factory.mktemp("custom-topics-e2e")
    home = root / "home"
    env = child_env(home)
    (root / "falcon.yaml").write_text(yaml.safe_dump(FALCON, sort_keys=False))
    (root / "falcon-policy.yaml").write_text(POLICY)
    standin = start_standin(root, ["chatgpt.com"], env, root / "received.jsonl")
    inspector_port, proxy_port = free_port(), free_port()
    config = root / "promptfence.yaml"
    inspector = f"port: {inspector_port}\n  intent_detector: false\n  worker_processes: 1\n  spare_workers: 0"
    extra = (
        f"memory: {{enabled: false}}\ntopics: {{files: [{root / 'falcon.yaml'}], builtin: false}}\n"
        f"policies: {{files: [{root / 'falcon-policy.yaml'}]}}\n"
    )
    config.write_text(proxy_config(home, proxy_port, standin, ["chatgpt.com"], inspector, extra))
    keys = subprocess.run(
        [sys.executable, "-m", "promptfence", "keys", "generate", "--config", str(config)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert keys.returncode == 0, keys.stderr
    with (root / "inspector.log").open("wb") as out:
        inspector_proc = subprocess.Popen(
            [sys.executable, "-m", "promptfence", "inspector", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    with (root / "proxy.log").open("wb") as out:
        proxy_proc = subprocess.Popen(
            [proxy_python(), "-m", "promptfence", "proxy", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deployment = Deployment(home, config, proxy_port, env, home / "mitmproxy" / "mitmproxy-ca-cert.pem")
    try:
        standin.wait()
        wait_for(lambda: _ready(inspector_port), 240, "inspector ready", inspector_proc)
        wait_for(lambda: port_open(proxy_port) and deployment.ca_cert.is_file(), 60, "proxy listening", proxy_proc)
        yield deployment
    finally:
        stop(proxy_proc, signal.SIGTERM)
        stop(inspector_proc, signal.SIGTERM)
        stop(standin.process)


def test_the_custom_topic_blocks_its_examples_and_passes_its_counter_examples(dep: Deployment) -> None:
    for example in FALCON["examples"]:
        result = dep.send(example)
        assert "Project Falcon is confidential (PROJECT_FALCON)" in result.body, example
    for counter in FALCON["counter_examples"]:
        result = dep.send(counter)
        assert result.status == 200 and "Stand-in answer" in result.body, counter
    records = dep.records()
    blocked = [r for r in records if r["decision"]["action"] == "block"]
    assert len(blocked) == len(FALCON["examples"])
    assert all(r["decision"]["rule_ids"] == ["falcon-stays-inside"] for r in blocked)
    assert all(r["custom_topics"]["PROJECT_FALCON"]["confidence"] in ("medium", "high") for r in blocked)
    assert all(f["detector"] == "custom_topics" for r in blocked for f in r["custom_findings"])
    assert all("custom_topics" in r["detectors_run"] for r in records)


def test_a_new_prompt_on_the_topic_is_blocked_and_an_unrelated_one_is_not(dep: Deployment) -> None:
    assert "Project Falcon is confidential" in dep.send(NEW_FALCON).body
    unrelated = dep.send(UNRELATED)
    assert unrelated.status == 200 and "Stand-in answer" in unrelated.body
