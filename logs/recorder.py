"""The proxy's ``RecordPort``: seal, then store, or spool while the database is down.

A record is written twice: at decision time (``record()``, before the prompt is forwarded;
``answer_status`` "pending", or "none" when nothing is forwarded) and when the answer ends
(``complete()``, the same ``record_id`` with the answer sealed in). The store's upsert lets the
completion replace the pending version whatever order the two arrive in, so a proxy killed
mid-answer leaves a pending record, never no record.

Everything that touches the database or the disk runs on one writer thread, so the proxy's event
loop never waits on I/O, and records reach the store in the order they were recorded:

- while the spool holds anything, a new record goes behind it (order is kept);
- a failed write marks the database down for ``retry_interval_s``: records go straight to the
  spool (a fsynced append, about a millisecond) instead of each waiting on a dead connection;
- every database call is bounded by ``db_timeout_s`` (a fourth thread makes the call; the writer
  stops waiting at the deadline and the stuck socket is broken), so a database that stops
  answering is a database that is down: the record is spooled within the bound, and its
  metadata says so (``spooled: {reason, at}``);
- every ``retry_interval_s`` the thread replays the spool, oldest first, idempotently.

``record()`` returns once the record is durable (in the database or fsynced in the spool). When
it can be neither (database down and the spool's disk full or read-only), ``on_unrecordable``
decides: ``block`` raises :class:`~promptfence.errors.RecordNotDurable` (the proxy then does not
forward the prompt), ``allow`` lets it through unrecorded. Either way the log says so loudly (the
errno, never content) and :attr:`SpoolingWriter.degraded` / :meth:`SpoolingWriter.health` (and
the optional health file) report it until a record is durable again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import errno
import json
import logging
import os
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

from logs.spool import Spool
from logs.store import LogStore, SealedRecord, StoreUnavailable
from promptfence.core import LogRecord
from promptfence.errors import RecordNotDurable

log = logging.getLogger("promptfence.logs")

RETENTION_CHECK_S = 6 * 3600.0
ON_UNRECORDABLE = ("block", "allow")
DEFAULT_DB_TIMEOUT_S = 1.5
# At most this many queued records share one transaction (bounds one commit's time and size).
MAX_GROUP_COMMIT = 64
# How long a slow call (a migration on a large database, retention) may run before its socket is
# broken; the writer itself stops waiting for it after db_timeout_s either way.
SLOW_CALL_HARD_TIMEOUT_S = 120.0

T = TypeVar("T")


class Outcome(StrEnum):
    STORED = "stored"
    SPOOLED = "spooled"
    # Neither stored nor spooled, and let through (logs.on_unrecordable: allow).
    LOST = "lost"


def errno_text(exc: BaseException) -> str:
    """``ENOSPC (No space left on device)``: what a log line may say about an OSError."""
    if isinstance(exc, OSError) and exc.errno is not None:
        name = errno.errorcode.get(exc.errno, f"errno {exc.errno}")
        return f"{name} ({os.strerror(exc.errno)})"
    return type(exc).__name__


class BoundedCalls:
    """Makes blocking calls on one daemon thread and waits for each at most ``timeout_s``.

    Past the deadline the caller gets :class:`StoreUnavailable` and ``interrupt`` is called (at
    once, or after ``hard_timeout_s`` for a call allowed to run long) so the stuck call fails and
    frees the thread. While an abandoned call still runs, new calls fail at once rather than
    queue behind it. ``timeout_s`` <= 0: calls run on the caller's thread, unbounded.
    """

    def __init__(self, timeout_s: float, interrupt: Callable[[], object]) -> None:
        self.timeout_s = timeout_s
        self._interrupt = interrupt
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], concurrent.futures.Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._busy: concurrent.futures.Future[Any] | None = None
        self._thread: threading.Thread | None = None

    def __call__(self, fn: Callable[[], T], *, hard_timeout_s: float | None = None) -> T:
        if self.timeout_s <= 0:
            return fn()
        if self._busy is not None and not self._busy.done():
            raise StoreUnavailable("the previous log database call has not returned yet")
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name="log-db", daemon=True)
            self._thread.start()
        future: concurrent.futures.Future[T] = concurrent.futures.Future()
        self._busy = future
        self._jobs.put((fn, future))
        try:
            return future.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            hard = max(hard_timeout_s or self.timeout_s, self.timeout_s)
            if hard <= self.timeout_s:
                self._interrupt()
            else:
                timer = threading.Timer(hard - self.timeout_s, self._interrupt_if_running, (future,))
                timer.daemon = True
                timer.start()
            raise StoreUnavailable(f"log database did not answer within {self.timeout_s:g}s") from None

    def _interrupt_if_running(self, future: concurrent.futures.Future[Any]) -> None:
        if not future.done():
            self._interrupt()

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            fn, future = job
            if future.set_running_or_notify_cancel():
                try:
                    future.set_result(fn())
                except BaseException as exc:
                    future.set_exception(exc)

    def close(self) -> None:
        if self._thread is not None:
            self._jobs.put(None)
            if self._busy is None or self._busy.done():
                self._thread.join(timeout=5)


class SpoolingWriter:
    """Synchronous core of the recorder (one thread at a time): seal, then insert or spool."""

    def __init__(
        self,
        store: LogStore,
        spool: Spool,
        *,
        retry_interval_s: float = 5.0,
        on_unrecordable: str = "block",
        db_timeout_s: float = DEFAULT_DB_TIMEOUT_S,
        health_path: Path | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if on_unrecordable not in ON_UNRECORDABLE:
            raise ValueError(f"logs.on_unrecordable must be block or allow, not {on_unrecordable!r}")
        self.store = store
        self.spool = spool
        self.retry_interval_s = retry_interval_s
        self.on_unrecordable = on_unrecordable
        self.health_path = health_path
        self._clock = clock
        self._down_until = 0.0
        self._down_reason: str | None = None
        self._spool_error: str | None = None
        self._db = BoundedCalls(db_timeout_s, store.interrupt)
        self.counts: Counter[str] = Counter()
        self._last_health: dict[str, Any] | None = None

    # -- health -----------------------------------------------------------------------------
    @property
    def database_down(self) -> bool:
        return self._clock() < self._down_until

    @property
    def degraded(self) -> bool:
        """The log is not working as it should: the database is down or the spool cannot be written."""
        return self.database_down or self._spool_error is not None

    def health(self) -> dict[str, Any]:
        """What a health endpoint or metrics exporter may show (no content, no record ids)."""
        return {
            "degraded": self.degraded,
            "database": "down" if self.database_down else "up",
            "database_error": self._down_reason if self.database_down else None,
            "spool": "failing" if self._spool_error else "ok",
            "spool_error": self._spool_error,
            "spool_pending": self.spool.pending(),
            "on_unrecordable": self.on_unrecordable,
            "records": dict(sorted(self.counts.items())),
        }

    def _publish_health(self) -> None:
        """Write the health file (atomically, 0600) when the state changed; never raises."""
        if self.health_path is None:
            return
        state = self.health()
        comparable = {k: v for k, v in state.items() if k != "records"}
        if comparable == self._last_health:
            return
        self._last_health = comparable
        tmp = self.health_path.with_name(f".{self.health_path.name}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, json.dumps({**state, "at": time.time()}, sort_keys=True).encode() + b"\n")
            finally:
                os.close(fd)
            os.replace(tmp, self.health_path)
        except OSError as exc:
            self._last_health = None  # try again at the next change
            log.debug("health file %s not written: %s", self.health_path, errno_text(exc))

    # -- writing ----------------------------------------------------------------------------
    def write(self, record: LogRecord) -> Outcome:
        return self.write_sealed(self.store.seal(record))

    def write_sealed(self, sealed: SealedRecord) -> Outcome:
        try:
            return self._write_sealed(sealed)
        finally:
            self._publish_health()

    def write_many(self, records: Sequence[LogRecord]) -> list[Outcome | BaseException]:
        """Group commit: the records queued together go to the database in one transaction.

        One commit (one fsync on SQLite) per batch instead of one per record is what lets the
        proxy keep up under concurrency; durability is unchanged, because no caller is answered
        before the transaction holding its record has committed. When the batch cannot be
        stored, each record takes the single-record path (spool, or the unrecordable rule) and
        gets its own outcome; a record that fails (sealing, or ``block`` with nowhere to write)
        gets its exception, and the others are unaffected.
        """
        results: list[Outcome | BaseException | None] = [None] * len(records)
        sealed: list[tuple[int, SealedRecord]] = []
        for i, record in enumerate(records):
            try:
                sealed.append((i, self.store.seal(record)))
            except Exception as exc:
                results[i] = exc
        try:
            if len(sealed) > 1 and not self.database_down and (not self.spool.pending() or self.flush()):
                batch = [s for _, s in sealed]
                try:
                    self._db(lambda: self.store.insert_many(batch))
                except Exception as exc:  # the batch is not stored: each record is spooled below
                    self._mark_down(exc)
                else:
                    self.counts[Outcome.STORED.value] += len(batch)
                    for i, _ in sealed:
                        results[i] = Outcome.STORED
                    sealed = []
            for i, one in sealed:
                try:
                    results[i] = self._write_sealed(one)
                except Exception as exc:
                    results[i] = exc
        finally:
            self._publish_health()
        return [r if r is not None else RuntimeError("record not written") for r in results]

    def _write_sealed(self, sealed: SealedRecord) -> Outcome:
        tried_db = False
        if not self.database_down and (not self.spool.pending() or self.flush()):
            tried_db = True
            try:
                self._db(lambda: self.store.insert(sealed))
                self.counts[Outcome.STORED.value] += 1
                return Outcome.STORED
            except Exception as exc:  # any failure to store becomes a spooled record, never a lost one
                self._mark_down(exc)
        reason = self._down_reason or "behind spooled records"
        try:
            self.spool.append(_marked_spooled(sealed, reason))
        except OSError as exc:
            spool_error = errno_text(exc)
        else:
            if self._spool_error is not None:
                log.warning("log spool %s writable again; records are durable again", self.spool.path)
                self._spool_error = None
            self.counts[Outcome.SPOOLED.value] += 1
            return Outcome.SPOOLED
        if not self._spool_error:
            log.error("LOG DEGRADED: spool %s cannot be written: %s", self.spool.path, spool_error)
        self._spool_error = spool_error
        if not tried_db:  # last resort: the database may be back before its retry time
            try:
                self._db(lambda: self.store.insert(sealed))
                self._down_until = 0.0
                self.counts[Outcome.STORED.value] += 1
                return Outcome.STORED
            except Exception as exc:
                self._mark_down(exc)
        return self._unrecordable(sealed, spool_error)

    def _unrecordable(self, sealed: SealedRecord, spool_error: str) -> Outcome:
        self.counts["unrecordable"] += 1
        what = (
            "the prompt is not forwarded (logs.on_unrecordable: block)"
            if self.on_unrecordable == "block"
            else "forwarded unrecorded (logs.on_unrecordable: allow)"
        )
        message = (
            f"log record {sealed.record_id} could not be made durable: database unavailable "
            f"({self._down_reason}) and spool {self.spool.path} not writable ({spool_error})"
        )
        log.error("LOG DEGRADED: %s; %s", message, what)
        if self.on_unrecordable == "block":
            raise RecordNotDurable(message)
        self.counts[Outcome.LOST.value] += 1
        return Outcome.LOST

    def flush(self) -> bool:
        """Replay the spool into the store; True when it is empty afterwards."""
        if not self.spool.pending():
            return True
        try:
            self.spool.drain(self._insert_batch)
        except Exception as exc:
            self._mark_down(exc)
            self._publish_health()
            return False
        self._down_until = 0.0
        self._publish_health()
        return True

    def _insert_batch(self, batch: Sequence[SealedRecord]) -> int:
        return self._db(lambda: self.store.insert_many(batch))

    def _mark_down(self, exc: Exception) -> None:
        reason = str(exc) if isinstance(exc, StoreUnavailable) else type(exc).__name__
        if not self.database_down:
            log.warning(
                "log database unavailable (%s); spooling records to %s, retrying every %gs",
                reason,
                self.spool.path,
                self.retry_interval_s,
            )
        self._down_reason = reason
        self._down_until = self._clock() + self.retry_interval_s

    def startup(self, retention_days: float | None) -> None:
        """Migrate, enforce retention and replay what a previous run spooled; never raises."""
        try:
            self._db(self.store.migrate, hard_timeout_s=SLOW_CALL_HARD_TIMEOUT_S)
            self._db(lambda: self.store.enforce_retention(retention_days), hard_timeout_s=SLOW_CALL_HARD_TIMEOUT_S)
        except Exception as exc:
            self._mark_down(exc)
            self._publish_health()
            return
        self.flush()
        self._publish_health()

    def enforce_retention(self, retention_days: float | None) -> None:
        try:
            self._db(lambda: self.store.enforce_retention(retention_days), hard_timeout_s=SLOW_CALL_HARD_TIMEOUT_S)
        except Exception as exc:
            log.warning("retention not enforced this time: %s", str(exc) or type(exc).__name__)

    def close(self) -> None:
        self._db.close()
        self.store.close()


def _marked_spooled(sealed: SealedRecord, reason: str) -> SealedRecord:
    """The record with clear metadata saying it went through the spool, and why."""
    return dataclasses.replace(
        sealed, metadata={**sealed.metadata, "spooled": {"reason": reason, "at": round(time.time(), 3)}}
    )


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

    @property
    def degraded(self) -> bool:
        return self.writer.degraded

    def health(self) -> dict[str, Any]:
        return self.writer.health()

    async def _submit(self, record: LogRecord) -> Outcome:
        if self._closed:
            raise RuntimeError("recorder is closed")
        future: concurrent.futures.Future[Outcome] = concurrent.futures.Future()
        self._queue.put((record, future))
        return await asyncio.wrap_future(future)

    async def record(self, record: LogRecord) -> None:
        """Write a record at decision time; returns once it is durable (see the module docstring).

        Raises :class:`RecordNotDurable` when it cannot be made durable under ``block``.
        """
        outcome = await self._submit(record)
        self._log(record, outcome)

    async def complete(self, record: LogRecord) -> None:
        """Write the completed version of a recorded record; never raises (the prompt already went out)."""
        try:
            outcome = await self._submit(record)
        except RecordNotDurable:
            return  # the writer logged it loudly; the pending version is what the log keeps
        except Exception as exc:
            log.error("LOG DEGRADED: completion of record %s not written: %s", record.record_id, type(exc).__name__)
            return
        self._log(record, outcome)

    @staticmethod
    def _log(record: LogRecord, outcome: Outcome) -> None:
        level = logging.WARNING if outcome is Outcome.LOST else logging.INFO
        log.log(
            level,
            "record %s %s %s (%s, %s)",
            record.record_id,
            record.answer_status,
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
            # Whatever queued up while the last commit ran goes into the next one (group
            # commit): no waiting for a batch to fill, so an idle proxy pays nothing extra.
            batch: list[_Item] = []
            stop = item is None
            while item is not None:
                batch.append(item)
                if len(batch) >= MAX_GROUP_COMMIT:
                    break
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                stop = item is None
            self._write_batch(batch)
            if stop:
                break
            self._housekeeping()

    def _write_batch(self, batch: list[_Item]) -> None:
        live = [(record, future) for record, future in batch if future.set_running_or_notify_cancel()]
        if not live:
            return
        try:
            results = self.writer.write_many([record for record, _ in live])
        except BaseException as exc:  # never strand a waiting prompt
            results = [exc] * len(live)
        for (_, future), result in zip(live, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)

    def _housekeeping(self) -> None:
        """Replay the spool once the database is back; apply retention every few hours."""
        if not self.writer.database_down and self.writer.spool.pending():
            self.writer.flush()
        if time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + RETENTION_CHECK_S
            self.writer.enforce_retention(self.retention_days)

    def close(self) -> None:
        """Finish queued records (stored or spooled), then stop the thread and the engine."""
        if not self._closed:
            self._closed = True
            self._queue.put(None)
            self._thread.join()
            self.writer.close()
