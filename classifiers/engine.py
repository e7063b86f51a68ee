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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import yaml

from classifiers.normalize import Analysis, analyse
from inference.errors import InferenceError
from promptfence.core import Detector, DetectorRun, DetectorStatus, Finding, Inspection, NeighbourRef, Span, Topic
from promptfence.errors import ConfigError

TOPIC_MAP_FILE = Path(__file__).parent / "topics.yaml"
TopicMap = Mapping[str, Mapping[Topic, float]]

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


def load_topic_map(path: Path = TOPIC_MAP_FILE) -> dict[str, dict[Topic, float]]:
    """detector name -> {topic: weight}, from classifiers/topics.yaml."""
    data = yaml.safe_load(path.read_text())
    detectors = data.get("detectors") if isinstance(data, dict) else None
    if not isinstance(detectors, dict):
        raise ConfigError("expected a 'detectors' mapping", source=str(path))
    result: dict[str, dict[Topic, float]] = {}
    for name, topics in detectors.items():
        try:
            result[str(name)] = {Topic(t): float(w) for t, w in dict(topics).items()}
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"bad entry: {exc}", source=str(path), field=f"detectors.{name}") from None
    return result


def _to_prompt(finding: Finding, analysis: Analysis, weight: float) -> Finding:
    """Re-express a finding on the analysis text as one on the user's prompt."""
    span = None
    if finding.span is not None:
        original = analysis.original_span(finding.span.start, finding.span.end)
        span = None if original is None else Span(*original)
    explanation = finding.explanation
    if finding.span is not None and span is None:
        explanation += " (in de-obfuscated text)"
    return Finding(finding.detector, finding.kind, finding.topic, finding.score * weight, span, explanation)


@dataclass(frozen=True)
class MemoryContext:
    """What the memory step sees after every other detector: runs, raw findings, combined topics."""

    runs: tuple[DetectorRun, ...]
    raw: Mapping[str, Sequence[Finding]]  # detector -> findings on the analysed text (unweighted)
    findings: tuple[Finding, ...]  # weighted, on the prompt
    topics: Mapping[Topic, float]
    covered: frozenset[Topic]
    topic_map: TopicMap


@dataclass(frozen=True)
class MemoryResult:
    findings: tuple[Finding, ...] = ()  # added (e.g. neighbour fallback), already on the prompt
    topics: Mapping[Topic, float] | None = None  # None: unchanged
    covered: frozenset[Topic] = frozenset()
    neighbours: tuple[NeighbourRef, ...] = ()
    notes: tuple[str, ...] = ()
    tenant: str | None = None
    centroids: tuple[int, ...] = ()


@runtime_checkable
class MemoryDetector(Protocol):
    """A detector that needs the others' spans (to redact) and sees their combined result.

    ``lookup`` starts as soon as the ``redact_with`` detectors are done, in parallel with the
    rest (the LLM); ``finish`` runs after combination (classifiers/neighbour_detector.py).
    """

    name: str
    version: str
    redact_with: tuple[str, ...]

    def detect(self, text: str) -> Sequence[Finding]: ...

    def lookup(self, text: str, spans: Sequence[Finding]) -> Any: ...

    def finish(self, lookup: Any, context: MemoryContext) -> MemoryResult: ...


