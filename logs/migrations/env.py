"""Alembic environment for the prompt log; run by :meth:`logs.store.LogStore.migrate`.

The store hands over an open connection (``config.attributes["connection"]``) so migrations run
with the same engine settings; ``alembic -x url=...`` style offline use is not needed.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

# Any constant: serialises concurrent upgrades (proxy and viewer starting together) on PostgreSQL.
_PG_LOCK_KEY = 0x50524F4D50544C47


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK_KEY})
    context.configure(connection=connection, render_as_batch=True, transaction_per_migration=False)
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("the prompt-log migrations run through logs.store.LogStore.migrate()")
_run(connection)
