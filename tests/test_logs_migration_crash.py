"""``kill -9`` during the very first migration never wedges a database (issue 12, item 1).

A forked child migrates a fresh database and is SIGKILLed at a random point: half the runs stop
it right after its k-th SQL statement (k drawn over every statement the migration issues, so
every gap between two statements is a kill point), the other half at a random moment of the
migration's measured duration. After each kill the database is opened as the proxy opens it
(migrate, then records through the spooling writer): the schema must reach head and every
record must land in the database, none in the spool.
"""

from __future__ import annotations

import os
import random
import select
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, inspect

from logs.recorder import Outcome, SpoolingWriter
from logs.sealing import KeyPair, write_key_pair
from logs.spool import Spool
from logs.store import LogStore, Recipient
from tests.support.logdb import make_record

RUNS = 20
HEAD = "0004"


def _child(url: str, fd: int, pause_after: int | None) -> None:
    """In the forked child: migrate; report each statement; freeze after statement ``pause_after``."""
    store = LogStore(url)
    count = 0

    def after(*_args: Any) -> None:
        nonlocal count
        count += 1
        if pause_after is not None and count == pause_after:
            os.write(fd, b"p")
            time.sleep(60)  # the parent kills us here

    event.listen(store.engine, "after_cursor_execute", after)
    store.migrate()
    os.write(fd, b"d")


def _fork_migration(url: str, pause_after: int | None) -> tuple[int, int]:
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.close(read_fd)
        try:
            _child(url, write_fd, pause_after)
        finally:
            os._exit(0)
    os.close(write_fd)
    return pid, read_fd


def _statements_and_duration(tmp_path: Path) -> tuple[int, float]:
    url = f"sqlite:///{tmp_path / 'calibrate.db'}"
    store = LogStore(url)
    count = 0

    def after(*_args: Any) -> None:
        nonlocal count
        count += 1

    event.listen(store.engine, "after_cursor_execute", after)
    started = time.perf_counter()
    store.migrate()
    elapsed, statements = time.perf_counter() - started, count
    assert store.schema_revision() == HEAD
    store.close()
    return statements, elapsed


def test_kill_9_during_the_first_migration_never_wedges_the_database(tmp_path: Path) -> None:
    write_key_pair(KeyPair.generate(), tmp_path / "admin.key", tmp_path / "admin.pub")
    recipients = [Recipient.from_file(tmp_path / "admin.pub")]
    statements, duration = _statements_and_duration(tmp_path)
    assert statements > 20  # the migrations really run statement by statement
    rng = random.Random(os.environ.get("PROMPTFENCE_CRASH_SEED", "12"))
    half_made = 0
    for run in range(RUNS):
        db = tmp_path / f"run{run}" / "logs.db"
        url = f"sqlite:///{db}"
        pause_after = rng.randint(1, statements - 1) if run % 2 == 0 else None
        pid, read_fd = _fork_migration(url, pause_after)
        if pause_after is not None:
            ready, _, _ = select.select([read_fd], [], [], 30)
            assert ready, "the migrating child never reached its kill point"
            got = os.read(read_fd, 16)
            assert got == b"p", (got, pause_after, statements)
        else:
            time.sleep(rng.uniform(0.0, duration * 1.5))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_fd)

        # What a crash may leave: either nothing of ours, or the complete head schema.
        probe = LogStore(url)
        with probe.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
        revision = probe.schema_revision()
        probe.close()
        ours = tables - {"alembic_version"}
        if ours and revision != HEAD:
            half_made += 1

        # Start as the proxy starts: migrate, replay, then record.
        store = LogStore(url, recipients)
        writer = SpoolingWriter(store, Spool(tmp_path / f"run{run}" / "spool" / "logs.spool"))
        writer.startup(retention_days=None)
        records = [make_record(f"after crash {run} #{i}") for i in range(3)]
        outcomes = [writer.write(r) for r in records]
        assert outcomes == [Outcome.STORED] * 3, f"run {run} (pause after {pause_after}): {outcomes}"
        assert store.schema_revision() == HEAD
        assert store.record_ids() == [r.record_id for r in records]
        assert not writer.spool.pending()
        store.close()
    assert half_made == 0, f"{half_made} of {RUNS} killed migrations left a half-made schema"


def test_a_database_left_half_made_by_an_older_version_is_repaired(tmp_path: Path) -> None:
    """The wedge the issue saw (``prompt_log`` made, ``alembic_version`` empty) is adopted and upgraded."""
    import sqlite3

    db = tmp_path / "logs.db"
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL PRIMARY KEY)")
    conn.execute(
        "CREATE TABLE prompt_log (record_id VARCHAR(36) PRIMARY KEY, timestamp FLOAT NOT NULL, meta TEXT NOT NULL,"
        " sealed TEXT NOT NULL)"
    )
    conn.commit()
    conn.close()
    store = LogStore(f"sqlite:///{db}")
    store.migrate()
    assert store.schema_revision() == HEAD
    store.close()


@pytest.mark.parametrize("mode", [0o644])
def test_database_files_are_private(tmp_path: Path, mode: int) -> None:
    """A new database and its folder are 0600 / 0700; an old world-readable one is tightened."""
    folder = tmp_path / "home" / "data"
    store = LogStore(f"sqlite:///{folder / 'logs.db'}")
    store.migrate()
    store.close()
    assert oct((folder / "logs.db").stat().st_mode & 0o777) == "0o600"
    assert oct(folder.stat().st_mode & 0o777) == "0o700"
    assert oct((tmp_path / "home").stat().st_mode & 0o777) == "0o700"
    (folder / "logs.db").chmod(mode)
    LogStore(f"sqlite:///{folder / 'logs.db'}").close()
    assert oct((folder / "logs.db").stat().st_mode & 0o777) == "0o600"
