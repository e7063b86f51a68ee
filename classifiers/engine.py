"""The inspection engine: fan a prompt out to every detector at once, each under a deadline.

Detectors are synchronous (Presidio, tokenizers and CPU models are). With a worker pool
(``processes`` > 0, what the inspector runs), normalisation and every detector that offers a
``worker_factory`` (the rule-based ones: Presidio, secrets, code) run in worker processes
(classifiers/workers.py): a call that misses its deadline has its worker killed, so a hostile
prompt cannot hold a core, or the GIL, past its budget. Long texts are cut into overlapping
chunks (:func:`chunk_spans`) scanned in parallel, at most ``parallel`` calls per inspection so
that other prompts keep a worker; findings are capped per kind, and a cap says so in the notes.

The model-backed detectors (MiniLM intent, Prompt Guard, the LLM client, the neighbour memory)
stay in threads: their time goes to torch and tokenizers, which release the GIL, or to network
waits, and their input is bounded (windows are sampled past a limit, the LLM prompt is capped).
A model detector that offers a ``prepare_factory`` (the intent head) has its pure-Python text
preparation run in the pool first, so that only the model call runs in the inspector process.
A late thread is abandoned, not killed; its result is discarded.

A detector that raises or misses its deadline becomes a recorded :class:`DetectorRun` with its
status, which the policy's ``on_error`` rule turns into a decision.
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

from classifiers import language as lang
from classifiers.conversation_window import Candidates, ConversationRef, ConversationWindow
from classifiers.normalize import Analysis, analyse
from classifiers.workers import ANALYSE, WorkerFailed, WorkerPool, WorkerTimeout
from inference.errors import InferenceError
from promptfence.core import (
    CustomFinding,
    Detector,
    DetectorRun,
    DetectorStatus,
    Finding,
    Inspection,
    NeighbourRef,
    Obfuscation,
    Span,
    Topic,
)
from promptfence.errors import ConfigError

TOPIC_MAP_FILE = Path(__file__).parent / "topics.yaml"
TopicMap = Mapping[str, Mapping[Topic, float]]
# What a detector may return: built-in topic findings, and (the custom-topic detector, the LLM
# with topic files) evidence for company-defined topics, which is kept apart from ``topics``.
Evidence = Finding | CustomFinding

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


def combine_custom_scores(findings: Iterable[CustomFinding]) -> dict[str, float]:
    """Noisy-or across detectors, max within one detector (as for built-in topics)."""
    best: dict[tuple[str, str], float] = {}
    for finding in findings:
        key = (finding.name, finding.detector)
        best[key] = max(best.get(key, 0.0), min(max(finding.score, 0.0), 1.0))
    miss: dict[str, float] = {}
    for (name, _detector), score in best.items():
        miss[name] = miss.get(name, 1.0) * (1.0 - score)
    return {name: 1.0 - m for name, m in sorted(miss.items())}


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


# Notes on an Inspection (prompt-free): normalisation missed its budget or failed (detectors
# then saw the prompt as sent, not de-obfuscated); a detector's findings were capped.
ANALYSIS_TIMEOUT_NOTE = "analysis_timeout"
ANALYSIS_FAILED_NOTE = "analysis_failed"
FINDINGS_CAPPED_NOTE = "findings_capped:{detector}"
LANGUAGE_UNAVAILABLE_NOTE = "language_unavailable"
# The conversation window's joins could not be scanned by this detector (the prompt itself was).
WINDOW_FAILED_NOTE = "conversation_window_failed:{detector}"
# Detectors asked about the joins between a conversation's prompts (a secret cut in two).
WINDOW_DETECTORS = ("secrets", "presidio")
SPLIT_EXPLANATION = "(split across this conversation's prompts)"

# Pool operation that prepares a model detector's input: "<detector>:prepare".
PREPARE_SUFFIX = ":prepare"

DEFAULT_CHUNK_CHARS = 128 * 1024
# Longer than any single thing a rule matches (a 4096-bit PEM key is about 3,300 characters),
# so a match across a chunk border lies whole inside the chunk it starts in.
DEFAULT_CHUNK_OVERLAP = 8 * 1024
DEFAULT_MAX_FINDINGS_PER_KIND = 64


def chunk_spans(length: int, size: int, overlap: int) -> list[tuple[int, int]]:
    """``[start, end)`` pieces covering ``range(length)``: each starts where the previous one's
    own part ended and reaches ``overlap`` characters further, so anything up to ``overlap``
    long that starts in a piece's own part lies whole inside that piece."""
    if length <= size + overlap:
        return [(0, length)]
    return [(start, min(length, start + size + overlap)) for start in range(0, length, size)]