class InspectionEngine:
    def __init__(
        self,
        detectors: Sequence[Detector],
        *,
        deadline_s: float = 5.0,
        deadlines: Mapping[str, float] | None = None,
        max_workers: int | None = None,
        topic_map: TopicMap | None = None,
    ) -> None:
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate detector names: {names}")
        self.detectors = tuple(detectors)
        self.deadline_s = deadline_s
        self.deadlines = dict(deadlines or {})
        self.topic_map = topic_map if topic_map is not None else load_topic_map()
        unmapped = [n for n in names if n not in self.topic_map]
        if unmapped:
            raise ConfigError(
                f"detectors missing from the topic map: {', '.join(unmapped)}", source=str(TOPIC_MAP_FILE)
            )
        memories = [d for d in self.detectors if isinstance(d, MemoryDetector)]
        self.memory: MemoryDetector | None = memories[0] if memories else None
        workers = max_workers or max(4, 2 * len(self.detectors))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detector")

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        closer = getattr(self.memory, "close", None)
        if closer is not None:
            closer()

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

    async def _run_memory(
        self,
        memory: MemoryDetector,
        text: str,
        tasks: Mapping[str, asyncio.Future[tuple[DetectorRun, Sequence[Finding]]]],
    ) -> tuple[DetectorRun, Any]:
        """Wait for the redacting detectors, then embed the redacted text and look up neighbours."""
        started = time.perf_counter()
        spans: list[Finding] = []
        for name in memory.redact_with:
            if name in tasks:
                run, found = await asyncio.shield(tasks[name])
                if run.failed:  # never embed text whose entities could not be found
                    elapsed = (time.perf_counter() - started) * 1000
                    return DetectorRun(
                        memory.name, DetectorStatus.FAILED, elapsed, f"redaction unavailable ({name})"
                    ), None
                spans.extend(found)
        loop = asyncio.get_running_loop()
        deadline = self.deadlines.get(memory.name, self.deadline_s)
        try:
            lookup = await asyncio.wait_for(loop.run_in_executor(self._executor, memory.lookup, text, spans), deadline)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            return DetectorRun(memory.name, DetectorStatus.TIMEOUT, elapsed, f"deadline {deadline:g}s"), None
        except Exception as exc:  # e.g. the memory database is down; the message names no content
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("detector %s failed: %s", memory.name, type(exc).__name__)
            return DetectorRun(memory.name, DetectorStatus.FAILED, elapsed, type(exc).__name__), None
        return DetectorRun(memory.name, DetectorStatus.OK, (time.perf_counter() - started) * 1000), lookup

    async def inspect(self, text: str) -> Inspection:
        started = time.perf_counter()
        analysis = analyse(text)
        memory = self.memory
        tasks = {
            d.name: asyncio.ensure_future(self._run_one(d, analysis.text)) for d in self.detectors if d is not memory
        }
        memory_task = None if memory is None else asyncio.ensure_future(self._run_memory(memory, analysis.text, tasks))
        results = await asyncio.gather(*tasks.values())
        memory_run, lookup = (None, None) if memory_task is None else await memory_task
        findings: list[Finding] = []
        covered: set[Topic] = set()
        for run, detector_findings in results:
            allowed = self.topic_map.get(run.detector, {})
            if not run.failed:
                covered.update(t for t, w in allowed.items() if w > 0)
            for finding in detector_findings:
                weight = allowed.get(finding.topic, 0.0)
                if weight > 0:
                    findings.append(_to_prompt(finding, analysis, weight))
        topics = combine_topic_scores(findings)
        runs = {run.detector: run for run, _ in results}
        outcome = MemoryResult()
        if memory is not None and memory_run is not None:
            runs[memory.name] = memory_run
            if lookup is not None:
                context = MemoryContext(
                    runs=tuple(runs.values()),
                    raw={run.detector: found for run, found in results},
                    findings=tuple(findings),
                    topics=topics,
                    covered=frozenset(covered),
                    topic_map=self.topic_map,
                )
                loop = asyncio.get_running_loop()
                deadline = self.deadlines.get(memory.name, self.deadline_s)
                try:
                    outcome = await asyncio.wait_for(
                        loop.run_in_executor(self._executor, memory.finish, lookup, context), deadline
                    )
                except Exception as exc:  # the decision stands without the memory; say so
                    log.warning("memory step failed: %s", type(exc).__name__)
                    outcome = MemoryResult(notes=("memory_unavailable",))
                findings.extend(outcome.findings)
                covered.update(outcome.covered)
                if outcome.topics is not None:
                    topics = dict(outcome.topics)
        return Inspection(
            findings=tuple(findings),
            topics=topics,
            runs=tuple(runs[d.name] for d in self.detectors if d.name in runs),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            transforms=analysis.transforms,
            uncovered=tuple(t for t in Topic if t not in covered),
            neighbours=outcome.neighbours,
            notes=outcome.notes,
            memory_tenant=outcome.tenant,
            memory_centroids=outcome.centroids,
        )
