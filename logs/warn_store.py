"""The warn/resend ledger's digests in the database, for several proxy processes (issue 17).

Lives in ``logs`` because only ``logs`` and ``vectors`` talk SQL; the CLI hands it to
:class:`proxy.coaching.WarnLedger` as its store (``policies.warn_store`` set to an SQLAlchemy
URL, typically the log database's PostgreSQL). One small table of its own,
``promptfence_warn_ledger`` (digest, expiry as Unix time), created when missing: it holds
nothing worth migrating, only digests that expire within the warn window.

``take_or_put`` is one transaction: ``DELETE ... RETURNING`` consumes a held digest, so of two
proxies that see the same resend at once exactly one gets the row (the other's DELETE finds
none once the first commits); an INSERT that loses a race to another process's INSERT of the
same digest means that process has just warned it: this one reports "not a resend". Expired
rows are swept every ``sweep_every`` calls.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Column, Float, MetaData, String, Table, delete, insert
from sqlalchemy.exc import IntegrityError

from vectors.database import create_store_engine

TABLE = "promptfence_warn_ledger"
SQLITE_BUSY_TIMEOUT_S = 2.0

_metadata = MetaData()
warn_ledger = Table(
    TABLE,
    _metadata,
    Column("digest", String(64), primary_key=True),
    Column("expires_at", Float, nullable=False, index=True),
)


class SqlWarnStore:
    def __init__(
        self,
        database_url: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 2.0,
        sweep_every: int = 512,
    ) -> None:
        self.engine = create_store_engine(
            database_url,
            sqlite_busy_timeout_s=SQLITE_BUSY_TIMEOUT_S,
            connect_timeout_s=timeout_s,
            statement_timeout_s=timeout_s,
            pool_timeout_s=timeout_s,
        )
        _metadata.create_all(self.engine, checkfirst=True)
        self._clock = clock  # wall clock: the processes sharing the table share no monotonic clock
        self._sweep_every = max(1, sweep_every)
        self._calls = 0

    def take_or_put(self, key: str, window_s: float) -> bool:
        now = self._clock()
        self._calls += 1
        with self.engine.begin() as conn:
            held = conn.execute(
                delete(warn_ledger).where(warn_ledger.c.digest == key).returning(warn_ledger.c.expires_at)
            ).first()
            if held is not None and float(held[0]) >= now:
                return True
            if self._calls % self._sweep_every == 0:
                conn.execute(delete(warn_ledger).where(warn_ledger.c.expires_at < now))
        try:
            with self.engine.begin() as conn:
                conn.execute(insert(warn_ledger).values(digest=key, expires_at=now + window_s))
        except IntegrityError:  # another process warned the same request just now
            pass
        return False

    def close(self) -> None:
        self.engine.dispose()
