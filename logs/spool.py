"""The spool: where sealed records wait, on local disk, while the log database is down.

One JSON line per :class:`~logs.store.SealedRecord` (clear metadata plus sealed blobs, never
plaintext; a decision-time "pending" version or a completion, replayed through the store's
upsert so the completion wins in any order), appended with ``O_APPEND`` and fsynced before :meth:`Spool.append` returns, so a
record the proxy has acknowledged survives ``kill -9`` and power loss. :meth:`Spool.drain` hands
the records to the store in order and only then empties the file; the store's inserts are
idempotent on ``record_id``, so a crash between the two replays a record at most twice and
stores it once.

An ``flock`` on a side file serialises appends and drains between processes (the proxy, and
``promptfence logs replay`` run by hand).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from logs.store import SealedRecord
from promptfence.config import ensure_private_dir

log = logging.getLogger("promptfence.logs.spool")

REPLAY_BATCH = 200


class Spool:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock_path = path.with_name(path.name + ".lock")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        ensure_private_dir(self.path.parent)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def pending(self) -> bool:
        try:
            return self.path.stat().st_size > 0
        except FileNotFoundError:
            return False

    def append(self, record: SealedRecord) -> None:
        """Append one record durably (written and fsynced before returning).

        Raises :class:`OSError` (ENOSPC, EROFS, EACCES, EIO, ...) when it cannot; the spool is
        then exactly as it was: a short or unsynced write is cut back to the previous size, so a
        full disk never leaves a torn line in front of the next record.
        """
        line = (record.to_json() + "\n").encode("utf-8")
        with self._locked():
            new = not self.path.exists()
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                size = os.fstat(fd).st_size  # appends are serialised by the lock
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    # A torn line a failed cut-back left behind: keep it its own (bad) line.
                    line = b"\n" + line
                try:
                    view = memoryview(line)
                    while view:
                        view = view[os.write(fd, view) :]
                    os.fsync(fd)
                except OSError:
                    _truncate_back(fd, size, self.path)
                    raise
            finally:
                os.close(fd)
            if new:
                _fsync_dir(self.path.parent)

    def read(self) -> list[SealedRecord]:
        """Every complete record in the spool, in append order; a torn last line is skipped."""
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return []
        records: list[SealedRecord] = []
        lines = data.split(b"\n")
        torn = lines.pop()  # after the last newline: empty, or a write cut short by a crash
        if torn:
            log.warning("spool %s: ignoring an incomplete last line (%d bytes)", self.path, len(torn))
        for number, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            try:
                records.append(SealedRecord.from_json(raw.decode("utf-8")))
            except (ValueError, KeyError, TypeError, AttributeError):
                # Never print the line: it is sealed, but junk should not reach logs either.
                log.error("spool %s: line %d is not a spooled record; kept in %s", self.path, number, self._bad_path)
                self._keep_bad(raw)
        return records

    @property
    def _bad_path(self) -> Path:
        return self.path.with_name(self.path.name + ".bad")

    def _keep_bad(self, raw: bytes) -> None:
        fd = os.open(self._bad_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, raw + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)

    def drain(self, store_batch: Callable[[Sequence[SealedRecord]], int]) -> tuple[int, int]:
        """Replay every spooled record in order through ``store_batch``, then empty the spool.

        ``store_batch`` stores a batch idempotently and returns how many were new; if it raises,
        the spool is left exactly as it was (what was stored is skipped on the next replay).
        Returns (records replayed, records that were new to the store).
        """
        with self._locked():
            records = self.read()
            added = 0
            for start in range(0, len(records), REPLAY_BATCH):
                added += store_batch(records[start : start + REPLAY_BATCH])
            if self.path.exists():
                # Truncate in place (not unlink): the file, its mode and its directory entry stay.
                with self.path.open("r+b") as fh:
                    fh.truncate(0)
                    fh.flush()
                    os.fsync(fh.fileno())
        if records:
            log.info("spool %s: replayed %d record(s), %d new", self.path, len(records), added)
        return len(records), added


def _truncate_back(fd: int, size: int, path: Path) -> None:
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    except OSError as exc:  # the line stays torn; read() skips a torn last line, and says so
        log.error("spool %s: could not cut a failed append back to %d bytes (errno %s)", path, size, exc.errno)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def spool_size(path: Path) -> int:
    """How many complete lines a spool holds (for status lines and tests)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0
