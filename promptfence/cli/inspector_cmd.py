"""``promptfence inspector``: load the detectors once and serve ``POST /v1/inspect``."""

from __future__ import annotations

import argparse
import logging
import time
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
            raise ConfigError("must be more than 0", source=config.source, field=f"inspector.conversation_window.{name}")
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


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from promptfence.runtimes import INSPECTOR, require

    require(INSPECTOR)

    from classifiers.service import build_app

    config = load_config(args.config)
    engine = build_engine(config)
    app = build_app(engine)
    host, port = config.inspector.host, config.inspector.port
    log.info("inspector listening on http://%s:%d", host, port)
    web.run_app(app, host=host, port=port, print=None, access_log=None, handle_signals=True)
    return 0
