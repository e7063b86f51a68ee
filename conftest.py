"""Which environment runs which tests: ``pytest --side proxy`` / ``pytest --side inspector``.

The proxy and the inspector have separate environments (``promptfence.runtimes``): mitmproxy 12
on a current Python for the proxy, torch and Presidio on Python 3.11 for the inspector. ``make
unit`` runs pytest once in each. Every test module runs on the proxy side (mitmproxy in-process,
the log store, policies, the viewer, and the end-to-end tests, which start each process with its
own environment's Python), except those listed in :data:`INSPECTOR_SIDE`, which need the
detectors' libraries in-process. Plain ``pytest`` (no ``--side``) runs everything, for an
environment that has both. A new test that imports torch, Presidio, faiss or a detector goes in
:data:`INSPECTOR_SIDE`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# One ONNX export of the embedded encoder for the whole test run (and the inspector processes the
# end-to-end tests start, which inherit the environment), instead of one per temporary data_dir.
os.environ.setdefault(
    "PROMPTFENCE_MODEL_CACHE", str(Path(tempfile.gettempdir()) / f"promptfence-test-models-{os.getuid()}")
)

INSPECTOR_SIDE = frozenset(
    {
        "test_code_detector.py",
        "test_conversation_window.py",
        "test_custom_topics.py",
        "test_custom_topics_e2e.py",
        "test_intent_segments.py",
        "test_custom_topics_llm.py",
        "test_engine.py",
        "test_eval_cmd.py",
        "test_hostile_budgets.py",
        "test_hostile_deadlines.py",
        "test_inspector_answers.py",
        "test_intent_detector.py",
        "test_intl_recognizers.py",
        "test_languages.py",
        "test_linear_patterns.py",
        "test_multilingual_intent.py",
        "test_neighbour_memory.py",
        "test_normalize.py",
        "test_obfuscation_evidence.py",
        "test_presidio_detector.py",
        "test_presidio_local_context.py",
        "test_prompt_guard.py",
        "test_secrets_detector.py",
        "test_shared_embedder.py",
        "test_onnx_embedder.py",
        "test_topic_llm.py",
        "test_unicode_boundary.py",
        "test_vectors.py",
        "test_memory_group_commit.py",
        "test_worker_spares.py",
        "test_issue17_write_behind.py",
    }
)
SIDES = ("proxy", "inspector")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--side",
        choices=SIDES,
        default=None,
        help="run only the tests of this environment (default: all)",
    )


def side_of(path: Path) -> str:
    return "inspector" if path.name in INSPECTOR_SIDE else "proxy"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    side = config.getoption("--side")
    if side is None or collection_path.suffix != ".py" or not collection_path.name.startswith("test_"):
        return None
    return True if side_of(collection_path) != side else None


def pytest_report_header(config: pytest.Config) -> str:
    import sys

    return f"promptfence side: {config.getoption('--side') or 'all'} ({sys.executable})"