def _cap_per_kind(findings: Iterable[Finding], limit: int) -> tuple[list[Finding], bool]:
    """At most ``limit`` findings per kind (the strongest), deduplicated by kind and span."""
    seen: set[tuple[str, int, int]] = set()
    by_kind: dict[str, list[Finding]] = {}
    for finding in findings:
        span = finding.span or Span(-1, -1)
        key = (finding.kind, span.start, span.end)
        if key in seen:
            continue
        seen.add(key)
        by_kind.setdefault(finding.kind, []).append(finding)
    kept: list[Finding] = []
    capped = False
    for group in by_kind.values():
        if len(group) > limit:
            capped = True
            group = sorted(group, key=lambda f: (-f.score, f.span.start if f.span else -1))[:limit]
        kept.extend(group)
    kept.sort(key=lambda f: (f.span.start if f.span else -1, f.kind))
    return kept, capped


def _shift(finding: Finding, offset: int) -> Finding:
    if finding.span is None or offset == 0:
        return finding
    return Finding(
        finding.detector,
        finding.kind,
        finding.topic,
        finding.score,
        Span(finding.span.start + offset, finding.span.end + offset),
        finding.explanation,
    )


def _identity_analysis(text: str) -> Analysis:
    return Analysis(text=text, offsets=range(len(text)), primary_length=len(text))


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
        processes: int = 0,
        spare_processes: int = 0,
        parallel: int | None = None,
        analysis_deadline_s: float | None = None,
        chunk_chars: int = DEFAULT_CHUNK_CHARS,
        chunk_overlap: int = DEFAULT_CHUNK_OVERLAP,
        max_findings_per_kind: int = DEFAULT_MAX_FINDINGS_PER_KIND,
        pool: WorkerPool | None = None,
        coverage: Mapping[str, lang.Coverage] | None = None,
        window: ConversationWindow | None = None,
        window_detectors: Sequence[str] = WINDOW_DETECTORS,
    ) -> None:
        names = [d.name for d in detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate detector names: {names}")
        self.detectors = tuple(detectors)
        self.deadline_s = deadline_s
        self.deadlines = dict(deadlines or {})
        self.topic_map = dict(topic_map if topic_map is not None else load_topic_map())
        for d in self.detectors:
            # A detector whose topics depend on its configuration (custom topic files) says so.
            weights = getattr(d, "topic_weights", None)
            if isinstance(weights, Mapping) and d.name not in self.topic_map:
                self.topic_map[d.name] = dict(weights)
        unmapped = [n for n in names if n not in self.topic_map]
        if unmapped:
            raise ConfigError(
                f"detectors missing from the topic map: {', '.join(unmapped)}", source=str(TOPIC_MAP_FILE)
            )
        # Which languages each detector reads (issue 15): classifiers/data/language_coverage.yaml.
        self.coverage = coverage if coverage is not None else lang.load_coverage()
        lang.LanguageIdentifier.model()  # decompressing the model takes seconds: not on a prompt's clock
        memories = [d for d in self.detectors if isinstance(d, MemoryDetector)]
        self.memory: MemoryDetector | None = memories[0] if memories else None
        workers = max_workers or max(4, 2 * len(self.detectors))
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="detector")
        self.analysis_deadline_s = analysis_deadline_s if analysis_deadline_s is not None else deadline_s
        self.chunk_chars = chunk_chars
        self.chunk_overlap = chunk_overlap
        self.max_findings_per_kind = max_findings_per_kind
        if pool is None and processes > 0:
            factories: dict[str, Any] = {}
            for d in self.detectors:
                if d is self.memory:
                    continue
                if callable(getattr(d, "worker_factory", None)):
                    factories[d.name] = d.worker_factory()  # type: ignore[attr-defined]
                elif callable(getattr(d, "prepare_factory", None)) and callable(getattr(d, "detect_prepared", None)):
                    factories[d.name + PREPARE_SUFFIX] = d.prepare_factory()  # type: ignore[attr-defined]
            pool = WorkerPool(factories, processes=processes, spares=spare_processes)
        self.pool = pool
        served = frozenset(pool.factories) if pool is not None else frozenset()
        self.isolated = frozenset(n for n in served if not n.endswith(PREPARE_SUFFIX))
        # Model detectors whose text preparation runs in the pool (only the model call in a thread).
        self.prepared = frozenset(n.removesuffix(PREPARE_SUFFIX) for n in served if n.endswith(PREPARE_SUFFIX))
        size = pool.processes if pool is not None else 1
        # Calls one inspection may have in the pool at once: leave a worker for other prompts.
        self.parallel = parallel if parallel is not None else max(1, size - 1)
        self.window = window
        self.window_detectors = tuple(d for d in self.detectors if d.name in window_detectors)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
        if self.pool is not None:
            self.pool.close()
        closer = getattr(self.memory, "close", None)
        if closer is not None:
            closer()

    async def _pooled(self, op: str, text: str, slots: asyncio.Semaphore, share: float = 1.0) -> Any:
        """One call in the worker pool; its worker is killed if the caller stops waiting."""
        assert self.pool is not None
        async with slots:
            future, ticket = self.pool.submit(op, text, share)
            try:
                return await asyncio.wrap_future(future)
            except asyncio.CancelledError:
                self.pool.abandon(ticket)
                raise

    async def _detect_pooled(
        self, name: str, text: str, slots: asyncio.Semaphore
    ) -> tuple[Sequence[Finding], tuple[str, ...]]:
        pieces = chunk_spans(len(text), self.chunk_chars, self.chunk_overlap)
        share = 1.0 / len(pieces)  # a per-inspection budget (Presidio's phone tries) split evenly
        results = await asyncio.gather(*(self._pooled(name, text[a:b], slots, share) for a, b in pieces))
        findings = [_shift(f, a) for (a, _b), (found, _notes) in zip(pieces, results, strict=True) for f in found]
        notes = tuple(dict.fromkeys(n for _found, piece_notes in results for n in piece_notes))
        kept, capped = _cap_per_kind(findings, self.max_findings_per_kind)
        if capped:
            notes = (*notes, FINDINGS_CAPPED_NOTE.format(detector=name))
        return kept, notes

    async def _detect_prepared(
        self, detector: Detector, text: str, slots: asyncio.Semaphore
    ) -> tuple[Sequence[Finding], tuple[str, ...]]:
        """Prepare the model input in the pool (pure Python over the whole text), then run only
        the model call in a thread: the inspector's event loop keeps the GIL."""
        # One call per inspection, outside its slots: the model call after it should not queue
        # behind the inspection's own chunks.
        prepared = await self._pooled(detector.name + PREPARE_SUFFIX, text, asyncio.Semaphore(1))
        loop = asyncio.get_running_loop()
        found, notes = await loop.run_in_executor(self._executor, detector.detect_prepared, prepared)  # type: ignore[attr-defined]
        return tuple(found), tuple(notes)

    def _detect_threaded(self, detector: Detector, text: str) -> tuple[Sequence[Evidence], tuple[str, ...]]:
        detect_with_notes = getattr(detector, "detect_with_notes", None)
        if detect_with_notes is not None:
            found, notes = detect_with_notes(text)
            return tuple(found), tuple(notes)
        return tuple(detector.detect(text)), ()

    async def _analyse(self, text: str, slots: asyncio.Semaphore) -> tuple[Analysis, tuple[str, ...]]:
        """Normalise ``text`` within the analysis deadline, off the event loop."""
        try:
            if self.pool is not None:
                analysis = await asyncio.wait_for(self._pooled(ANALYSE, text, slots), self.analysis_deadline_s)
            else:
                loop = asyncio.get_running_loop()
                analysis = await asyncio.wait_for(
                    loop.run_in_executor(self._executor, analyse, text), self.analysis_deadline_s
                )
        except TimeoutError:
            log.warning(
                "normalisation missed its deadline (%gs); detectors see the prompt as sent", self.analysis_deadline_s
            )
            return _identity_analysis(text), (ANALYSIS_TIMEOUT_NOTE,)
        except Exception as exc:  # WorkerFailed and friends: the type only
            log.warning("normalisation failed: %s", getattr(exc, "kind", type(exc).__name__))
            return _identity_analysis(text), (ANALYSIS_FAILED_NOTE,)
        assert isinstance(analysis, Analysis)
        return analysis, ()

    async def _run_one(
        self, detector: Detector, text: str, slots: asyncio.Semaphore
    ) -> tuple[DetectorRun, Sequence[Evidence], tuple[str, ...]]:
        loop = asyncio.get_running_loop()
        deadline = self.deadlines.get(detector.name, self.deadline_s)
        started = time.perf_counter()
        if detector.name in self.isolated:
            future: Any = self._detect_pooled(detector.name, text, slots)
        elif detector.name in self.prepared:
            future = self._detect_prepared(detector, text, slots)
        else:
            future = loop.run_in_executor(self._executor, self._detect_threaded, detector, text)
        try:
            findings, notes = await asyncio.wait_for(future, deadline)
        except TimeoutError:
            elapsed = (time.perf_counter() - started) * 1000
            return DetectorRun(detector.name, DetectorStatus.TIMEOUT, elapsed, f"deadline {deadline:g}s"), (), ()
        except WorkerTimeout:  # the pool dropped the call (it is closing)
            elapsed = (time.perf_counter() - started) * 1000
            return DetectorRun(detector.name, DetectorStatus.TIMEOUT, elapsed, f"deadline {deadline:g}s"), (), ()
        except WorkerFailed as exc:  # raised in the worker, or the worker died: the type name only
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("detector %s failed: %s", detector.name, exc.kind)
            return DetectorRun(detector.name, DetectorStatus.FAILED, elapsed, exc.kind), (), ()
        except InferenceError as exc:  # a model that answered outside its schema, timed out, is down
            elapsed = (time.perf_counter() - started) * 1000
            # Their messages are prompt-free by contract (inference.errors): a field, a status code.
            error = f"{type(exc).__name__}: {exc}"
            log.warning("detector %s %s: %s", detector.name, exc.status.value, error)
            return DetectorRun(detector.name, exc.status, elapsed, error), (), ()
        except Exception as exc:  # a detector bug must not take the inspection down
            elapsed = (time.perf_counter() - started) * 1000
            log.warning("detector %s failed: %s", detector.name, type(exc).__name__)
            return DetectorRun(detector.name, DetectorStatus.FAILED, elapsed, type(exc).__name__), (), ()
        elapsed = (time.perf_counter() - started) * 1000
        return DetectorRun(detector.name, DetectorStatus.OK, elapsed), tuple(findings), notes

    async def _run_memory(
        self,
        memory: MemoryDetector,
        text: str,
        tasks: Mapping[str, asyncio.Future[tuple[DetectorRun, Sequence[Evidence], tuple[str, ...]]]],
    ) -> tuple[DetectorRun, Any]:
        """Wait for the redacting detectors, then embed the redacted text and look up neighbours."""
        started = time.perf_counter()
        spans: list[Finding] = []
        for name in memory.redact_with:
            if name in tasks:
                run, found, _notes = await asyncio.shield(tasks[name])
                if run.failed:  # never embed text whose entities could not be found
                    elapsed = (time.perf_counter() - started) * 1000
                    return DetectorRun(
                        memory.name, DetectorStatus.FAILED, elapsed, f"redaction unavailable ({name})"
                    ), None
                spans.extend(f for f in found if isinstance(f, Finding))
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

    def _reads(self, detector: str, languages: Sequence[str]) -> bool:
        reading = self.coverage.get(detector, lang.Coverage())
        return lang.reads(None if reading.languages is None else tuple(reading.languages), languages)

    async def _languages(self, text: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """The prompt's languages (bounded work, see classifiers/language.py); undetermined,
        with a note, if identification fails or misses the analysis deadline."""
        loop = asyncio.get_running_loop()
        try:
            found = await asyncio.wait_for(
                loop.run_in_executor(self._executor, lang.languages, text), self.analysis_deadline_s
            )
        except Exception as exc:  # never the text: only the kind of failure
            log.warning("language identification failed: %s", type(exc).__name__)
            return (lang.UNDETERMINED,), (LANGUAGE_UNAVAILABLE_NOTE,)
        return found, ()

    async def _run_window(
        self, candidates: Candidates, slots: asyncio.Semaphore
    ) -> tuple[list[tuple[DetectorRun, Finding]], tuple[str, ...]]:
        """The window detectors on the joins; only findings that cross a join count."""
        results = await asyncio.gather(*(self._run_one(d, candidates.text, slots) for d in self.window_detectors))
        crossing: list[tuple[DetectorRun, Finding]] = []
        notes: list[str] = []
        for run, found, _notes in results:
            if run.failed:
                notes.append(WINDOW_FAILED_NOTE.format(detector=run.detector))
                continue
            for finding in found:
                if (
                    isinstance(finding, Finding)
                    and finding.span is not None
                    and candidates.crosses(finding.span.start, finding.span.end)
                ):
                    crossing.append((run, finding))
        return crossing, tuple(notes)

    async def inspect(self, text: str, conversation: ConversationRef | None = None) -> Inspection:
        """Inspect one prompt; with ``conversation``, also the joins with its earlier prompts."""
        started = time.perf_counter()
        slots = asyncio.Semaphore(self.parallel)
        analysis, analysis_notes = await self._analyse(text, slots)
        memory = self.memory
        tasks = {
            d.name: asyncio.ensure_future(self._run_one(d, analysis.text, slots))
            for d in self.detectors
            if d is not memory
        }
        memory_task = None if memory is None else asyncio.ensure_future(self._run_memory(memory, analysis.text, tasks))
        languages_task = asyncio.ensure_future(self._languages(analysis.text))
        window_task = None
        if conversation is not None and self.window is not None and self.window_detectors:
            self.window.adopt(conversation.key, conversation.opening_key)
            candidates = self.window.joins(conversation.key, analysis.text)
            self.window.remember(conversation.key, analysis.text)
            if candidates is not None:
                window_task = asyncio.ensure_future(self._run_window(candidates, slots))
        results = await asyncio.gather(*tasks.values())
        memory_run, lookup = (None, None) if memory_task is None else await memory_task
        window_found, window_notes = ([], ()) if window_task is None else await window_task
        languages, language_notes = await languages_task
        findings: list[Finding] = []
        custom: list[CustomFinding] = []
        covered: set[Topic] = set()
        covered_by: dict[str, set[Topic]] = {}
        detector_notes = [n for _run, _found, notes in results for n in notes]
        for run, _found, _notes in results:
            if not run.failed:
                allowed = self.topic_map.get(run.detector, {})
                covered.update(t for t, w in allowed.items() if w > 0)
                covered_by[run.detector] = {t for t, w in allowed.items() if w > 0}
        # Topics some detector that ran reads in one of the prompt's languages.
        read_here = {t for name, ts in covered_by.items() if self._reads(name, languages) for t in ts}
        for run, detector_findings, _notes in results:
            allowed = self.topic_map.get(run.detector, {})
            reading = self.coverage.get(run.detector, lang.Coverage())
            unread = reading.drop_outside and not self._reads(run.detector, languages)
            for finding in detector_findings:
                if isinstance(finding, CustomFinding):
                    # Custom topics are judged on MiniLM against English examples: in a language
                    # their detector does not read, a similarity is noise, not evidence.
                    if not unread:
                        custom.append(finding)
                    continue
                if (
                    unread
                    and (finding.topic in read_here or reading.discard_outside)
                    and finding.topic not in reading.keep_topics
                ):
                    # A model scoring a language it cannot read, where one that can has spoken.
                    continue
                weight = allowed.get(finding.topic, 0.0)
                if weight > 0:
                    findings.append(_to_prompt(finding, analysis, weight))
        for run, finding in window_found:
            weight = self.topic_map.get(run.detector, {}).get(finding.topic, 0.0)
            if weight > 0:
                findings.append(
                    Finding(
                        finding.detector,
                        finding.kind,
                        finding.topic,
                        finding.score * weight,
                        None,
                        f"{finding.explanation} {SPLIT_EXPLANATION}",
                    )
                )
        topics = combine_topic_scores(findings)
        runs = {run.detector: run for run, _found, _notes in results}
        outcome = MemoryResult()
        if memory is not None and memory_run is not None:
            runs[memory.name] = memory_run
            if lookup is not None:
                context = MemoryContext(
                    runs=tuple(runs.values()),
                    raw={run.detector: [f for f in found if isinstance(f, Finding)] for run, found, _notes in results},
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
                covered_by[memory.name] = set(outcome.covered)
                if outcome.topics is not None:
                    topics = dict(outcome.topics)
        return Inspection(
            findings=tuple(findings),
            topics=topics,
            runs=tuple(runs[d.name] for d in self.detectors if d.name in runs),
            elapsed_ms=(time.perf_counter() - started) * 1000,
            transforms=analysis.transforms,
            obfuscations=tuple(
                Obfuscation(kind, count, tuple(Span(a, b) for a, b in spans))
                for kind, count, spans in analysis.obfuscations
            ),
            uncovered=tuple(t for t in Topic if t not in covered),
            languages=languages,
            uncovered_languages=lang.gaps(languages, covered_by, self.coverage),
            neighbours=outcome.neighbours,
            notes=tuple(
                dict.fromkeys((*analysis_notes, *language_notes, *detector_notes, *window_notes, *outcome.notes))
            ),
            memory_tenant=outcome.tenant,
            memory_centroids=outcome.centroids,
            custom_topics=combine_custom_scores(custom),
            custom_findings=tuple(custom),
        )
