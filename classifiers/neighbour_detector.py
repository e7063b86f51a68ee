"""The ``neighbours`` detector: an embedding memory of past prompts, for fallback and feedback.

Two uses, both from the product description:

1. **Neighbour fallback** (AI prompt protection): when the LLM topic classifier fails, times out
   or answers outside its schema, the topics only the LLM covers (CUSTOMER_DATA, ...) come from
   the labels of similar past prompts that the LLM did classify (medium confidence or more).
2. **Context analysis from feedback** (DLP AI context analysis): every inspection's redacted
   vector is assigned to a centroid, whose id travels in the Inspection into the log record's
   clear metadata. ``promptfence feedback LOG_ID --false-positive PII`` counts the report on that
   centroid; later prompts in a similar context get a lower (false positives) or higher (true
   positives) score for that topic.

Privacy. Detectors never rewrite text, and this one runs alongside them, so redaction uses
their spans: the engine starts :meth:`NeighbourDetector.lookup` as soon as the ``redact_with``
detectors (Presidio and secrets by default) have finished, in parallel with the slow ones (the
LLM, Prompt Guard). Their spans are replaced by typed placeholders (``[EMAIL_ADDRESS]``) in the
normalised text, and only that redacted text is embedded; if a redacting detector failed,
nothing is embedded or stored. The memory stores vectors and counters, never text.

Score changes are explicit: fallback findings have kind ``neighbours.<TOPIC>``, and every
neighbour that moved a topic is listed in ``Inspection.neighbours`` (centroid id, similarity,
the change it caused) with the notes ``neighbour_fallback`` / ``feedback_adjusted``.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from classifiers.engine import MemoryContext, MemoryResult, combine_topic_scores
from inference.embedder import Embedder, Vector
from promptfence.core import CONFIDENCE_THRESHOLDS, Confidence, Finding, NeighbourRef, Topic
from promptfence.errors import ConfigError
from vectors.memory import Neighbour, VectorMemory
from vectors.store import normalise

if TYPE_CHECKING:
    from promptfence.config import Config

log = logging.getLogger("promptfence.inspector")

NAME = "neighbours"
LLM_DETECTOR = "llm"
FALLBACK_NOTE = "neighbour_fallback"
FEEDBACK_NOTE = "feedback_adjusted"
WRITE_FAILED_NOTE = "memory_write_failed"
EXPIRY_INTERVAL_S = 6 * 3600.0
_LABEL_RE = re.compile(r"[^A-Z0-9]+")


@dataclass(frozen=True)
class NeighbourSettings:
    k: int = 8
    fallback_similarity: float = 0.5
    feedback_similarity: float = 0.4
    feedback_strength: float = 1.2
    # The most a score can move in log-odds, however many reports there are.
    max_shift: float = 4.0
    redact_with: tuple[str, ...] = ("presidio", "secrets")


@dataclass(frozen=True)
class MemoryLookup:
    """One prompt's redacted vector and its nearest centroids; holds no text."""

    vector: Vector = field(repr=False)
    neighbours: tuple[Neighbour, ...]
    placeholders: Mapping[str, int]  # how many spans of each type were redacted


def placeholder(kind: str) -> str:
    """``pii.EMAIL_ADDRESS`` -> ``EMAIL_ADDRESS``, ``secret.aws-access-key`` -> ``AWS_ACCESS_KEY``."""
    label = _LABEL_RE.sub("_", kind.rsplit(".", 1)[-1].upper()).strip("_")
    return label or "REDACTED"


