"""Log databases for tests: a SQLite file, or a fresh schema in the local PostgreSQL.

Every log test that takes a ``log_db`` runs against both (``BACKENDS``); PostgreSQL is skipped,
with the reason, only when the server at ``PG_URL`` cannot be reached. ``outage()`` makes the
database refuse writes for real: PostgreSQL is stopped (and always started again), SQLite is
locked by an exclusive transaction (chmod does not stop root from writing).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from promptfence.core import (
    Action,
    Decision,
    DetectorRun,
    DetectorStatus,
    Finding,
    Identity,
    Inspection,
    LogRecord,
    Operation,
    OperationKind,
    Payload,
    Topic,
)

PG_BASE = os.environ.get("PROMPTFENCE_TEST_PG", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = ["sqlite", "postgresql"]


def _pg_dsn() -> str:
    return PG_BASE.replace("postgresql+psycopg://", "postgresql://", 1)


def pg_reachable() -> str | None:
    """None when PostgreSQL answers, else why not."""
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed"
    try:
        with psycopg.connect(_pg_dsn(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        return f"PostgreSQL at {PG_BASE} is not reachable ({type(exc).__name__})"
    return None


def _pg_cluster() -> tuple[str, str]:
    versions = sorted(os.listdir("/etc/postgresql"))
    return versions[-1], "main"


def _pg_ctl(action: str) -> None:
    version, name = _pg_cluster()
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", version, name, action],
        check=True,
        capture_output=True,
        timeout=60,
    )


@dataclass
class LogDB:
    backend: str
    url: str
    path: Path | None = None  # the SQLite file
    schema: str | None = None  # the PostgreSQL schema

    @contextmanager
    def outage(self) -> Iterator[None]:
        """The database refuses every write inside the block, and works again after it."""
        if self.backend == "sqlite":
            assert self.path is not None
            conn = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            try:
                conn.execute("BEGIN EXCLUSIVE")
                yield
            finally:
                conn.execute("ROLLBACK")
                conn.close()
            return
        _pg_ctl("stop")
        try:
            yield
        finally:
            _pg_ctl("start")
            deadline = time.monotonic() + 60
            while pg_reachable() is not None:
                if time.monotonic() > deadline:
                    raise AssertionError("PostgreSQL did not come back after the outage")
                time.sleep(0.2)

    def dump_text(self) -> bytes:
        """Every byte the database holds for us: the SQLite file(s), or every row as text."""
        if self.backend == "sqlite":
            assert self.path is not None
            return b"".join(p.read_bytes() for p in self.path.parent.glob(self.path.name + "*"))
        import psycopg

        out: list[str] = []
        with psycopg.connect(_pg_dsn()) as conn:
            tables = conn.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_schema = %s", (self.schema,)
            ).fetchall()
            for (table,) in tables:
                for (row,) in conn.execute(f'SELECT t::text FROM "{self.schema}"."{table}" t'):
                    out.append(str(row))
        return "\n".join(out).encode()


@contextmanager
def make_log_db(backend: str, directory: Path) -> Iterator[LogDB]:
    if backend == "sqlite":
        path = directory / "logs.db"
        yield LogDB("sqlite", f"sqlite:///{path}", path=path)
        return
    reason = pg_reachable()
    if reason is not None:
        pytest.skip(reason)
    import psycopg

    schema = f"pf_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(_pg_dsn(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield LogDB("postgresql", f"{PG_BASE}?options=-csearch_path%3D{schema}", schema=schema)
    finally:
        deadline = time.monotonic() + 60
        while pg_reachable() is not None and time.monotonic() < deadline:
            time.sleep(0.2)  # an outage test may just have restarted it
        with psycopg.connect(_pg_dsn(), autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


def make_record(
    prompt: str,
    *,
    conversation: str | None = "c-1",
    user: str = "alice",
    groups: tuple[str, ...] = ("eng",),
    app: str = "chatgpt",
    app_type: str = "genai_chat",
    kind: str = "SendPrompt",
    topics: dict[str, float] | None = None,
    action: str = "allow",
    response: str | None = "the answer",
    attachments: tuple[str, ...] = (),
    timestamp: float | None = None,
    record_id: str | None = None,
) -> LogRecord:
    topic_scores = {Topic(t): s for t, s in (topics or {}).items()}
    findings = tuple(
        Finding("test", f"test.{t.value}", t, s, None, "test rule") for t, s in topic_scores.items() if s >= 0.3
    )
    op = Operation(
        app,
        app_type,
        f"{app}.send_prompt",
        OperationKind(kind),
        Identity(user, groups),
        prompt=prompt,
        conversation_id=conversation,
        attachments=attachments,
    )
    return LogRecord(
        record_id or str(uuid.uuid4()),
        time.time() if timestamp is None else timestamp,
        op,
        Inspection(findings, topic_scores, (DetectorRun("test", DetectorStatus.OK, 1.5),), elapsed_ms=2.0),
        Decision(Action(action), ("r-1",) if action != "allow" else (), "default", reason="test"),
        Payload(prompt, response, attachments),
        response_bytes=0 if response is None else len(response.encode()),
    )
