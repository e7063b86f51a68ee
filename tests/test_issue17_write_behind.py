"""The embedding memory's write-behind (issue 17): joins answer at once and commit within the
interval; new centroids commit before they return; nothing queued is lost on a clean close."""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest

from vectors.memory import MemorySpec, VectorMemory
from vectors.store import Assignment, MemoryUnavailable, VectorStore, normalise

DIM = 16


def unit(seed: int) -> np.ndarray:
    return normalise(np.random.default_rng(seed).standard_normal(DIM))


def near(v: np.ndarray, seed: int, eps: float = 0.03) -> np.ndarray:
    return normalise(v + eps * unit(seed))


def stored_members(url: str, centroid_id: int) -> int:
    """What the database holds now, through a store of its own (another process's view)."""
    other = VectorStore(url)
    try:
        states = other.get([centroid_id])
        return states[0].members if states else 0
    finally:
        other.close()


def join(mem: VectorMemory, vector: np.ndarray) -> Assignment:
    """Observe a vector as the inspector does: with its nearest centroid found first."""
    return mem.observe(vector, nearest=mem.search(vector, 1)[0])


def memory(url: str, write_behind_s: float) -> VectorMemory:
    return VectorMemory(
        VectorStore(url), MemorySpec("acme", "test-model", DIM, join_similarity=0.9, write_behind_s=write_behind_s)
    )


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'memory.db'}"


def test_a_join_answers_with_its_centroid_before_it_is_written(url: str) -> None:
    mem = memory(url, write_behind_s=30.0)  # far beyond the test: only flush() writes
    v = unit(1)
    first = mem.observe(v)  # a new centroid: written before it returns
    assert not first.joined and stored_members(url, first.centroid_id) == 1
    nearest = mem.search(near(v, 2), 1)[0]
    joined = mem.observe(near(v, 2), nearest=nearest)
    assert joined.joined and joined.centroid_id == first.centroid_id
    assert mem.pending == 1
    assert stored_members(url, first.centroid_id) == 1  # not yet in the database
    assert mem.flush() == 1
    assert mem.pending == 0 and stored_members(url, first.centroid_id) == 2
    state = mem.centroid(first.centroid_id)
    assert state is not None and state.members == 2  # the index and states caught up too
    mem.close()
    mem.store.close()


def test_the_flusher_commits_within_the_interval(url: str) -> None:
    mem = memory(url, write_behind_s=0.2)
    v = unit(3)
    cid = mem.observe(v).centroid_id
    for seed in range(10, 15):
        join(mem, near(v, seed))
    deadline = time.monotonic() + 3.0
    while stored_members(url, cid) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_members(url, cid) == 6
    assert mem.pending == 0
    mem.close()
    mem.store.close()


def test_a_new_centroid_takes_the_queued_joins_along(url: str) -> None:
    mem = memory(url, write_behind_s=30.0)
    v = unit(4)
    cid = mem.observe(v).centroid_id
    join(mem, near(v, 5))
    assert mem.pending == 1
    other = mem.observe(unit(6))  # unrelated: a new centroid, committed now with the queue
    assert not other.joined and other.centroid_id != cid
    assert mem.pending == 0 and stored_members(url, cid) == 2
    mem.close()
    mem.store.close()


def test_close_writes_the_queue_and_later_joins_commit_at_once(url: str) -> None:
    mem = memory(url, write_behind_s=30.0)
    v = unit(7)
    cid = mem.observe(v).centroid_id
    join(mem, near(v, 8))
    mem.touch([cid])
    mem.close()
    assert stored_members(url, cid) == 2
    join(mem, near(v, 9))
    assert mem.pending == 0 and stored_members(url, cid) == 3
    mem.store.close()


def test_a_refused_flush_keeps_the_queue_for_the_next_one(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    mem = memory(url, write_behind_s=30.0)
    v = unit(10)
    cid = mem.observe(v).centroid_id
    join(mem, near(v, 11))
    real = mem.store.assign_many

    def down(*_a: object, **_k: object) -> object:
        raise MemoryUnavailable("memory database error (test)")

    monkeypatch.setattr(mem.store, "assign_many", down)
    with pytest.raises(MemoryUnavailable):
        mem.flush()
    assert mem.pending == 1 and stored_members(url, cid) == 1
    monkeypatch.setattr(mem.store, "assign_many", real)
    assert mem.flush() == 1 and stored_members(url, cid) == 2
    mem.close()
    mem.store.close()


def test_without_write_behind_every_join_commits_before_it_returns(url: str) -> None:
    mem = memory(url, write_behind_s=0.0)
    v = unit(12)
    cid = mem.observe(v).centroid_id
    join(mem, near(v, 13))
    assert mem.pending == 0 and stored_members(url, cid) == 2
    mem.store.close()


def test_the_queue_keeps_at_most_max_behind_joins(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import vectors.memory as memory_module

    monkeypatch.setattr(memory_module, "MAX_BEHIND", 3)
    mem = memory(url, write_behind_s=30.0)
    v = unit(14)
    mem.observe(v)
    nearest = mem.search(near(v, 15), 1)[0]
    for seed in range(20, 25):
        mem.observe(near(v, seed), nearest=nearest)
    assert mem.pending == 3 and mem.dropped == 2  # the oldest two went first
    mem.close()
    mem.store.close()


def test_a_refused_flush_keeps_the_last_use_times_for_the_next_one(
    url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = memory(url, write_behind_s=30.0)
    cid = mem.observe(unit(16)).centroid_id
    mem.touch([cid])
    real = mem.store.touch
    seen: list[set[int]] = []

    def down(_ids: Iterable[int]) -> None:
        raise MemoryUnavailable("memory database error (test)")

    def recording(ids: Iterable[int]) -> None:
        ids = set(ids)
        seen.append(ids)
        real(ids)

    monkeypatch.setattr(mem.store, "touch", down)
    with pytest.raises(MemoryUnavailable):
        mem.flush()
    monkeypatch.setattr(mem.store, "touch", recording)
    mem.flush()
    assert seen == [{cid}]
    mem.close()
    mem.store.close()
