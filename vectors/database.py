"""SQLAlchemy plumbing shared by the two packages that own tables.

The embedding memory (:mod:`vectors.store`) and the prompt log (:mod:`logs.store`, a later layer
that may import from here) build their engines, run their Alembic migrations and describe
database errors the same way; this module is that one way. Each package keeps its own models,
migrations, version table (chosen in its ``migrations/env.py``) and exceptions.

Three promises hold for both stores:

- **Atomic migrations.** pysqlite's legacy transaction handling never emits ``BEGIN`` before DDL,
  so ``CREATE TABLE`` ran in autocommit and a ``kill -9`` during the very first migration left a
  half-made schema behind every later start. SQLite engines made here turn that off and emit
  ``BEGIN`` themselves (the SQLAlchemy "pysqlite serializable" recipe): every transaction,
  Alembic's included, is a real SQLite transaction, and SQLite's DDL is transactional.
- **Bounded calls.** PostgreSQL connections time out connecting (``connect_timeout``) and per
  statement (``statement_timeout``), the pool waits a bounded time for a connection, and
  :func:`interrupt_active` breaks the socket of a call stuck on a network that stopped answering.
- **Private files.** A SQLite database (and its folder, when made here) is created 0600 (0700).
"""

from __future__ import annotations

import logging
import math
import os
import socket
import stat
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Integer, create_engine, event
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

log = logging.getLogger("promptfence.database")

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
PG_CONNECT_TIMEOUT_S = 3
# Every statement on PostgreSQL is cancelled by the server past this (a lock wait, a slow plan).
PG_STATEMENT_TIMEOUT_S = 10.0
# How long a caller waits for a free pooled connection.
POOL_TIMEOUT_S = 5.0
# The execution option a connection may carry to choose its SQLite BEGIN (migrations: IMMEDIATE).
SQLITE_BEGIN_OPTION = "promptfence_sqlite_begin"

# psycopg's transaction status while a command is in progress (PQTRANS_ACTIVE).
_PQTRANS_ACTIVE = 1
_connections: weakref.WeakKeyDictionary[Engine, weakref.WeakSet[Any]] = weakref.WeakKeyDictionary()


def create_store_engine(
    database_url: str,
    *,
    sqlite_busy_timeout_s: float,
    connect_timeout_s: float = PG_CONNECT_TIMEOUT_S,
    statement_timeout_s: float = PG_STATEMENT_TIMEOUT_S,
    pool_timeout_s: float = POOL_TIMEOUT_S,
) -> Engine:
    """An engine for ``database_url``: SQLite file (made 0600, its folder 0700) or PostgreSQL.

    Connections are checked before use (a restarted server is not an error), SQLite enforces
    foreign keys on every connection and runs every transaction as a real ``BEGIN`` ... ``COMMIT``
    (DDL included), and every PostgreSQL call is bounded (see the module docstring).
    """
    connect_args: dict[str, Any] = {}
    url = make_url(database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:" and not url.database.startswith("file:"):
            private_sqlite_file(Path(url.database))
        connect_args["timeout"] = sqlite_busy_timeout_s
    elif url.get_backend_name() == "postgresql":
        # libpq (and psycopg) enforce at least 2 s; fractions round up.
        connect_args["connect_timeout"] = max(2, math.ceil(connect_timeout_s))
        if statement_timeout_s > 0:
            options = url.query.get("options")
            existing = " ".join(options) if isinstance(options, tuple) else (options or "")
            ms = int(statement_timeout_s * 1000)
            url = url.update_query_dict({"options": f"{existing} -c statement_timeout={ms}".strip()})
    engine = create_engine(url, connect_args=connect_args, pool_pre_ping=True, pool_timeout=pool_timeout_s)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_connect)
        event.listen(engine, "begin", _sqlite_begin)
    else:
        registry: weakref.WeakSet[Any] = weakref.WeakSet()
        _connections[engine] = registry
        event.listen(engine, "connect", lambda dbapi_connection, _record: registry.add(dbapi_connection))
    return engine


