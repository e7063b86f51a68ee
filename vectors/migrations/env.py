"""Alembic environment for the embedding memory; run by :meth:`vectors.store.VectorStore.migrate`.

The memory keeps its own version table (``vectors_alembic_version``) so it can share one
database with the prompt log (whose migrations use ``alembic_version``) without either
migration history seeing the other's.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

VERSION_TABLE = "vectors_alembic_version"
# Any constant: serialises concurrent upgrades (several inspectors starting together) on PostgreSQL.
_PG_LOCK_KEY = 0x50464D454D4F5259


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    context.configure(
        connection=connection,
        render_as_batch=True,
        transaction_per_migration=False,
        version_table=VERSION_TABLE,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the embedding-memory migrations run through vectors.store.VectorStore.migrate()")
_run(connection)
