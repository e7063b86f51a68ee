"""The embedding memory: one tenant's centroids in the database, mirrored in a FAISS index.

:class:`VectorMemory` is what the inspector uses. It keeps the database (:class:`VectorStore`)
authoritative and its :class:`VectorIndex` in step: at start it loads every centroid of its
namespace (or a snapshot written at the same generation), and before every lookup it reads the
namespace's generation and applies only what other processes (other inspectors, the
``feedback`` command, expiry) changed since. Several inspector processes can therefore share one
database; each answers from its own index, at most one round-trip behind.

Online clustering (:meth:`VectorMemory.observe`): a new vector joins the nearest centroid whose
cosine similarity reaches ``join_similarity`` (running mean, re-normalised) or starts a new
centroid, so the memory grows with the number of *kinds* of prompt, not prompts. Centroids not
used for ``retention_days`` expire (:meth:`VectorMemory.expire`).

Write-behind (``write_behind_s`` > 0, issue 17). Committing an observation was most of the
memory's CPU on a prompt's path (the SQLite commit, SQLAlchemy's unit of work, the index sync
after it). An observation that *joins* an existing centroid already knows the id it will be
assigned (the nearest one's), so it is queued and answered at once; a background thread commits
the queue at most ``write_behind_s`` later, in one transaction and one index sync, with the
touched centroids' last-use times. An observation that *starts* a centroid is committed before
it returns, as before (its new id goes into the prompt's log record), taking the queue with it.
What this costs, and is bounded: after ``kill -9`` the joins of the last ``write_behind_s``
seconds are lost (counters and running means lag by those prompts; no record names a centroid
that was never written); this process's own searches see a join's moved mean within
``write_behind_s``; if the joined centroid expired meanwhile, the join starts a new centroid, so
that prompt's log record names a centroid that no longer exists and feedback on it counts
nothing. :meth:`VectorMemory.flush` (called by :meth:`snapshot` at shutdown) writes the queue.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from promptfence.core import Topic
from vectors.group_commit import GroupCommitter
from vectors.index import IndexSpec, VectorIndex
from vectors.store import Assignment, CentroidState, Changes, Observation, Vector, VectorStore, normalise

log = logging.getLogger("promptfence.vectors")


@dataclass(frozen=True)
class MemorySpec:
    tenant: str
    model: str
    dimension: int
    join_similarity: float = 0.88
    retention_days: float = 60.0
    index: IndexSpec | None = None
    # Directory for index snapshots (faster start at large sizes); None: always rebuild.
    snapshot_dir: Path | None = None
    # A search checks the database for other processes' changes at most this often (seconds);
    # this process's own writes are applied at once. 0: before every search.
    sync_interval_s: float = 0.0
    # Joins of existing centroids (and last-use touches) are committed by a background thread
    # at most this long after the prompt (seconds); 0: every observation commits before it
    # returns. A crash loses at most this window's joins (see the module docstring).
    write_behind_s: float = 0.0


# Queued joins past this many (the database refuses writes for a long time) drop the oldest.
MAX_BEHIND = 10_000
# A queue this long is flushed at once rather than at the next interval.
FLUSH_AT = 256


@dataclass(frozen=True)
class Neighbour:
    """A centroid close to a query: its id and cosine similarity (never any text)."""

    centroid_id: int
    similarity: float
    state: CentroidState = field(repr=False)


class VectorMemory:
    def __init__(self, store: VectorStore, spec: MemorySpec) -> None:
        self.store = store
        self.spec = spec
        index_spec = spec.index or IndexSpec(dimension=spec.dimension)
        if index_spec.dimension != spec.dimension:
            raise ValueError("index dimension differs from the memory's")
        self.namespace_id = store.namespace(spec.tenant, spec.model, spec.dimension)
        self.index = VectorIndex(index_spec)
        # Concurrent inspections' observations share one transaction (vectors/group_commit.py).
        self._observations: GroupCommitter[Observation, Assignment] = GroupCommitter(self._commit_observations)
        self._states: dict[int, CentroidState] = {}
        self._generation: int | None = None
        self._last_sync_check = float("-inf")
        self._lock = threading.RLock()
        # Write-behind (spec.write_behind_s > 0): queued joins and touches, and their flusher.
        self._behind: list[Observation] = []
        self._behind_touch: set[int] = set()
        self._behind_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._closed = False
        self.dropped = 0  # queued joins dropped because the database refused them too long
        self._start()

    # -- keeping in step with the database --------------------------------------------------
    def _snapshot_paths(self) -> tuple[Path, Path] | None:
        if self.spec.snapshot_dir is None:
            return None
        base = self.spec.snapshot_dir / f"memory-ns{self.namespace_id}.faiss"
        return base, base.with_suffix(".json")

    def _start(self) -> None:
        with self._lock:
            changes = self.store.changes_since(self.namespace_id, None)
            self._states = {s.id: s for s in changes.centroids}
            items = [(s.id, s.vector) for s in changes.centroids]
            paths = self._snapshot_paths()
            loaded = False
            if paths is not None and paths[0].is_file() and paths[1].is_file():
                try:
                    meta = json.loads(paths[1].read_text())
                except (OSError, ValueError):
                    meta = {}
                if meta.get("generation") == changes.generation and meta.get("model") == self.spec.model:
                    loaded = self.index.load(str(paths[0]), items)
            if not loaded:
                self.index.rebuild(items)
            self._generation = changes.generation
            log.info(
                "memory %s: %d centroid(s), %s index on %s%s",
                self.spec.tenant,
                len(self._states),
                self.index.kind,
                self.index.device,
                " (from snapshot)" if loaded else "",
            )

    def sync(self) -> bool:
        """Apply what changed in the database since our generation; True if anything did."""
        with self._lock:
            generation = self.store.generation(self.namespace_id)
            if generation == self._generation:
                return False
            self._apply(self.store.changes_since(self.namespace_id, self._generation))
            return True

    def _apply(self, changes: Changes) -> None:
        if changes.full:
            self._states = {s.id: s for s in changes.centroids}
            self.index.rebuild((s.id, s.vector) for s in changes.centroids)
        else:
            for cid in changes.deleted:
                self._states.pop(cid, None)
                self.index.remove(cid)
            for state in changes.centroids:
                previous = self._states.get(state.id)
                self._states[state.id] = state
                if previous is None or not np.array_equal(previous.vector, state.vector):
                    self.index.upsert(state.id, state.vector)
        self._generation = changes.generation

    @property
    def generation(self) -> int | None:
        return self._generation

    def __len__(self) -> int:
        return len(self._states)

    def centroid(self, centroid_id: int) -> CentroidState | None:
        return self._states.get(centroid_id)

    # -- use --------------------------------------------------------------------------------
    def search(self, vector: Vector, k: int) -> list[Neighbour]:
        """The ``k`` most similar centroids, best first (after catching up with the database)."""
        now = time.monotonic()
        if now - self._last_sync_check >= self.spec.sync_interval_s:
            self._last_sync_check = now
            self.sync()
        sims, ids = self.index.search(normalise(vector)[None, :], k)
        out = []
        with self._lock:
            for sim, cid in zip(sims[0], ids[0], strict=True):
                state = self._states.get(int(cid))
                if cid >= 0 and state is not None:
                    out.append(Neighbour(int(cid), float(sim), state))
        return out

    def observe(
        self,
        vector: Vector,
        *,
        labels: Mapping[Topic, float] | None = None,
        nearest: Neighbour | None = None,
    ) -> Assignment:
        """Fold a vector into the memory (join or start a centroid); ``nearest`` saves a search."""
        if nearest is None:
            found = self.search(vector, 1)
            nearest = found[0] if found else None
        observation = Observation(
            vector, None if nearest is None else (nearest.centroid_id, nearest.similarity), labels
        )
        if (
            self.spec.write_behind_s > 0
            and nearest is not None
            and nearest.similarity >= self.spec.join_similarity
            and not self._closed
        ):
            # A join: its centroid id is known now; the write can follow the answer.
            self._defer(observations=(observation,))
            return Assignment(nearest.centroid_id, True, nearest.similarity)
        return self._observations.submit(observation)

    def _commit_observations(self, observations: Sequence[Observation]) -> list[Assignment]:
        behind = self._drain()  # queued joins ride along in the same transaction
        try:
            assignments = self.store.assign_many(
                self.namespace_id, [*behind, *observations], join_similarity=self.spec.join_similarity
            )
        except BaseException:
            self._requeue(behind)
            raise
        self.sync()  # the next search sees these centroids
        return assignments[len(behind) :]

    def touch(self, centroid_ids: Iterable[int]) -> None:
        if self.spec.write_behind_s > 0 and not self._closed:
            self._defer(touched=centroid_ids)
            return
        self.store.touch(centroid_ids)

    # -- write-behind -----------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Joins queued and not yet committed."""
        with self._behind_lock:
            return len(self._behind)

    def _defer(self, *, observations: Sequence[Observation] = (), touched: Iterable[int] = ()) -> None:
        with self._behind_lock:
            self._behind.extend(observations)
            self._behind_touch.update(touched)
            first_drop = not self.dropped
            if self._trim_locked() and first_drop:
                log.warning("memory %s: queued joins dropped (database unavailable)", self.spec.tenant)
            full = len(self._behind) >= FLUSH_AT
            if self._flusher is None:
                self._flusher = threading.Thread(target=self._flush_loop, name="memory-write-behind", daemon=True)
                self._flusher.start()
        if full:
            self._wake.set()

    def _drain(self) -> list[Observation]:
        with self._behind_lock:
            behind, self._behind = self._behind, []
            return behind

    def _requeue(self, behind: Sequence[Observation]) -> None:
        """Put refused joins back in front (bounded: the oldest go first)."""
        if not behind:
            return
        with self._behind_lock:
            self._behind[:0] = behind
            overflow = self._trim_locked()
        if overflow:
            log.warning("memory %s: %d queued join(s) dropped (database unavailable)", self.spec.tenant, overflow)

    def _trim_locked(self) -> int:
        """Drop the oldest queued joins past MAX_BEHIND (caller holds the queue lock); how many."""
        overflow = len(self._behind) - MAX_BEHIND
        if overflow <= 0:
            return 0
        del self._behind[:overflow]
        self.dropped += overflow
        return overflow

    def _flush_loop(self) -> None:
        while not self._closed:
            self._wake.wait(self.spec.write_behind_s)
            self._wake.clear()
            try:
                self.flush()
            except Exception as exc:  # the database is down: keep the queue, try again later
                log.warning("memory write-behind failed: %s", type(exc).__name__)

    def flush(self) -> int:
        """Commit the queued joins and touches now (one transaction, one index sync); how many joins."""
        with self._flush_lock:
            with self._behind_lock:
                touched, self._behind_touch = self._behind_touch, set()
            behind = self._drain()
            try:
                if behind:
                    try:
                        self.store.assign_many(self.namespace_id, behind, join_similarity=self.spec.join_similarity)
                    except BaseException:
                        self._requeue(behind)
                        raise
                    self.sync()
                if touched:
                    self.store.touch(touched)
            except BaseException:
                with self._behind_lock:  # a refused flush keeps the last-use times for the next one
                    self._behind_touch |= touched
                raise
            return len(behind)

    def close(self) -> None:
        """Write what is queued and stop the flusher (later observations commit at once)."""
        self._closed = True
        self._wake.set()
        flusher = self._flusher
        if flusher is not None:
            flusher.join(timeout=5.0)
        self.flush()

    def report(self, centroid_ids: Iterable[int], topic: Topic, verdict: str) -> list[int]:
        counted = self.store.report(self.spec.tenant, centroid_ids, topic, verdict)
        self.sync()
        return counted

    def expire(self) -> list[int]:
        """Remove centroids unused for ``retention_days`` (0: keep forever)."""
        if not self.spec.retention_days:
            return []
        removed = self.store.expire(self.namespace_id, self.spec.retention_days * 86400.0)
        self.sync()
        return removed

    def snapshot(self) -> Path | None:
        """Write the index and the generation it reflects (for a faster next start); queued
        joins are committed first."""
        self.flush()  # outside self._lock: the flusher takes the flush lock, then this one
        paths = self._snapshot_paths()
        if paths is None:
            return None
        with self._lock:
            self.sync()
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            self.index.write(str(paths[0]))
            paths[1].write_text(json.dumps({"generation": self._generation, "model": self.spec.model}))
        return paths[0]
