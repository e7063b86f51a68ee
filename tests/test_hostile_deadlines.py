"""A pathological prompt cannot hold up anyone else's verdict, and its work dies at its deadline.

Two inspections run concurrently through the real HTTP service and engine with the real
rule-based detectors in worker processes, plus a detector that spins in pure Python (holding
its process's GIL, the way a backtracking regex does) whenever a prompt carries a marker. The
only timing asserted is against deadlines.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from classifiers.code_detector import CodeDetector
from classifiers.engine import InspectionEngine, chunk_spans, load_topic_map
from classifiers.presidio_detector import PresidioDetector
from classifiers.secrets_detector import SecretsDetector
from classifiers.service import build_app
from promptfence.core import Detector, DetectorStatus, Finding, Topic

MARKER = "SPIN-UNTIL-KILLED"
DEADLINE_S = 4.0


class SpinDetector:
    """Spins (pure Python, never yields the GIL for long) on prompts that carry the marker."""

    name = "spin"
    version = "test"

    def detect(self, text: str) -> Sequence[Finding]:
        if MARKER in text:
            n = 0
            while True:
                n += 1
        return ()

    def worker_factory(self) -> type[SpinDetector]:
        return SpinDetector


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(") ", 1)[1][0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def engine() -> Iterator[InspectionEngine]:
    topic_map = {**load_topic_map(), "spin": {Topic.JAILBREAK: 1.0}}
    detectors: list[Detector] = [PresidioDetector(), CodeDetector(), SecretsDetector(), SpinDetector()]
    built = InspectionEngine(detectors, deadline_s=DEADLINE_S, topic_map=topic_map, processes=3)
    try:
        yield built
    finally:
        built.close()


def test_chunks_cover_the_text_and_overlap() -> None:
    pieces = chunk_spans(1000, 300, 50)
    assert pieces[0][0] == 0 and pieces[-1][1] == 1000
    for (a, b), (c, _d) in itertools.pairwise(pieces):
        assert c == a + 300 and b == c + 50  # each reaches `overlap` into the next one's part
    assert chunk_spans(320, 300, 50) == [(0, 320)]


async def test_a_pathological_prompt_cannot_delay_a_normal_verdict(engine: InspectionEngine) -> None:
    assert engine.pool is not None
    before = set(engine.pool.pids())
    restarts = engine.pool.restarts
    app = build_app(engine)
    app.on_cleanup.clear()  # the module fixture closes the engine
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    lag = 0.0
    stop = asyncio.Event()

    async def probe() -> None:  # how long the service's event loop is ever held
        nonlocal lag
        while not stop.is_set():
            t = time.perf_counter()
            await asyncio.sleep(0.01)
            lag = max(lag, time.perf_counter() - t - 0.01)

    url = str(server.make_url("/v1/inspect"))
    finished: list[str] = []
    # The code detector's two quadratic cases from issue 13 ride along in the hostile prompt.
    hostile = MARKER + "\n" + "for " + " in" * 80_000 + "\nf(ab)" + " " * 32_000 + "x"
    normal = "Please update my record: SSN 219-09-9999, email jane.roe@corp-mail.com"

    async def post(session: aiohttp.ClientSession, name: str, prompt: str) -> tuple[dict[str, Any], float]:
        started = time.perf_counter()
        async with session.post(url, json={"prompt": prompt}) as resp:
            assert resp.status == 200
            body = await resp.json()
        finished.append(name)
        return body, time.perf_counter() - started

    probe_task = asyncio.ensure_future(probe())
    try:
        async with aiohttp.ClientSession() as session:
            slow = asyncio.ensure_future(post(session, "hostile", hostile))
            await asyncio.sleep(0.2)  # the hostile prompt is already spinning in a worker
            (good, good_s), (bad, bad_s) = await asyncio.gather(post(session, "normal", normal), slow)
    finally:
        stop.set()
        await probe_task
        await server.close()

    good_runs = {r["detector"]: r["status"] for r in good["runs"]}
    assert good_runs == dict.fromkeys(["presidio", "code", "secrets", "spin"], DetectorStatus.OK.value)
    assert "PII" in good["topics"]
    assert finished[0] == "normal"
    assert good_s < DEADLINE_S  # its verdict came within its own deadline, not after the spin's

    bad_runs = {r["detector"]: r["status"] for r in bad["runs"]}
    assert bad_runs["spin"] == DetectorStatus.TIMEOUT.value
    assert bad_runs["code"] == bad_runs["presidio"] == bad_runs["secrets"] == DetectorStatus.OK.value
    assert bad_s < 2 * DEADLINE_S
    assert lag < 1.0  # the loop answered throughout (the benchmark measures the real figure)

    # The spinning worker was killed, not abandoned: its process is gone and was replaced.
    for _ in range(100):
        gone = [pid for pid in before if not _alive(pid)]
        if gone and engine.pool.restarts > restarts:
            break
        await asyncio.sleep(0.1)
    assert len(gone) == 1
    assert engine.pool.restarts == restarts + 1
