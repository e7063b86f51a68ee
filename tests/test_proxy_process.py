"""The proxy process stays lean: building it never imports model code."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from tests.support.procs import child_env, inspector_python, proxy_python

HEAVY = ["torch", "transformers", "sentence_transformers", "presidio_analyzer", "spacy", "faiss"]

SCRIPT = """
import asyncio, json, sys
from promptfence.config import load_config
from promptfence.cli.keys_cmd import ensure_default_recipient
from promptfence.cli.proxy_cmd import build_master
async def build():
    config = load_config()
    ensure_default_recipient(config)
    return build_master(config)
asyncio.run(build())
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in HEAVY)))
""".replace("HEAVY", repr(HEAVY))


def test_proxy_never_imports_model_libraries(tmp_path: Path) -> None:
    result = subprocess.run(
        [proxy_python(), "-c", SCRIPT],
        capture_output=True,
        text=True,
        env=child_env(tmp_path / "home"),
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded == []
    # The check itself works: the inspector side does load them.
    probe = subprocess.run(
        [inspector_python(), "-c", "import sys, classifiers.presidio_detector; print('presidio_analyzer' in sys.modules)"],
        capture_output=True,
        text=True,
        env=child_env(tmp_path / "home"),
        timeout=120,
    )
    assert probe.stdout.strip() == "True"