def redact(text: str, spans: Sequence[Finding]) -> tuple[str, dict[str, int]]:
    """Replace every finding span with ``[TYPE]``; overlapping spans merge (the first names it)."""
    parts = sorted(
        ((f.span.start, f.span.end, placeholder(f.kind)) for f in spans if f.span is not None),
        key=lambda p: (p[0], -p[1]),
    )
    merged: list[tuple[int, int, str]] = []
    for start, end, label in parts:
        start, end = max(0, start), min(len(text), end)
        if end <= start:
            continue
        if merged and start <= merged[-1][1]:
            last = merged[-1]
            merged[-1] = (last[0], max(last[1], end), last[2])
        else:
            merged.append((start, end, label))
    out: list[str] = []
    counts: dict[str, int] = {}
    cursor = 0
    for start, end, label in merged:
        out.append(text[cursor:start])
        out.append(f"[{label}]")
        counts[label] = counts.get(label, 0) + 1
        cursor = end
    out.append(text[cursor:])
    return "".join(out), counts


def _logit(p: float) -> float:
    p = min(max(p, 1e-4), 1 - 1e-4)
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class NeighbourDetector:
    name = NAME

    def __init__(self, embedder: Embedder, memory: VectorMemory, settings: NeighbourSettings | None = None) -> None:
        if embedder.dimension != memory.spec.dimension:
            raise ValueError(
                f"memory holds {memory.spec.dimension}-d vectors, {embedder.name} gives {embedder.dimension}"
            )
        self.embedder = embedder
        self.memory = memory
        self.settings = settings or NeighbourSettings()
        self.redact_with = tuple(self.settings.redact_with)
        self.version = f"{embedder.name}+faiss-{memory.index.kind}"
        self._expiry_lock = threading.Lock()
        self._last_expiry = 0.0
        self.expire()

    # -- the engine's two calls -------------------------------------------------------------
    def embed(self, redacted: str) -> Vector:
        windows = self.embedder.embed_windows(redacted)
        return normalise(windows.mean(axis=0))

    def lookup(self, text: str, spans: Sequence[Finding]) -> MemoryLookup:
        redacted, counts = redact(text, spans)
        vector = self.embed(redacted)
        return MemoryLookup(vector, tuple(self.memory.search(vector, self.settings.k)), counts)

    def detect(self, text: str) -> Sequence[Finding]:
        """Standalone use (outside the engine): what labelled neighbours say; nothing is stored.

        Without the engine there are no spans to redact with, so the text is embedded as given.
        """
        found = self.lookup(text, ())
        return self._fallback(found, frozenset(Topic))[0]

    def finish(self, lookup: MemoryLookup, context: MemoryContext) -> MemoryResult:
        findings: list[Finding] = []
        refs: list[NeighbourRef] = []
        notes: list[str] = []
        covered: frozenset[Topic] = frozenset()
        topics = dict(context.topics)
        runs = {r.detector: r for r in context.runs}
        llm_run = runs.get(LLM_DETECTOR)
        if llm_run is not None and llm_run.failed:
            others = {
                t
                for r in context.runs
                if not r.failed and r.detector not in (LLM_DETECTOR, self.name)
                for t, w in context.topic_map.get(r.detector, {}).items()
                if w > 0
            }
            llm_only = frozenset(
                t for t, w in context.topic_map.get(LLM_DETECTOR, {}).items() if w > 0 and t not in others
            )
            allowed = frozenset(t for t, w in context.topic_map.get(self.name, {}).items() if w > 0)
            added, fallback_refs, covered = self._fallback(lookup, llm_only & allowed)
            if covered:
                findings.extend(added)
                refs.extend(fallback_refs)
                notes.append(FALLBACK_NOTE)
                topics = combine_topic_scores([*context.findings, *added])
        topics, feedback_refs = self._adjust(topics, lookup)
        if feedback_refs:
            refs.extend(feedback_refs)
            notes.append(FEEDBACK_NOTE)
        centroids: tuple[int, ...] = ()
        try:
            centroids = self._remember(lookup, context, topics, [r.centroid_id for r in refs])
        except Exception as exc:  # the database is down: the inspection stands, without memory ids
            log.warning("memory write failed: %s", type(exc).__name__)
            notes.append(WRITE_FAILED_NOTE)
        return MemoryResult(
            findings=tuple(findings),
            topics=topics,
            covered=covered,
            neighbours=tuple(refs),
            notes=tuple(notes),
            tenant=self.memory.spec.tenant,
            centroids=centroids,
        )

    # -- fallback ---------------------------------------------------------------------------
    def _fallback(
        self, lookup: MemoryLookup, wanted: frozenset[Topic]
    ) -> tuple[list[Finding], list[NeighbourRef], frozenset[Topic]]:
        """Similarity-weighted labels of labelled neighbours, discounted by the best similarity."""
        labelled = [
            n for n in lookup.neighbours if n.state.label_n > 0 and n.similarity >= self.settings.fallback_similarity
        ]
        if not labelled or not wanted:
            return [], [], frozenset()
        weight = sum(n.similarity for n in labelled)
        best = max(n.similarity for n in labelled)
        findings: list[Finding] = []
        refs: list[NeighbourRef] = []
        for topic in sorted(wanted):
            shares = [(n, n.similarity * n.state.labels.get(topic, 0.0) / weight) for n in labelled]
            score = sum(s for _, s in shares) * best
            if score <= 0:
                continue
            findings.append(
                Finding(
                    NAME,
                    f"{NAME}.{topic.value}",
                    topic,
                    score,
                    None,
                    f"{len(labelled)} labelled neighbour(s), best similarity {best:.2f}",
                )
            )
            refs.extend(
                NeighbourRef(n.centroid_id, n.similarity, topic, s * best, "fallback") for n, s in shares if s > 0
            )
        return findings, refs, wanted

    # -- feedback ---------------------------------------------------------------------------
    def _adjust(
        self, topics: Mapping[Topic, float], lookup: MemoryLookup
    ) -> tuple[dict[Topic, float], list[NeighbourRef]]:
        """Move each detected topic's score in log-odds by the reports on similar contexts."""
        out = dict(topics)
        refs: list[NeighbourRef] = []
        floor = self.settings.feedback_similarity
        for topic, score in topics.items():
            if score < CONFIDENCE_THRESHOLDS[Confidence.LOW]:
                continue
            votes: list[tuple[Neighbour, float, str]] = []
            for n in lookup.neighbours:
                fp, tp = n.state.reports.get(topic, (0, 0))
                if n.similarity < floor or fp == tp:
                    continue
                # A report counts as much as its context is similar (cosine), from the floor up.
                votes.append((n, n.similarity * (tp - fp), "true_positive" if tp > fp else "false_positive"))
            if not votes:
                continue
            raw = self.settings.feedback_strength * sum(v for _, v, _ in votes)
            shift = max(-self.settings.max_shift, min(self.settings.max_shift, raw))
            new = _sigmoid(_logit(score) + shift)
            delta = new - score
            out[topic] = new
            total = sum(v for _, v, _ in votes) or 1.0
            refs.extend(NeighbourRef(n.centroid_id, n.similarity, topic, delta * v / total, why) for n, v, why in votes)
        return out, refs

    # -- learning ---------------------------------------------------------------------------
    def _remember(
        self, lookup: MemoryLookup, context: MemoryContext, topics: Mapping[Topic, float], used: Sequence[int]
    ) -> tuple[int, ...]:
        """Assign the vector to a centroid when there is something to learn about it.

        Stored: prompts with a detection (an admin may report it) and prompts the LLM labelled
        at medium or more (fallback material). Plain benign prompts are not stored.
        """
        labels = self._llm_labels(context)
        detected = any(s >= CONFIDENCE_THRESHOLDS[Confidence.LOW] for s in context.topics.values())
        if used:
            self.memory.touch(used)
        self.expire()
        if not detected and not (labels and any(v > 0 for v in labels.values())):
            return ()
        nearest = lookup.neighbours[0] if lookup.neighbours else None
        assignment = self.memory.observe(lookup.vector, labels=labels, nearest=nearest)
        return (assignment.centroid_id,)

    @staticmethod
    def _llm_labels(context: MemoryContext) -> dict[Topic, float] | None:
        """The LLM's valid answer, kept only at medium confidence or more; None if it did not answer."""
        run = next((r for r in context.runs if r.detector == LLM_DETECTOR), None)
        if run is None or run.failed:
            return None
        medium = CONFIDENCE_THRESHOLDS[Confidence.MEDIUM]
        labels = dict.fromkeys(Topic, 0.0)
        for finding in context.raw.get(LLM_DETECTOR, ()):
            if finding.score >= medium:
                labels[finding.topic] = max(labels[finding.topic], min(1.0, finding.score))
        return labels

    def close(self) -> None:
        """Write queued joins and an index snapshot for a faster next start, then release the database."""
        try:
            self.memory.close()
        except Exception as exc:  # the database is down: the queued joins are lost, and said so
            log.warning("memory write-behind flush failed: %s", type(exc).__name__)
        try:
            self.memory.snapshot()
        except Exception as exc:  # a snapshot is only a cache
            log.warning("memory snapshot failed: %s", type(exc).__name__)
        self.memory.store.close()

    def expire(self) -> list[int]:
        """Expire unused centroids at most every six hours (and at start)."""
        now = time.monotonic()
        with self._expiry_lock:
            if self._last_expiry and now - self._last_expiry < EXPIRY_INTERVAL_S:
                return []
            self._last_expiry = now
        return self.memory.expire()