def interrupt_active(engine: Engine) -> int:
    """Break the socket of every connection of ``engine`` with a command in flight (PostgreSQL).

    For a call that a network black hole keeps waiting forever: the waiting thread gets a
    connection error at once, and the pool drops that connection. Idle connections are left
    alone (their next use is checked by the pre-ping, itself interruptible). Returns how many
    sockets were shut down.
    """
    broken = 0
    for conn in list(_connections.get(engine, ())):
        pgconn = getattr(conn, "pgconn", None)
        if pgconn is None or getattr(pgconn, "transaction_status", None) != _PQTRANS_ACTIVE:
            continue
        try:
            sock = socket.socket(fileno=os.dup(pgconn.socket))
        except Exception:  # closed meanwhile: nothing to break
            continue
        try:
            sock.shutdown(socket.SHUT_RDWR)
            broken += 1
        except OSError:
            pass
        finally:
            sock.close()
    return broken


def private_sqlite_file(path: Path) -> None:
    """Create the SQLite file 0600 (its missing folders 0700) before SQLite does; tighten an old one.

    SQLite gives its journal and WAL files the database file's mode, so they follow.
    """
    from promptfence.config import ensure_private_dir

    ensure_private_dir(path.parent)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        mode = stat.S_IMODE(os.fstat(fd).st_mode)
        if mode & 0o077:
            os.fchmod(fd, mode & 0o700)
            log.warning("database file %s was mode %o; now %o", path, mode, mode & 0o700)
    finally:
        os.close(fd)
    for suffix in ("-journal", "-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        try:
            if stat.S_IMODE(side.stat().st_mode) & 0o077:
                side.chmod(0o600)
        except FileNotFoundError:
            pass


def run_migrations(
    engine: Engine,
    script_location: Path,
    *,
    adopt: Callable[[Connection], str | None] | None = None,
) -> None:
    """Upgrade the schema in ``script_location`` to head, in one transaction on ``engine``.

    The open connection is handed to the package's ``env.py`` as ``config.attributes["connection"]``;
    the env picks the version table and takes the PostgreSQL advisory lock that serialises
    concurrent upgrades (on SQLite, ``BEGIN IMMEDIATE`` does). The whole upgrade, DDL and version
    stamp, commits or vanishes together: a crash at any point leaves the schema as it was.
    ``adopt``, given the connection, may name a revision to stamp first (a database made before
    the migrations existed, or one a pre-transactional version left half-made). Raises
    :class:`SQLAlchemyError`: callers turn it into their own error with :func:`error_reason`.
    """
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location))
    with engine.connect() as conn:
        conn.execution_options(**{SQLITE_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        with conn.begin():
            cfg.attributes["connection"] = conn
            revision = adopt(conn) if adopt is not None else None
            if revision is not None:
                command.stamp(cfg, revision)
            command.upgrade(cfg, "head")


def error_reason(exc: SQLAlchemyError) -> str:
    """The exception class and the driver's first line, which names no stored content.

    Statements and parameters are never included (``hide_parameters`` would still show SQL).
    """
    orig = getattr(exc, "orig", None)
    if isinstance(exc, IntegrityError):
        return "integrity error"
    if orig is not None:
        first = str(orig).strip().splitlines()[0] if str(orig).strip() else ""
        return f"{type(orig).__name__}: {first[:200]}"
    return type(exc).__name__


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Stop pysqlite from managing transactions (it never BEGINs before DDL); _sqlite_begin does.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    # Write-ahead log, fsynced at every commit: as durable as the rollback journal (a record
    # acknowledged is on disk), with one fsync per commit instead of several and readers (the
    # viewer) that never block the writer. Issue 17: the commit was most of the log writer's
    # and the memory's CPU. A database that is locked right now keeps its mode; the next
    # connection tries again.
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
    except Exception as exc:  # locked (an outage, another process migrating): not fatal
        log.debug("SQLite journal mode unchanged: %s", type(exc).__name__)
    cursor.close()


def _sqlite_begin(conn: Connection) -> None:
    conn.exec_driver_sql(str(conn.get_execution_options().get(SQLITE_BEGIN_OPTION, "BEGIN")))
