"""The inspection engine: fan a prompt out to every detector at once, each under a deadline.

Detectors are synchronous (Presidio, tokenizers and CPU models are), so each runs in a worker
thread; the engine waits for all of them concurrently, so an inspection takes as long as the
slowest detector, not the sum. A detector that raises or misses its deadline becomes a
recorded :class:`DetectorRun` with its status, which the policy's ``on_error`` rule turns into a
decision. A late detector's thread is abandoned, not killed; its result is discarded.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from inference.errors import InferenceError
from promptfence.core import Detector, DetectorRun, DetectorStatus, Finding, Inspection, Topic

log = logging.getLogger("promptfence.inspector")


def combine_topic_scores(findings: Iterable[Finding]) -> dict[Topic, float]:
    """Noisy-or across distinct evidence kinds, max within a kind.

    Two different kinds of evidence (an email and an SSN) make a topic more certain than
    either alone; the same kind repeated (three emails) does not add up to certainty.
    """
    best: dict[tuple[Topic, str], float] = {}
    for finding in findings:
        key = (finding.topic, finding.kind)
        best[key] = max(best.get(key, 0.0), min(max(finding.score, 0.0), 1.0))
    miss: dict[Topic, float] = {}
    for (topic, _kind), score in best.items():
        miss[topic] = miss.get(topic, 1.0) * (1.0 - score)
    return {topic: 1.0 - m for topic, m in miss.items()}


class InspectionEngine:
    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        deadline_s: float = 5.0,
        deadlines: Mapping[str, float] | None = None,
        max_workers: int | None = None,
    ) -> None:
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate detector names: {names}")
        self.detectors = tuple(detectors)
        self.deadline_s = deadline_s
        self.deadlines = dict(deadlines or {})
        workers = max_workers or max(4, 2 * len(self.detectors))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detector")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _run_one(self, detector: Detector, text: str) -> tuple[DetectorRun, Sequence[Finding]]:
        loop = asyncio.get_running_loop()
        deadline = self.deadlines.get(detector.name, self.deadline_s)
        started = time.perf_counter()
        future = loop.run_in_executor(self._executor, detector.detect, text)
        try:
            findings = await asyncio.wait_for(future, deadline)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            return DetectorRun(detector.name, DetectorStatus.TIMEOUT, elapsed, f"deadline {deadline:g}s"), ()
        except InferenceError as exc:  # a model that answered outside its schema, timed out, is down
            elapsed = (time.perf_counter() - started) * 1000
            # Their messages are prompt-free by contract (inference.errors): a field, a status code.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("detector %s %s: %s", detector.name, exc.status.value, error)
            return DetectorRun(detector.name, exc.status, elapsed, error), ()
        except Exception as exc:  # a detector bug must not take the inspection down
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("detector %s failed: %s", detector.name, type(exc).__name__)
            return DetectorRun(detector.name, DetectorStatus.FAILED, elapsed, type(exc).__name__), ()
        elapsed = (time.perf_counter() - started) * 1000
        return DetectorRun(detector.name, DetectorStatus.OK, elapsed), tuple(findings)

    async def inspect(self, text: str) -> Inspection:
        started = time.perf_counter()
        results = await asyncio.gather(*(self._run_one(d, text) for d in self.detectors))
        findings = tuple(f for _, fs in results for f in fs)
        return Inspection(
            findings=findings,
            topics=combine_topic_scores(findings),
            runs=tuple(run for run, _ in results),
            elapsed_ms=(time.perf_counter() - started) * 1000,
        )
