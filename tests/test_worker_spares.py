"""A killed worker is replaced by a spare that is already running (issue 13: a prompt that gets
its worker killed must not leave the pool one short while a new one builds its detectors)."""

from __future__ import annotations

import time

import pytest

from classifiers.code_detector import CodeDetector
from classifiers.workers import WorkerPool


def _wait(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_a_killed_worker_is_replaced_by_the_ready_spare() -> None:
    pool = WorkerPool({"code": CodeDetector}, processes=1, spares=1)
    try:
        started = set(pool.pids())
        assert len(started) == 2  # the worker and its spare
        dead = pool._idle.get()
        pool._replace(dead)
        # The spare (already running, so one of the first two) takes the dead worker's place...
        serving = pool._idle.get(timeout=30)
        assert serving.process.pid in started - {dead.process.pid}
        pool._idle.put(serving)
        future, _ticket = pool.submit("code", "def f(x):\n    return x\n")
        assert future.result(timeout=30) is not None
        # ...and a new spare is built behind it.
        _wait(lambda: pool._spare.qsize() == 1)
        now = set(pool.pids())
        assert len(now) == 2 and dead.process.pid not in now
        assert pool.restarts == 1
    finally:
        pool.close()


def test_without_spares_the_replacement_is_a_new_worker() -> None:
    pool = WorkerPool({"code": CodeDetector}, processes=1)
    try:
        started = set(pool.pids())
        dead = pool._idle.get()
        pool._replace(dead)
        serving = pool._idle.get(timeout=60)
        assert serving.process.pid not in started
        pool._idle.put(serving)
    finally:
        pool.close()


def test_negative_spares_are_refused() -> None:
    with pytest.raises(ValueError, match="spares"):
        WorkerPool({"code": CodeDetector}, processes=1, spares=-1)
