"""Group commit for synchronous callers on several threads: one transaction for whatever queued.

The inspector observes one vector per inspected prompt from several threads at once; a commit
per observation was most of the embedding memory's CPU per prompt (issue 17: SQLite's commit,
SQLAlchemy's per-transaction work and the index sync that follows). Here the caller that finds
no commit running leads: it takes everything queued (at most ``max_batch``), runs ``commit`` on
it and hands each caller its own result. Items that arrive meanwhile form the next batch. A
caller never waits for a batch to fill: alone, it commits at once, as before.

``commit`` returns one result per item, in order. When it raises, every caller of that batch
gets the exception (they share one transaction, so none of them was written).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Pending(Generic[T, R]):
    item: T
    result: R | None = None
    error: BaseException | None = None
    done: bool = False


class GroupCommitter(Generic[T, R]):
    def __init__(self, commit: Callable[[Sequence[T]], Sequence[R]], *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._commit = commit
        self.max_batch = max_batch
        self._cond = threading.Condition()
        self._queue: deque[_Pending[T, R]] = deque()
        self._busy = False
        self.batches: deque[int] = deque(maxlen=1024)  # recent batch sizes, for tests and bench

    def submit(self, item: T) -> R:
        pending: _Pending[T, R] = _Pending(item)
        with self._cond:
            self._queue.append(pending)
            while not pending.done:
                if not self._busy:
                    self._lead()
                else:
                    self._cond.wait()
        if pending.error is not None:
            raise pending.error
        return pending.result  # type: ignore[return-value]

    def _lead(self) -> None:
        """Commit one batch (called holding the lock; released around the commit)."""
        self._busy = True
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        self.batches.append(len(batch))
        self._cond.release()
        try:
            try:
                results = list(self._commit([p.item for p in batch]))
                if len(results) != len(batch):
                    raise RuntimeError(f"commit returned {len(results)} results for {len(batch)} items")
            except BaseException as exc:
                for p in batch:
                    p.error = exc
            else:
                for p, r in zip(batch, results, strict=True):
                    p.result = r
        finally:
            self._cond.acquire()
            for p in batch:
                p.done = True
            self._busy = False
            self._cond.notify_all()
