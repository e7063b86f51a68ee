"""The inspector's HTTP API: ``POST /v1/inspect`` (operation JSON in, Inspection JSON out).

It runs in its own process because it holds the models (seconds to load, gigabytes on GPU
hosts) and the proxy must stay small. It listens on loopback by default; request bodies are
never logged, and error replies never quote them.

Beside it: ``/healthz`` (up, and which detectors are loaded), ``/readyz`` (the engine can
inspect now) and ``/metrics`` (Prometheus: inspections, their latency, each detector's latency
and failures, topics found; :mod:`promptfence.metrics`). The per-inspection log line is DEBUG:
the proxy logs the one line per operation (``promptfence --verbose`` shows both).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from aiohttp import web

from classifiers.conversation_window import ConversationRef
from classifiers.engine import InspectionEngine
from classifiers.normalize import replace_invalid_unicode
from promptfence import metrics
from promptfence.core import Inspection, Operation

# Note on an Inspection whose prompt held code points no detector can digest (lone surrogates):
# they were replaced by U+FFFD once, here, before any detector saw the text.
INVALID_UNICODE_NOTE = "invalid_unicode_replaced"

log = logging.getLogger("promptfence.inspector")

ENGINE_KEY = web.AppKey("engine", InspectionEngine)

INSPECTIONS = metrics.counter(
    "promptfence_inspector_requests_total", "Inspection requests answered, by HTTP outcome.", ("outcome",)
)
INSPECTION_SECONDS = metrics.histogram("promptfence_inspection_seconds", "Wall time of one inspection (all detectors).")
DETECTOR_SECONDS = metrics.histogram(
    "promptfence_detector_latency_seconds", "Time one detector took on one prompt.", ("detector",)
)
DETECTOR_FAILURES = metrics.counter(
    "promptfence_detector_failures_total", "Detector runs that did not succeed, by status.", ("detector", "status")
)
TOPICS = metrics.counter(
    "promptfence_inspector_topics_total", "Topics detected (low confidence and above).", ("topic", "confidence")
)


def observe(inspection: Inspection) -> None:
    """Count one inspection: its time, each detector's time and failure, the topics found."""
    INSPECTIONS.labels("inspected").inc()
    INSPECTION_SECONDS.observe(inspection.elapsed_ms / 1000.0)
    for run in inspection.runs:
        DETECTOR_SECONDS.labels(run.detector).observe(run.elapsed_ms / 1000.0)
        if run.failed:
            DETECTOR_FAILURES.labels(run.detector, run.status.value).inc()
    for topic, confidence in inspection.detected().items():
        TOPICS.labels(topic.value, confidence.name.lower()).inc()


def _bad_request(message: str) -> web.Response:
    INSPECTIONS.labels("bad_request").inc()
    return web.json_response({"error": message}, status=400)


async def inspect_handler(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    try:
        data: Any = json.loads(await request.read())
    except (ValueError, RecursionError):  # not JSON / not UTF-8 / a number too long / nested too deep
        return _bad_request("body is not JSON")
    if not isinstance(data, dict):
        return _bad_request("body must be a JSON object")
    if "operation" in data:
        try:
            operation = Operation.from_dict(data["operation"])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return _bad_request(f"invalid operation: {type(exc).__name__}")
        text = operation.prompt
        conversation: ConversationRef | None = ConversationRef.of(operation)
    elif isinstance(data.get("prompt"), str):
        text = data["prompt"]
        conversation = None
    else:
        return _bad_request("expected 'operation' or 'prompt'")
    text, replaced = replace_invalid_unicode(text)
    inspection = await engine.inspect(text, conversation)
    if replaced:
        inspection = dataclasses.replace(inspection, notes=(*inspection.notes, INVALID_UNICODE_NOTE))
    observe(inspection)
    # Size, topics and time only: no digest of the text (it would let anyone who reads the log
    # confirm a guessed prompt) and no ids from the request.
    log.debug(
        "inspected chars=%d topics=%s ms=%.1f",
        len(text),
        ",".join(f"{t.value}:{c.name.lower()}" for t, c in inspection.detected().items()) or "-",
        inspection.elapsed_ms,
    )
    return web.json_response(inspection.to_dict())


async def health_handler(request: web.Request) -> web.Response:
    engine = request.app[ENGINE_KEY]
    return web.json_response(
        {
            "status": "ok",
            "detectors": [{"name": d.name, "version": d.version} for d in engine.detectors],
        }
    )


def build_app(engine: InspectionEngine, *, max_body_bytes: int = 16 * 1024 * 1024) -> web.Application:
    app = web.Application(client_max_size=max_body_bytes)
    app[ENGINE_KEY] = engine
    app.router.add_post("/v1/inspect", inspect_handler)
    app.router.add_get("/healthz", health_handler)
    metrics.add_routes(app, healthz=False)
    metrics.add_readiness_check("engine", lambda: None if engine.detectors else "no detector loaded")

    async def _close(_: web.Application) -> None:
        metrics.add_readiness_check("engine", lambda: "shutting down")
        engine.close()

    app.on_cleanup.append(_close)
    return app
