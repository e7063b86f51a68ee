"""``promptfence bench proxy`` runs end to end (issue 17): real processes, every phase answered.

No speed is asserted (figures go to BENCHMARKS.md); what must hold is that the bench measures
what it says: inspected prompts were inspected (the inspector's detectors are listed, every
request got a 200), the catch-all and non-GenAI phases went through both proxies, and the CPU
figures cover each process tree. One-second phases keep it short.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import child_env, repo_root

pytestmark = pytest.mark.slow


def test_bench_proxy_reports_every_phase(tmp_path: Path) -> None:
    env = child_env(tmp_path / "home")
    result = subprocess.run(
        [
            sys.executable, "-m", "promptfence", "bench", "proxy", "--json",
            "--concurrency", "1,2", "--duration", "1", "--warmup", "1", "--non-genai-concurrency", "2",
        ],
        capture_output=True, text=True, env=env, timeout=600, cwd=repo_root(),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert report["bench"] == "proxy"
    assert {"presidio", "secrets", "intent", "neighbours"} <= set(report["detectors"])
    phases = {(p["phase"], p["via"], p["concurrency"]) for p in report["phases"]}
    assert phases == {
        ("catch-all", "promptfence", 1), ("inspected", "promptfence", 1),
        ("catch-all", "promptfence", 2), ("inspected", "promptfence", 2),
        ("non-genai", "mitmdump", 2), ("non-genai", "promptfence", 2),
    }  # fmt: skip
    for phase in report["phases"]:
        assert phase["requests"] > 0 and phase["errors"] == 0, phase
        assert set(phase["statuses"]) == {"200"}, phase
        used = phase["cpu_s"]
        assert used["proxy" if phase["via"] == "promptfence" else "mitmdump"] > 0, phase
        if phase["phase"] == "inspected":
            assert used["inspector"] > 0, phase  # the prompts reached the inspector
    assert [row["concurrency"] for row in report["inspection"]] == [1, 2]
    ng = report["non_genai"]
    assert ng["rounds"] == 3 and len(ng["round_ratios"]) == 3 and ng["ratio"] == sorted(ng["round_ratios"])[1]
    non_genai = [p["via"] for p in report["phases"] if p["phase"] == "non-genai"]
    assert non_genai == ["mitmdump", "promptfence", "promptfence", "mitmdump", "mitmdump", "promptfence"]
    assert "Write a haiku" not in result.stdout + result.stderr  # prompts are never printed
