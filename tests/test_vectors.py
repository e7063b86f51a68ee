"""The embedding memory without a model: FAISS index, database, clustering, expiry, sync, tenants."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from classifiers.neighbour_detector import placeholder, redact
from promptfence.core import Finding, Inspection, NeighbourRef, Span, Topic
from tests.support.logdb import BACKENDS, make_log_db
from vectors.bench import clustered_vectors, noisy_queries, recall_at_k
from vectors.index import IndexSpec, VectorIndex
from vectors.memory import MemorySpec, VectorMemory
from vectors.store import VectorStore, normalise

DIM = 32
DAY = 86400.0


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with make_log_db(request.param, tmp_path) as db:
        yield db.url


def unit(seed: int, dim: int = DIM) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal(dim))


def near(v: np.ndarray, seed: int, eps: float = 0.05) -> np.ndarray:
    return normalise(v + eps * unit(seed, len(v)))


def memory(url: str, clock: Clock, tenant: str = "acme", **kw: object) -> VectorMemory:
    return VectorMemory(VectorStore(url, clock=clock), MemorySpec(tenant, "test-model", DIM, **kw))  # type: ignore[arg-type]


# -- FAISS index ----------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_index_recall_against_exact(kind: str) -> None:
    base = clustered_vectors(6000, 64, clusters=100)
    queries = noisy_queries(base, 100)
    items = list(zip(range(1, len(base) + 1), base, strict=True))
    exact = VectorIndex(IndexSpec(dimension=64, approximate_above=10**9))
    exact.rebuild(items)
    approx = VectorIndex(IndexSpec(dimension=64, approximate_above=1000, approximate=kind))
    approx.rebuild(items)
    assert (exact.kind, approx.kind) == ("flat", kind)
    _, truth = exact.search(queries, 10)
    _, found = approx.search(queries, 10)
    assert recall_at_k(truth, found) >= 0.9
    # The brute-force answer really is the exact one.
    brute = np.argsort(-(queries @ base.T), axis=1)[:, :10] + 1
    assert recall_at_k(brute, truth) == 1.0


@pytest.mark.parametrize("approximate_above", [10**9, 50])
def test_index_changes_are_visible_at_once_and_survive_compaction(approximate_above: int) -> None:
    spec = IndexSpec(dimension=DIM, approximate_above=approximate_above, overlay_min=5, overlay_fraction=0.0)
    index = VectorIndex(spec)
    index.rebuild((i, unit(i)) for i in range(1, 201))
    target = unit(10_001)
    _, ids = index.search(target, 1)
    assert ids[0, 0] != 7
    index.upsert(7, target)  # a centroid moved onto the query
    _, ids = index.search(target, 1)
    assert ids[0, 0] == 7
    index.remove(7)
    _, ids = index.search(target, 3)
    assert 7 not in ids[0]
    for i in range(300, 310):  # past overlay_min: the main index is rebuilt
        index.upsert(i, near(target, i))
    sims, ids = index.search(target, 10)
    assert set(ids[0]) == set(range(300, 310))
    assert np.all(np.diff(sims[0]) <= 1e-6)
    assert len(index) == 209


def test_search_on_empty_index() -> None:
    index = VectorIndex(IndexSpec(dimension=DIM))
    sims, ids = index.search(unit(1), 3)
    assert ids.tolist() == [[-1, -1, -1]]
    assert not np.isfinite(sims).any()


# -- online clustering, counters, expiry, tenants, restart -------------------------------------


def test_online_clustering_joins_close_vectors_and_keeps_counters(db_url: str) -> None:
    clock = Clock()
    mem = memory(db_url, clock, join_similarity=0.9)
    v = unit(1)
    a = mem.observe(v)
    b = mem.observe(near(v, 2))
    c = mem.observe(unit(3))  # unrelated: a new centroid
    assert not a.joined and b.joined and not c.joined
    assert a.centroid_id == b.centroid_id != c.centroid_id
    state = mem.centroid(a.centroid_id)
    assert state is not None and state.members == 2 and state.hits == 2
    expected = normalise(v + near(v, 2))
    assert np.allclose(state.vector, expected, atol=1e-5)  # running mean, re-normalised
    assert abs(float(np.linalg.norm(state.vector)) - 1.0) < 1e-5
    mem.observe(near(v, 4), labels={Topic.CUSTOMER_DATA: 0.7, Topic.PII: 0.0})
    mem.observe(near(v, 5), labels={Topic.CUSTOMER_DATA: 0.9})
    assert mem.report([a.centroid_id], Topic.PII, "false_positive") == [a.centroid_id]
    mem.report([a.centroid_id], Topic.PII, "false_positive")
    mem.report([a.centroid_id], Topic.CUSTOMER_DATA, "true_positive")
    state = mem.centroid(a.centroid_id)
    assert state is not None
    assert state.members == 4 and state.label_n == 2
    assert state.labels[Topic.CUSTOMER_DATA] == pytest.approx(0.8)
    assert state.reports == {Topic.PII: (2, 0), Topic.CUSTOMER_DATA: (0, 1)}
    assert (state.fp_reports, state.tp_reports) == (2, 1)
    assert len(mem) == 2
    mem.store.close()


def test_expiry_removes_entries_older_than_the_retention_window(db_url: str) -> None:
    clock = Clock()
    mem = memory(db_url, clock, retention_days=60)
    old = mem.observe(unit(1)).centroid_id
    clock.now += 30 * DAY
    kept = mem.observe(unit(2)).centroid_id
    used = mem.observe(unit(3)).centroid_id
    clock.now += 20 * DAY
    mem.touch([used])  # serving a lookup counts as use
    clock.now += 20 * DAY  # old: 70 days unused, kept: 40, used: 20
    assert mem.expire() == [old]
    assert mem.centroid(old) is None and mem.centroid(kept) is not None
    assert old not in [n.centroid_id for n in mem.search(unit(1), 5)]
    clock.now += 21 * DAY  # kept: 61 days
    assert mem.expire() == [kept]
    assert [n.centroid_id for n in mem.search(unit(3), 5)] == [used]
    # A second process learns of the deletions through tombstones, not a full reload.
    other = memory(db_url, clock)
    assert len(other) == 1
    mem.store.close()
    other.store.close()


def test_rebuild_after_restart_gives_the_same_neighbours(db_url: str, tmp_path: Path) -> None:
    clock = Clock()
    mem = memory(db_url, clock, join_similarity=0.95, snapshot_dir=tmp_path / "snap")
    for i, v in enumerate(clustered_vectors(300, DIM, clusters=20)):
        mem.observe(v, labels={Topic.FINANCIAL: 0.7} if i % 3 == 0 else None)
    queries = noisy_queries(clustered_vectors(300, DIM, clusters=20), 20, seed=9)

    def answers(m: VectorMemory) -> list[list[tuple[int, float]]]:
        return [[(n.centroid_id, round(n.similarity, 3)) for n in m.search(q, 5)] for q in queries]

    before = answers(mem)
    labels_before = {cid: mem.centroid(cid) for cid in mem.index.ids()}
    mem.store.close()
    restarted = memory(db_url, clock, join_similarity=0.95)  # rebuilt from the database
    assert answers(restarted) == before
    assert {cid: restarted.centroid(cid) for cid in restarted.index.ids()}.keys() == labels_before.keys()
    for cid, state in labels_before.items():
        again = restarted.centroid(cid)
        assert state is not None and again is not None
        assert again.labels == state.labels and again.members == state.members
    snap = restarted.snapshot()
    assert snap is None  # no snapshot dir configured here
    mem2 = memory(db_url, clock, join_similarity=0.95, snapshot_dir=tmp_path / "snap")
    assert mem2.snapshot() is not None
    mem3 = memory(db_url, clock, join_similarity=0.95, snapshot_dir=tmp_path / "snap")  # from the snapshot
    assert answers(mem3) == before
    for m in (restarted, mem2, mem3):
        m.store.close()


def test_processes_sharing_a_database_stay_in_step(db_url: str) -> None:
    clock = Clock()
    a = memory(db_url, clock, join_similarity=0.9)
    b = memory(db_url, clock, join_similarity=0.9)
    v = unit(42)
    cid = a.observe(v).centroid_id
    found = b.search(v, 1)  # b never saw the write, but catches up before answering
    assert [n.centroid_id for n in found] == [cid]
    b.report([cid], Topic.PII, "false_positive")  # e.g. the feedback command
    assert a.search(v, 1)[0].state.reports == {Topic.PII: (1, 0)}
    joined = b.observe(near(v, 1))
    assert joined.centroid_id == cid
    state = a.search(v, 1)[0].state
    assert state.members == 2
    a.store.close()
    b.store.close()


def test_other_processes_changes_are_seen_within_the_sync_interval(db_url: str) -> None:
    clock = Clock()
    a = memory(db_url, clock, join_similarity=0.9, sync_interval_s=0.3)
    b = memory(db_url, clock, join_similarity=0.9)
    v = unit(7)
    assert a.search(v, 1) == []  # checked the database: empty
    cid = b.observe(v).centroid_id
    assert a.search(v, 1) == []  # within the interval: not checked again
    time.sleep(0.35)
    assert [n.centroid_id for n in a.search(v, 1)] == [cid]  # past it: caught up
    own = a.observe(unit(8)).centroid_id
    assert a.search(unit(8), 1)[0].centroid_id == own  # its own write counts at once
    a.store.close()
    b.store.close()


def test_each_tenant_has_its_own_memory(db_url: str) -> None:
    clock = Clock()
    acme = memory(db_url, clock, tenant="acme")
    globex = memory(db_url, clock, tenant="globex")
    v = unit(7)
    acme_id = acme.observe(v).centroid_id
    assert globex.search(v, 3) == []
    assert globex.report([acme_id], Topic.PII, "false_positive") == []  # not its centroid
    assert acme.centroid(acme_id) is not None
    state = acme.centroid(acme_id)
    assert state is not None and state.reports == {}
    globex_id = globex.observe(v).centroid_id
    assert [n.centroid_id for n in acme.search(v, 3)] == [acme_id]
    assert [n.centroid_id for n in globex.search(v, 3)] == [globex_id]
    acme.store.close()
    globex.store.close()


def test_migrations_use_their_own_version_table(tmp_path: Path) -> None:
    from logs.store import LogStore

    url = f"sqlite:///{tmp_path / 'shared.db'}"
    logs = LogStore(url)
    logs.migrate()
    store = VectorStore(url)
    store.migrate()
    tables = set(store.table_names())
    assert {"alembic_version", "vectors_alembic_version", "vector_centroid", "log_record"} <= tables
    assert logs.schema_revision() == "0004"
    logs.close()
    store.close()


# -- redaction and the wire format -------------------------------------------------------------


def test_redaction_replaces_spans_with_typed_placeholders() -> None:
    text = "mail bob@corp.io key AKIAIOSFODNN7EXAMPLE1 end"
    spans = [
        Finding("presidio", "pii.EMAIL_ADDRESS", Topic.PII, 0.7, Span(5, 16), "r"),
        Finding("secrets", "secret.aws-access-key", Topic.CREDENTIALS, 0.9, Span(21, 42), "r"),
        Finding("secrets", "secret.entropy", Topic.CREDENTIALS, 0.5, Span(25, 35), "r"),  # inside the other
        Finding("intent", "intent.PII", Topic.PII, 0.5, None, "r"),
    ]
    redacted, counts = redact(text, spans)
    assert redacted == "mail [EMAIL_ADDRESS] key [AWS_ACCESS_KEY] end"
    assert counts == {"EMAIL_ADDRESS": 1, "AWS_ACCESS_KEY": 1}
    assert placeholder("pii.US_SSN") == "US_SSN"


def test_inspection_carries_neighbours_and_memory_ids() -> None:
    inspection = Inspection(
        findings=(),
        topics={Topic.PII: 0.41},
        runs=(),
        neighbours=(NeighbourRef(12, 0.734, Topic.PII, -0.29, "false_positive"),),
        notes=("feedback_adjusted",),
        memory_tenant="acme",
        memory_centroids=(12,),
    )
    data = inspection.to_dict()
    assert data["neighbours"] == [
        {"id": 12, "similarity": 0.734, "topic": "PII", "delta": -0.29, "reason": "false_positive"}
    ]
    assert data["memory"] == {"tenant": "acme", "centroids": [12]}
    again = Inspection.from_dict(data)
    assert again.neighbours == inspection.neighbours
    assert (again.notes, again.memory_tenant, again.memory_centroids) == (("feedback_adjusted",), "acme", (12,))
    plain = Inspection.from_dict(Inspection(findings=(), topics={}, runs=()).to_dict())
    assert plain.memory_tenant is None and plain.neighbours == ()
