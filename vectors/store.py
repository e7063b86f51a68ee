"""The embedding memory's database: centroids, counters and labels, through SQLAlchemy.

:class:`VectorStore` is the source of truth that every inspector process (and the ``feedback``
command) shares; FAISS indexes are caches rebuilt from it (:mod:`vectors.memory`). It holds
vectors of redacted prompts and numbers, never text. Every write that changes what a reader
would see bumps the namespace's ``generation`` in the same transaction, and
:meth:`VectorStore.changes_since` returns exactly what changed after a given generation.

The schema is created and upgraded by the Alembic migrations in ``vectors/migrations`` (own
version table, so the memory can live in the prompt log's database too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import delete, func, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from promptfence.core import Topic
from promptfence.errors import PromptFenceError
from vectors.database import create_store_engine, error_reason, run_migrations
from vectors.models import CentroidRow, CentroidTopicRow, NamespaceRow, TombstoneRow

log = logging.getLogger("promptfence.vectors")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SQLITE_BUSY_TIMEOUT_S = 5.0
VERDICTS = ("false_positive", "true_positive")
# Tombstones older than this are pruned; a process that last synced before that rebuilds fully.
TOMBSTONE_KEEP_S = 7 * 86400.0

Vector = npt.NDArray[np.float32]
Clock = Callable[[], float]


class MemoryUnavailable(PromptFenceError):
    """The memory database cannot be reached or refused the operation; names no content."""


@dataclass(frozen=True)
class CentroidState:
    """One centroid as a reader sees it: vector, counters, labels and reports per topic."""

    id: int
    vector: Vector = field(repr=False)
    members: int
    hits: int
    fp_reports: int
    tp_reports: int
    label_n: int
    created_at: float
    last_used: float
    # topic -> mean LLM label score over the labelled observations (0 when never labelled).
    labels: Mapping[Topic, float] = field(default_factory=dict)
    # topic -> (false positive reports, true positive reports)
    reports: Mapping[Topic, tuple[int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Changes:
    """What a reader at some generation must apply to reach ``generation``."""

    generation: int
    full: bool  # True: ``centroids`` is the whole namespace (rebuild), else only what changed
    centroids: tuple[CentroidState, ...]
    deleted: tuple[int, ...]


@dataclass(frozen=True)
class Assignment:
    """Where an observed vector went: the centroid it joined or started."""

    centroid_id: int
    joined: bool
    similarity: float


@dataclass(frozen=True)
class Observation:
    """A vector to fold into the memory, the nearest centroid (id, similarity) if known, and
    the LLM's labels if it answered."""

    vector: Vector
    nearest: tuple[int, float] | None = None
    labels: Mapping[Topic, float] | None = None


