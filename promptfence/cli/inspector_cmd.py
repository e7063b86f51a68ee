"""``promptfence inspector``: load the detectors once and serve ``POST /v1/inspect``."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from classifiers.engine import InspectionEngine

log = logging.getLogger("promptfence.inspector")


def build_engine(config: Config) -> InspectionEngine:
    from classifiers.conversation_window import ConversationWindow
    from classifiers.engine import InspectionEngine
    from classifiers.registry import build_detectors, detector_deadlines

    started = time.perf_counter()
    detectors = build_detectors(config)
    log.info(
        "detectors loaded in %.1fs: %s",
        time.perf_counter() - started,
        ", ".join(f"{d.name} ({d.version})" for d in detectors),
    )
    inspector = config.inspector
    if inspector.spare_workers < 0:
        raise ConfigError("must be 0 or more", source=config.source, field="inspector.spare_workers")
    window = inspector.conversation_window
    for name in ("ttl_s", "max_conversations", "max_fragments", "max_fragment_chars", "tail_chars"):
        if getattr(window, name) <= 0:
            raise ConfigError(
                "must be more than 0", source=config.source, field=f"inspector.conversation_window.{name}"
            )
    return InspectionEngine(
        detectors,
        deadline_s=inspector.detector_timeout_s,
        deadlines=detector_deadlines(config),
        processes=inspector.worker_processes,
        spare_processes=inspector.spare_workers if inspector.worker_processes > 0 else 0,
        analysis_deadline_s=inspector.analysis_timeout_s,
        chunk_chars=inspector.chunk_chars,
        chunk_overlap=inspector.chunk_overlap,
        max_findings_per_kind=inspector.max_findings_per_kind,
        window=ConversationWindow(window) if window.enabled else None,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)
    parser.add_argument(
        "--prepare-models",
        action="store_true",
        help="export the configured encoder to ONNX (into the data directory) and exit: for install steps",
    )


# Set in the extra server processes of ``inspector.processes`` (they must not start more).
SIBLING_ENV = "PROMPTFENCE_INSPECTOR_SIBLING"


def _start_siblings(args: argparse.Namespace, config: Config, count: int) -> list[subprocess.Popen[bytes]]:
    """``count`` more inspector processes on the same port (SO_REUSEPORT: the kernel spreads new
    connections over them). Each loads its own models and worker pool; they die with this one."""
    from promptfence.cli.up_cmd import _die_with_parent

    argv = [
        sys.executable,
        "-m",
        "promptfence",
        *(["--verbose"] if getattr(args, "verbose", False) else []),
        "inspector",
    ]
    config_path = args.config or config.source
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    env = {**os.environ, SIBLING_ENV: "1"}
    return [subprocess.Popen(argv, env=env, preexec_fn=_die_with_parent) for _ in range(count)]


def _stop_siblings(siblings: list[subprocess.Popen[bytes]]) -> None:
    for child in siblings:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for child in siblings:
        try:
            child.wait(timeout=15)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from promptfence.runtimes import INSPECTOR, require

    require(INSPECTOR)

    from classifiers.service import build_app

    config = load_config(args.config)
    processes = config.inspector.processes
    if processes < 1:
        raise ConfigError("must be 1 or more", source=config.source, field="inspector.processes")
    if getattr(args, "prepare_models", False):
        from inference.factory import build_base_embedder

        started = time.perf_counter()
        embedder = build_base_embedder(config.inspector.embedder, config.data_dir)
        log.info("encoder %s ready in %.1fs", embedder.name, time.perf_counter() - started)
        return 0
    siblings = [] if os.environ.get(SIBLING_ENV) or processes == 1 else _start_siblings(args, config, processes - 1)
    try:
        engine = build_engine(config)
        app = build_app(engine)
        host, port = config.inspector.host, config.inspector.port
        log.info("inspector listening on http://%s:%d", host, port)
        web.run_app(
            app,
            host=host,
            port=port,
            print=None,
            access_log=None,
            handle_signals=True,
            reuse_port=processes > 1 or None,
        )
    finally:
        _stop_siblings(siblings)
    return 0