def build_neighbour_detector(config: Config, embedder: Embedder) -> NeighbourDetector:
    """The ``neighbours`` detector for ``memory:`` (database, tenant, index) over ``embedder``."""
    from vectors.index import APPROXIMATE_KINDS, IndexSpec
    from vectors.memory import MemorySpec
    from vectors.store import VectorStore

    mem = config.memory
    for name in ("join_similarity", "fallback_similarity", "feedback_similarity"):
        value = getattr(mem, name)
        if not 0.0 < value < 1.0:
            raise ConfigError("expected a cosine similarity between 0 and 1", field=f"memory.{name}")
    if mem.k < 1:
        raise ConfigError("expected at least 1", field="memory.k")
    if mem.approximate not in APPROXIMATE_KINDS:
        raise ConfigError(f"expected one of {', '.join(APPROXIMATE_KINDS)}", field="memory.approximate")
    if not mem.tenant or len(mem.tenant) > 128:
        raise ConfigError("expected 1 to 128 characters", field="memory.tenant")
    if mem.retention_days < 0:
        raise ConfigError("expected 0 (keep) or a positive number of days", field="memory.retention_days")
    if not 0 <= mem.sync_interval_s <= 60:
        raise ConfigError("expected 0 to 60 seconds", field="memory.sync_interval_s")
    store = VectorStore(config.memory_database_url)
    memory = VectorMemory(
        store,
        MemorySpec(
            tenant=mem.tenant,
            model=embedder.name,
            dimension=embedder.dimension,
            join_similarity=mem.join_similarity,
            retention_days=mem.retention_days,
            sync_interval_s=mem.sync_interval_s,
            # Joins are written behind within the same bound as other processes' staleness.
            write_behind_s=mem.sync_interval_s,
            index=IndexSpec(
                dimension=embedder.dimension,
                approximate_above=mem.approximate_above,
                approximate=mem.approximate,
                device=mem.device,
            ),
            snapshot_dir=config.memory_snapshot_dir,
        ),
    )
    settings = NeighbourSettings(
        k=mem.k,
        fallback_similarity=mem.fallback_similarity,
        feedback_similarity=mem.feedback_similarity,
        feedback_strength=mem.feedback_strength,
        redact_with=tuple(mem.redact_with),
    )
    return NeighbourDetector(embedder, memory, settings)