def normalise(vector: npt.NDArray[Any]) -> Vector:
    v = np.asarray(vector, dtype=np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else v


def _to_bytes(vector: Vector) -> bytes:
    return np.ascontiguousarray(vector, dtype="<f4").tobytes()


def _new_centroid(namespace_id: int, vector: Vector, now: float, generation: int) -> CentroidRow:
    """A centroid of one member (``vector`` already normalised), used and changed now."""
    return CentroidRow(
        namespace_id=namespace_id,
        vector=_to_bytes(vector),
        members=1,
        hits=1,
        fp_reports=0,
        tp_reports=0,
        label_n=0,
        created_at=now,
        last_used=now,
        changed_gen=generation,
    )


def _from_bytes(blob: bytes) -> Vector:
    return np.frombuffer(blob, dtype="<f4").astype(np.float32)


class VectorStore:
    """The memory tables in any SQLAlchemy database (SQLite file by default, PostgreSQL tested)."""

    def __init__(self, database_url: str, *, clock: Clock = time.time) -> None:
        self.url = database_url
        self.clock = clock
        self.engine: Engine = create_store_engine(database_url, sqlite_busy_timeout_s=SQLITE_BUSY_TIMEOUT_S)
        self._migrated = False

    # -- schema -----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or upgrade the memory schema with Alembic (idempotent)."""
        if self._migrated:
            return
        try:
            run_migrations(self.engine, MIGRATIONS)
        except SQLAlchemyError as exc:
            raise MemoryUnavailable(f"cannot migrate the memory database ({error_reason(exc)})") from None
        self._migrated = True

    def table_names(self) -> list[str]:
        with self.engine.connect() as conn:
            return sorted(inspect(conn).get_table_names())

    @contextmanager
    def _session(self) -> Iterator[Session]:
        self.migrate()
        try:
            with Session(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as exc:
            raise MemoryUnavailable(f"memory database error ({error_reason(exc)})") from None

    def close(self) -> None:
        self.engine.dispose()

    # -- namespaces -------------------------------------------------------------------------
    def namespace(self, tenant: str, model: str, dimension: int) -> int:
        """The id of (tenant, model)'s memory, created on first use."""
        if not tenant or len(tenant) > 128:
            raise ValueError("a tenant is 1 to 128 characters")
        for _attempt in range(3):
            with self._session() as session:
                row = session.scalar(
                    select(NamespaceRow).where(NamespaceRow.tenant == tenant, NamespaceRow.model == model[:256])
                )
                if row is not None:
                    if row.dimension != dimension:
                        raise MemoryUnavailable(
                            f"memory {tenant}/{model} holds {row.dimension}-d vectors, the model gives {dimension}"
                        )
                    return row.id
                row = NamespaceRow(
                    tenant=tenant,
                    model=model[:256],
                    dimension=dimension,
                    generation=0,
                    tombstones_from=0,
                    created_at=self.clock(),
                )
                session.add(row)
                try:
                    session.commit()
                except IntegrityError:
                    session.rollback()
                    continue  # another process created it between our read and write
                return row.id
        raise MemoryUnavailable("cannot create the memory namespace")

    def namespaces(self, tenant: str) -> list[int]:
        with self._session() as session:
            return list(session.scalars(select(NamespaceRow.id).where(NamespaceRow.tenant == tenant)))

    def generation(self, namespace_id: int) -> int:
        with self._session() as session:
            return int(session.scalar(select(NamespaceRow.generation).where(NamespaceRow.id == namespace_id)) or 0)

    def count(self, namespace_id: int) -> int:
        with self._session() as session:
            return int(
                session.scalar(select(func.count(CentroidRow.id)).where(CentroidRow.namespace_id == namespace_id)) or 0
            )

    # -- reading ----------------------------------------------------------------------------
    def changes_since(self, namespace_id: int, generation: int | None) -> Changes:
        """Everything changed after ``generation`` (None: the whole namespace)."""
        with self._session() as session:
            ns = session.get(NamespaceRow, namespace_id)
            if ns is None:
                raise MemoryUnavailable("memory namespace vanished")
            full = generation is None or generation < ns.tombstones_from or generation > ns.generation
            query = select(CentroidRow).where(CentroidRow.namespace_id == namespace_id)
            if not full:
                query = query.where(CentroidRow.changed_gen > generation)
            rows = list(session.scalars(query.order_by(CentroidRow.id)))
            deleted: tuple[int, ...] = ()
            if not full:
                deleted = tuple(
                    session.scalars(
                        select(TombstoneRow.centroid_id).where(
                            TombstoneRow.namespace_id == namespace_id, TombstoneRow.generation > generation
                        )
                    )
                )
            return Changes(ns.generation, full, tuple(self._states(session, rows)), deleted)

    def get(self, centroid_ids: Iterable[int]) -> list[CentroidState]:
        ids = list(centroid_ids)
        if not ids:
            return []
        with self._session() as session:
            rows = list(session.scalars(select(CentroidRow).where(CentroidRow.id.in_(ids)).order_by(CentroidRow.id)))
            return self._states(session, rows)

    @staticmethod
    def _states(session: Session, rows: Sequence[CentroidRow]) -> list[CentroidState]:
        topics: dict[int, list[CentroidTopicRow]] = {}
        ids = [r.id for r in rows]
        for start in range(0, len(ids), 5000):
            chunk = ids[start : start + 5000]
            for t in session.scalars(select(CentroidTopicRow).where(CentroidTopicRow.centroid_id.in_(chunk))):
                topics.setdefault(t.centroid_id, []).append(t)
        states = []
        for r in rows:
            labels: dict[Topic, float] = {}
            reports: dict[Topic, tuple[int, int]] = {}
            for t in topics.get(r.id, ()):
                topic = Topic(t.topic)
                if r.label_n and t.label_sum:
                    labels[topic] = t.label_sum / r.label_n
                if t.fp_reports or t.tp_reports:
                    reports[topic] = (t.fp_reports, t.tp_reports)
            states.append(
                CentroidState(
                    id=r.id,
                    vector=_from_bytes(r.vector),
                    members=r.members,
                    hits=r.hits,
                    fp_reports=r.fp_reports,
                    tp_reports=r.tp_reports,
                    label_n=r.label_n,
                    created_at=r.created_at,
                    last_used=r.last_used,
                    labels=labels,
                    reports=reports,
                )
            )
        return states

    # -- writing ----------------------------------------------------------------------------
    @staticmethod
    def _bump(session: Session, namespace_id: int) -> int:
        """Take the namespace's next generation (row-locked on PostgreSQL until commit)."""
        session.execute(
            update(NamespaceRow).where(NamespaceRow.id == namespace_id).values(generation=NamespaceRow.generation + 1)
        )
        return int(session.scalar(select(NamespaceRow.generation).where(NamespaceRow.id == namespace_id)) or 0)

    def assign(
        self,
        namespace_id: int,
        vector: Vector,
        *,
        nearest: tuple[int, float] | None,
        join_similarity: float,
        labels: Mapping[Topic, float] | None = None,
    ) -> Assignment:
        """Online clustering: fold ``vector`` into the nearest centroid if similar enough, else start one.

        The running mean is computed from the row as stored (locked for the transaction), so two
        processes joining the same centroid at once both count; the mean is re-normalised.
        """
        return self.assign_many(namespace_id, [Observation(vector, nearest, labels)], join_similarity=join_similarity)[
            0
        ]

    def assign_many(
        self, namespace_id: int, observations: Sequence[Observation], *, join_similarity: float
    ) -> list[Assignment]:
        """:meth:`assign` for several vectors in one transaction (one generation, one commit).

        Concurrent inspections' observations are committed together (vectors/memory.py): the
        commit, not the clustering, was most of the memory's CPU per prompt. They are applied in
        order, so two vectors joining one centroid both count, as they would one by one.
        """
        if not observations:
            return []
        now = self.clock()
        with self._session() as session, session.begin():
            gen = self._bump(session, namespace_id)
            fresh: list[CentroidRow] = []
            return [
                self._assign_one(session, namespace_id, gen, now, obs, join_similarity, fresh) for obs in observations
            ]

    @staticmethod
    def _assign_one(
        session: Session,
        namespace_id: int,
        gen: int,
        now: float,
        obs: Observation,
        join_similarity: float,
        fresh: list[CentroidRow],
    ) -> Assignment:
        vec = normalise(obs.vector)
        nearest, labels = obs.nearest, obs.labels
        # A centroid started earlier in this batch was not there when ``nearest`` was searched:
        # join it if it is closer, as one-by-one commits would have.
        if fresh:
            sims = [float(_from_bytes(r.vector) @ vec) for r in fresh]
            best = max(range(len(fresh)), key=sims.__getitem__)
            if sims[best] >= join_similarity and (nearest is None or sims[best] > nearest[1]):
                nearest = (fresh[best].id, sims[best])
        row: CentroidRow | None = None
        similarity = 0.0
        joined = False
        if nearest is not None and nearest[1] >= join_similarity:
            row = session.scalar(
                select(CentroidRow)
                .where(CentroidRow.id == nearest[0], CentroidRow.namespace_id == namespace_id)
                .with_for_update()
            )
        if row is not None:
            current = _from_bytes(row.vector)
            similarity = float(current @ vec)
            joined = True
            mean = normalise(current * row.members + vec)
            row.vector = _to_bytes(mean)
            row.members += 1
            row.hits += 1
            row.last_used = now
            row.changed_gen = gen
        else:
            row = _new_centroid(namespace_id, vec, now, gen)
            session.add(row)
            session.flush()
            fresh.append(row)
            similarity = 1.0
        if labels is not None:
            row.label_n += 1
            existing = {
                t.topic: t
                for t in session.scalars(select(CentroidTopicRow).where(CentroidTopicRow.centroid_id == row.id))
            }
            for topic, score in labels.items():
                if score <= 0:
                    continue
                trow = existing.get(topic.value)
                if trow is None:
                    session.add(
                        CentroidTopicRow(
                            centroid_id=row.id, topic=topic.value, label_sum=score, fp_reports=0, tp_reports=0
                        )
                    )
                else:
                    trow.label_sum += score
        return Assignment(row.id, joined, similarity)

    def touch(self, centroid_ids: Iterable[int]) -> None:
        """Mark centroids as used now (they served a lookup): keeps them from expiring."""
        ids = sorted(set(centroid_ids))
        if not ids:
            return
        with self._session() as session, session.begin():
            session.execute(update(CentroidRow).where(CentroidRow.id.in_(ids)).values(last_used=self.clock()))

    def report(self, tenant: str, centroid_ids: Iterable[int], topic: Topic, verdict: str) -> list[int]:
        """Count an admin's false / true positive verdict on the centroids a record was assigned.

        Only centroids of ``tenant``'s memory are touched (ids from another tenant's record are
        ignored); returns the ids that were counted.
        """
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        ids = sorted(set(centroid_ids))
        if not ids:
            return []
        fp = 1 if verdict == "false_positive" else 0
        tp = 1 - fp
        with self._session() as session, session.begin():
            rows = list(
                session.scalars(
                    select(CentroidRow)
                    .join(NamespaceRow, NamespaceRow.id == CentroidRow.namespace_id)
                    .where(CentroidRow.id.in_(ids), NamespaceRow.tenant == tenant)
                    .with_for_update()
                )
            )
            gens: dict[int, int] = {}
            for row in rows:
                if row.namespace_id not in gens:
                    gens[row.namespace_id] = self._bump(session, row.namespace_id)
                row.fp_reports += fp
                row.tp_reports += tp
                row.last_used = self.clock()
                row.changed_gen = gens[row.namespace_id]
                trow = session.get(CentroidTopicRow, (row.id, topic.value))
                if trow is None:
                    session.add(
                        CentroidTopicRow(
                            centroid_id=row.id, topic=topic.value, label_sum=0.0, fp_reports=fp, tp_reports=tp
                        )
                    )
                else:
                    trow.fp_reports += fp
                    trow.tp_reports += tp
            return [r.id for r in rows]

    def expire(self, namespace_id: int, retention_s: float) -> list[int]:
        """Delete centroids not used within ``retention_s``; returns their ids (tombstoned)."""
        now = self.clock()
        cutoff = now - retention_s
        with self._session() as session, session.begin():
            old = list(
                session.scalars(
                    select(CentroidRow.id).where(
                        CentroidRow.namespace_id == namespace_id, CentroidRow.last_used < cutoff
                    )
                )
            )
            prune_before = now - TOMBSTONE_KEEP_S
            pruned_gen = session.scalar(
                select(func.max(TombstoneRow.generation)).where(
                    TombstoneRow.namespace_id == namespace_id, TombstoneRow.deleted_at < prune_before
                )
            )
            if pruned_gen is not None:
                session.execute(
                    delete(TombstoneRow).where(
                        TombstoneRow.namespace_id == namespace_id, TombstoneRow.generation <= pruned_gen
                    )
                )
                session.execute(
                    update(NamespaceRow)
                    .where(NamespaceRow.id == namespace_id)
                    .values(tombstones_from=int(pruned_gen) + 1)
                )
            if not old:
                return []
            gen = self._bump(session, namespace_id)
            for start in range(0, len(old), 5000):
                chunk = old[start : start + 5000]
                session.execute(delete(CentroidTopicRow).where(CentroidTopicRow.centroid_id.in_(chunk)))
                session.execute(delete(CentroidRow).where(CentroidRow.id.in_(chunk)))
                session.execute(
                    delete(TombstoneRow).where(
                        TombstoneRow.namespace_id == namespace_id, TombstoneRow.centroid_id.in_(chunk)
                    )
                )
                session.add_all(
                    TombstoneRow(namespace_id=namespace_id, centroid_id=cid, generation=gen, deleted_at=now)
                    for cid in chunk
                )
        log.info("memory expiry: removed %d centroid(s) unused for %.0f days", len(old), retention_s / 86400)
        return old

    def bulk_insert(self, namespace_id: int, vectors: Vector) -> list[int]:
        """Insert many unlabelled centroids in one transaction (benchmarks and tests)."""
        now = self.clock()
        with self._session() as session, session.begin():
            gen = self._bump(session, namespace_id)
            rows = [_new_centroid(namespace_id, normalise(v), now, gen) for v in vectors]
            session.add_all(rows)
            session.flush()
            return [r.id for r in rows]
