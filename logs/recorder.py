"""The proxy's ``RecordPort``: seal, then store, or spool while the database is down.

Everything that touches the database or the disk runs on one writer thread, so the proxy's event
loop never waits on I/O, and records reach the store in the order they were recorded:

- while the spool holds anything, a new record goes behind it (order is kept);
- a failed write marks the database down for ``retry_interval_s``: records go straight to the
  spool (a fsynced append, about a millisecond) instead of each waiting on a dead connection;
- every ``retry_interval_s`` the thread replays the spool, oldest first, idempotently.

``record()`` returns once the record is durable (in the database or fsynced in the spool), so a
``kill -9`` after a flow completed never loses its record.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from enum import StrEnum

from logs.spool import Spool
from logs.store import LogStore, SealedRecord, StoreUnavailable, seal_record
from promptfence.core import LogRecord

log = logging.getLogger("promptfence.logs")

RETENTION_CHECK_S = 6 * 3600.0


class Outcome(StrEnum):
    STORED = "stored"
    SPOOLED = "spooled"


class SpoolingWriter:
    """Synchronous core of the recorder (one thread at a time): seal, then insert or spool."""

    def __init__(
        self,
        store: LogStore,
        spool: Spool,
        *,
        retry_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.spool = spool
        self.retry_interval_s = retry_interval_s
        self._clock = clock
        self._down_until = 0.0

    @property
    def database_down(self) -> bool:
        return self._clock() < self._down_until

    def write(self, record: LogRecord) -> Outcome:
        return self.write_sealed(seal_record(record, self.store.recipients))

    def write_sealed(self, sealed: SealedRecord) -> Outcome:
        if self.database_down or (self.spool.pending() and not self.flush()):
            self.spool.append(sealed)
            return Outcome.SPOOLED
        try:
            self.store.insert(sealed)
            return Outcome.STORED
        except Exception as exc:  # any failure to store becomes a spooled record, never a lost one
            self._mark_down(exc)
            self.spool.append(sealed)
            return Outcome.SPOOLED

    def flush(self) -> bool:
        """Replay the spool into the store; True when it is empty afterwards."""
        if not self.spool.pending():
            return True
        try:
            self.spool.drain(self.store.insert_many)
        except Exception as exc:
            self._mark_down(exc)
            return False
        self._down_until = 0.0
        return True

    def _mark_down(self, exc: Exception) -> None:
        if not self.database_down:
            reason = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
            log.warning(
                "log database unavailable (%s); spooling records to %s, retrying every %gs",
                reason,
                self.spool.path,
                self.retry_interval_s,
            )
        self._down_until = self._clock() + self.retry_interval_s

    def startup(self, retention_days: float | None) -> None:
        """Migrate, enforce retention and replay what a previous run spooled; never raises."""
        try:
            self.store.migrate()
            self.store.enforce_retention(retention_days)
        except Exception as exc:
            self._mark_down(exc)
            return
        self.flush()


_Item = tuple[LogRecord, "concurrent.futures.Future[Outcome]"]


class AsyncRecorder:
    """Runs a :class:`SpoolingWriter` on its own thread; ``await record(r)`` never blocks the loop."""

    def __init__(self, writer: SpoolingWriter, *, retention_days: float | None = None) -> None:
        self.writer = writer
        self.retention_days = retention_days
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._closed = False
        self._next_retention = 0.0
        self._thread.start()

    @property
    def store(self) -> LogStore:
        return self.writer.store

    async def record(self, record: LogRecord) -> None:
        if self._closed:
            raise RuntimeError("recorder is closed")
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._queue.put((record, future))
        outcome = await asyncio.wrap_future(future)
        log.info(
            "record %s %s (%s, %s)",
            record.record_id,
            outcome.value,
            record.operation.operation_id,
            record.decision.action.value,
        )

    def _run(self) -> None:
        self.writer.startup(self.retention_days)
        self._next_retention = time.monotonic() + RETENTION_CHECK_S
        while True:
            try:
                item = self._queue.get(timeout=max(self.writer.retry_interval_s, 0.05))
            except queue.Empty:
                self._housekeeping()
                continue
            if item is None:
                break
            record, future = item
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(self.writer.write(record))
                except BaseException as exc:
                    future.set_exception(exc)
            self._housekeeping()

    def _housekeeping(self) -> None:
        """Replay the spool once the database is back; apply retention every few hours."""
        if not self.writer.database_down and self.writer.spool.pending():
            self.writer.flush()
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_CHECK_S
            try:
                self.writer.store.enforce_retention(self.retention_days)
            except Exception as exc:
                log.warning("retention not enforced this time: %s", type(exc).__name__)

    def close(self) -> None:
        """Finish queued records (stored or spooled), then stop the thread and the engine."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self.writer.store.close()
