"""Several inspector processes behind one address (issue 17, ``inspector.processes``).

A real ``promptfence inspector`` with ``processes: 2`` (lean detectors, so start-up stays short):
both processes answer on the one port (SO_REUSEPORT), new connections reach both, a prompt is
inspected by whichever answers, and stopping the first process stops its sibling too.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.procs import child_env, free_port, inspector_python, port_open, stop, wait_for

pytestmark = pytest.mark.slow


def _get(url: str, data: bytes | None = None) -> dict[str, object]:
    request = urllib.request.Request(
        url, data=data, headers={"Content-Type": "application/json", "Connection": "close"}
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        result: dict[str, object] = json.loads(resp.read())
        return result


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except OSError:
                continue
    return found


def test_two_inspector_processes_share_one_port(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "promptfence.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'home'}\n"
        f"inspector:\n  port: {port}\n  processes: 2\n  worker_processes: 0\n  intent_detector: false\n"
        "memory:\n  enabled: false\n"
    )
    env = child_env(tmp_path / "home")
    proc = subprocess.Popen(
        [inspector_python(), "-m", "promptfence", "inspector", "--config", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        seen: set[int] = set()

        def both_up() -> bool:
            if not port_open(port):
                return False
            for _ in range(20):  # a fresh connection each time: the kernel picks a listener
                try:
                    seen.add(int(str(_get(f"{base}/healthz")["process"])))
                except OSError:
                    return False
            return len(seen) >= 2

        wait_for(both_up, 240, "two inspector processes answering", proc)
        assert proc.pid in seen
        siblings = set(_children(proc.pid))
        assert seen - {proc.pid} <= siblings and seen - {proc.pid}
        answer = _get(f"{base}/v1/inspect", json.dumps({"prompt": "my SSN is 219-09-9999"}).encode())
        assert "PII" in answer["topics"]  # type: ignore[operator]
    finally:
        stop(proc, signal.SIGTERM)
    wait_for(lambda: not port_open(port), 30, "the siblings to stop with the first process")
