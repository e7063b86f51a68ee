"""Issue 18: :mod:`promptfence.metrics`, the registry other modules add to.

What another module (e.g. drift counters) relies on: declaring a metric twice returns the same
one, a clash of kind or labels is an error, a scrape-time collector is registered once and can
be removed, ``/readyz`` answers 503 naming the failing check (and a check that raises is not
ready), and ``/metrics`` is Prometheus text that ``prometheus_client``'s parser reads back.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from promptfence import metrics


def _name(stem: str) -> str:
    return f"promptfence_test_{stem}_{uuid.uuid4().hex[:8]}"


def _families() -> dict[str, list[object]]:
    return {f.name: f.samples for f in text_string_to_metric_families(metrics.exposition().decode())}


def test_declaring_twice_returns_the_same_metric_and_a_clash_is_an_error() -> None:
    name = _name("events") + "_total"
    first = metrics.counter(name, "Events.", ("app",))
    assert metrics.counter(name, "Events.", ("app",)) is first
    first.labels("chatgpt").inc(3)
    samples = _families()[name.removesuffix("_total")]
    assert [(s.labels, s.value) for s in samples if s.name == name] == [({"app": "chatgpt"}, 3.0)]  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="already declared as a Counter"):
        metrics.gauge(name, "Events.", ("app",))
    with pytest.raises(ValueError, match="labels"):
        metrics.counter(name, "Events.", ("app", "kind"))


def test_histograms_use_the_latency_buckets() -> None:
    name = _name("seconds")
    metrics.histogram(name, "Latency.").observe(0.003)
    buckets = {s.labels["le"]: s.value for s in _families()[name] if s.name == f"{name}_bucket"}  # type: ignore[attr-defined]
    assert buckets["0.0025"] == 0 and buckets["0.005"] == 1 and buckets["+Inf"] == 1
    assert len(buckets) == len(metrics.LATENCY_BUCKETS) + 1


class _Depth:
    def __init__(self, name: str) -> None:
        self.name = name
        self.value = 0.0

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, "A depth read at scrape time.", value=self.value)


def test_a_collector_is_read_at_scrape_time_registered_once_and_removable() -> None:
    collector = _Depth(_name("depth"))
    metrics.register_collector(collector)
    metrics.register_collector(collector)  # no duplicate-registration error
    try:
        collector.value = 7
        assert [s.value for s in _families()[collector.name]] == [7.0]  # type: ignore[attr-defined]
    finally:
        metrics.unregister_collector(collector)
    assert collector.name not in _families()


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    async with TestClient(TestServer(metrics.build_app())) as c:
        yield c


async def test_endpoints_serve_text_health_and_readiness(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.headers["Content-Type"].startswith("text/plain; version=")
    names = {f.name for f in text_string_to_metric_families(await resp.text())}
    assert "process_cpu_seconds" in names  # the process collector is part of every process's registry
    assert (await client.get("/healthz")).status == 200

    check, broken = _name("ready"), _name("broken")
    state: dict[str, str | None] = {"reason": None}
    metrics.add_readiness_check(check, lambda: state["reason"])
    try:
        resp = await client.get("/readyz")
        ready = await resp.json()
        assert ready["checks"][check] == "ok"  # (other checks of this test process decide the status)
        assert resp.status == (200 if ready["status"] == "ready" else 503)
        state["reason"] = "log database down (spooling)"
        resp = await client.get("/readyz")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "not ready"
        assert body["checks"][check] == "log database down (spooling)"

        def explode() -> str | None:
            raise RuntimeError("boom")

        state["reason"] = None
        metrics.add_readiness_check(broken, explode)
        resp = await client.get("/readyz")
        assert resp.status == 503 and (await resp.json())["checks"][broken] == "check failed (RuntimeError)"
    finally:
        metrics.remove_readiness_check(check)
        metrics.remove_readiness_check(broken)
