"""Concurrent observations share one memory transaction and each caller gets its own answer."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.test_vectors import Clock, memory, near, unit
from vectors.group_commit import GroupCommitter
from vectors.memory import VectorMemory
from vectors.store import Assignment, Observation


def _held_memory(tmp_path: Path) -> tuple[VectorMemory, threading.Event, threading.Event, list[int]]:
    """A memory whose first commit waits for ``release`` (so the others queue behind it)."""
    mem = memory(f"sqlite:///{tmp_path / 'v.db'}", Clock(), join_similarity=0.9)
    release, entered = threading.Event(), threading.Event()
    sizes: list[int] = []
    real = mem.store.assign_many

    def assign_many(
        namespace_id: int, observations: Sequence[Observation], *, join_similarity: float
    ) -> list[Assignment]:
        sizes.append(len(observations))
        entered.set()
        release.wait(10)
        return real(namespace_id, observations, join_similarity=join_similarity)

    mem.store.assign_many = assign_many  # type: ignore[method-assign]
    return mem, release, entered, sizes


def test_observations_queued_during_a_commit_share_the_next_one(tmp_path: Path) -> None:
    mem, release, entered, sizes = _held_memory(tmp_path)
    first = threading.Thread(target=mem.observe, args=(unit(100),))
    first.start()
    assert entered.wait(10)
    vectors = [unit(200 + i) for i in range(7)]  # unrelated to each other: seven new centroids
    threads_done: list[Assignment | None] = [None] * 7

    def run(i: int) -> None:
        threads_done[i] = mem.observe(vectors[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    for _ in range(200):  # wait until all seven searched and queued
        if len(mem._observations._queue) == 7:
            break
        threading.Event().wait(0.01)
    release.set()
    first.join(10)
    for t in threads:
        t.join(10)
    assert sizes == [1, 7]
    ids = [a.centroid_id for a in threads_done if a is not None]
    assert len(ids) == 7 and len(set(ids)) == 7
    assert len(mem) == 8  # synced once after the batch: every centroid is searchable
    for v, cid in zip(vectors, ids, strict=True):
        assert mem.search(v, 1)[0].centroid_id == cid
    mem.store.close()


def test_a_vector_joins_a_centroid_started_earlier_in_the_same_batch(tmp_path: Path) -> None:
    mem = memory(f"sqlite:///{tmp_path / 'v.db'}", Clock(), join_similarity=0.9)
    v = unit(1)
    a, b, c = mem.store.assign_many(
        mem.namespace_id,
        [Observation(v), Observation(near(v, 2)), Observation(unit(3))],
        join_similarity=0.9,
    )
    assert not a.joined and b.joined and not c.joined
    assert a.centroid_id == b.centroid_id != c.centroid_id
    mem.sync()
    state = mem.centroid(a.centroid_id)
    assert state is not None and state.members == 2
    mem.store.close()


def test_a_failed_batch_fails_each_of_its_callers_and_the_next_one_works() -> None:
    calls: list[list[int]] = []

    def commit(items: Sequence[int]) -> list[int]:
        calls.append(list(items))
        if len(calls) == 1:
            raise RuntimeError("database went away")
        return [i * 10 for i in items]

    committer: GroupCommitter[int, int] = GroupCommitter(commit)
    with pytest.raises(RuntimeError):
        committer.submit(1)
    assert committer.submit(2) == 20
    assert calls == [[1], [2]]


def test_a_commit_returning_the_wrong_number_of_results_is_an_error() -> None:
    committer: GroupCommitter[int, int] = GroupCommitter(lambda items: [])
    with pytest.raises(RuntimeError, match="0 results for 1 items"):
        committer.submit(1)
