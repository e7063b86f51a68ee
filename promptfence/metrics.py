"""Prometheus metrics and health endpoints, one registry per process (proxy or inspector).

Why one shared module: both processes expose ``/metrics`` (Prometheus text format),
``/healthz`` (the process is up) and ``/readyz`` (it can do its job now), and any module may
add what it measures without knowing who serves it. A module declares its metrics where the
data is, at import time::

    from promptfence import metrics
    DRIFT = metrics.counter("promptfence_drift_events_total", "Drift events seen.", ("app", "kind"))

Asking again for a name already declared returns the same metric (a module imported twice, or
two instances of one addon, do not clash), and a kind or label mismatch is a clear error.
Values only known at scrape time (the log spool's depth, a cache's size) come from a collector:
an object with ``collect()`` yielding ``prometheus_client`` metric families, registered with
:func:`register_collector`. Readiness is a set of named checks (:func:`add_readiness_check`);
``/readyz`` answers 503 and names the failing ones.

Labels carry bounded, non-sensitive values only (app, operation kind, action, detector name,
status): never a user, a conversation id or anything from a prompt.

This module imports no other PromptFence package, so every package may use it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol, TypeVar

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics_core import Metric

REGISTRY = CollectorRegistry()
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)

# Seconds: detectors run from well under a millisecond (regexes) to seconds (models, LLMs).
LATENCY_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip

_lock = threading.Lock()
_declared: dict[str, tuple[type[Any], tuple[str, ...], Any]] = {}
_collectors: list[Any] = []

M = TypeVar("M", Counter, Gauge, Histogram)


class Collector(Protocol):
    """What :func:`register_collector` takes: ``prometheus_client``'s custom-collector shape."""

    def collect(self) -> Iterable[Metric]: ...


def _declare(kind: type[M], name: str, documentation: str, labels: Sequence[str], **extra: Any) -> M:
    key = tuple(labels)
    with _lock:
        found = _declared.get(name)
        if found is not None:
            found_kind, found_labels, metric = found
            if found_kind is not kind or found_labels != key:
                raise ValueError(
                    f"metric {name} is already declared as a {found_kind.__name__} with labels {found_labels}"
                )
            return metric  # type: ignore[no-any-return]
        metric = kind(name, documentation, key, registry=REGISTRY, **extra)
        _declared[name] = (kind, key, metric)
        return metric


def counter(name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
    """A counter in this process's registry (``name`` should end in ``_total``)."""
    return _declare(Counter, name, documentation, labels)


def gauge(name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
    return _declare(Gauge, name, documentation, labels)


def histogram(
    name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = LATENCY_BUCKETS
) -> Histogram:
    return _declare(Histogram, name, documentation, labels, buckets=tuple(buckets))


def register_collector(collector: Collector) -> None:
    """Add a scrape-time collector; registering the same object twice is a no-op."""
    with _lock:
        if any(c is collector for c in _collectors):
            return
        REGISTRY.register(collector)
        _collectors.append(collector)


def unregister_collector(collector: Collector) -> None:
    with _lock:
        for i, known in enumerate(_collectors):
            if known is collector:
                REGISTRY.unregister(collector)
                del _collectors[i]
                return


def exposition() -> bytes:
    """The registry in Prometheus text format (what ``/metrics`` serves)."""
    return generate_latest(REGISTRY)


# -- readiness ----------------------------------------------------------------------------------

# A check returns None when ready, else why not (a short reason, never content).
ReadinessCheck = Callable[[], "str | None"]
_checks: dict[str, ReadinessCheck] = {}


def add_readiness_check(name: str, check: ReadinessCheck) -> None:
    """``/readyz`` answers 200 only while every check returns None; a name replaces its check."""
    with _lock:
        _checks[name] = check


def remove_readiness_check(name: str) -> None:
    with _lock:
        _checks.pop(name, None)


def readiness() -> dict[str, str | None]:
    """Each check's result; a check that raises is not ready (its exception type is the reason)."""
    with _lock:
        checks = dict(_checks)
    results: dict[str, str | None] = {}
    for name, check in sorted(checks.items()):
        try:
            results[name] = check()
        except Exception as exc:
            results[name] = f"check failed ({type(exc).__name__})"
    return results


# -- HTTP ---------------------------------------------------------------------------------------


async def metrics_handler(request: web.Request) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def healthz_handler(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz_handler(request: web.Request) -> web.Response:
    results = readiness()
    failing = {name: reason for name, reason in results.items() if reason is not None}
    return web.json_response(
        {"status": "not ready" if failing else "ready", "checks": {n: r or "ok" for n, r in results.items()}},
        status=503 if failing else 200,
    )


def add_routes(app: web.Application, *, healthz: bool = True) -> None:
    """``/metrics`` and ``/readyz`` (and ``/healthz`` unless the app has its own) on ``app``."""
    app.router.add_get("/metrics", metrics_handler)
    app.router.add_get("/readyz", readyz_handler)
    if healthz:
        app.router.add_get("/healthz", healthz_handler)


def build_app() -> web.Application:
    """The stand-alone endpoint a process without an HTTP server of its own (the proxy) serves."""
    app = web.Application(client_max_size=1024)
    add_routes(app)
    return app
