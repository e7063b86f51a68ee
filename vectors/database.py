"""SQLAlchemy plumbing shared by the two packages that own tables.

The embedding memory (:mod:`vectors.store`) and the prompt log (:mod:`logs.store`, a later layer
that may import from here) build their engines, run their Alembic migrations and describe
database errors the same way; this module is that one way. Each package keeps its own models,
migrations, version table (chosen in its ``migrations/env.py``) and exceptions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import BigInteger, Integer, create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
BIG_ID = BigInteger().with_variant(Integer(), "sqlite")
PG_CONNECT_TIMEOUT_S = 3


def create_store_engine(database_url: str, *, sqlite_busy_timeout_s: float) -> Engine:
    """An engine for ``database_url``: SQLite file (its folder made) or PostgreSQL, short timeouts.

    Connections are checked before use (a restarted server is not an error), and SQLite enforces
    foreign keys on every connection.
    """
    connect_args: dict[str, Any] = {}
    if database_url.startswith("sqlite"):
        path = database_url.partition(":///")[2]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        connect_args["timeout"] = sqlite_busy_timeout_s
    elif database_url.startswith("postgresql"):
        connect_args["connect_timeout"] = PG_CONNECT_TIMEOUT_S
    engine = create_engine(database_url, connect_args=connect_args, pool_pre_ping=True)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def run_migrations(
    engine: Engine,
    script_location: Path,
    *,
    adopt: Callable[[Connection], str | None] | None = None,
) -> None:
    """Upgrade the schema in ``script_location`` to head, in one transaction on ``engine``.

    The open connection is handed to the package's ``env.py`` as ``config.attributes["connection"]``;
    the env picks the version table and takes the PostgreSQL advisory lock that serialises
    concurrent upgrades. ``adopt``, given the connection, may name a revision to stamp first (a
    database made before the migrations existed). Raises :class:`SQLAlchemyError`: callers turn it
    into their own error with :func:`error_reason`.
    """
    from alembic import command
    from alembic.config import Config as AlembicConfig

    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(script_location))
    with engine.begin() as conn:
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


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()
