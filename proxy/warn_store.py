"""Where the warn/resend ledger keeps its digests: one process, or shared (issue 17).

:class:`~proxy.coaching.WarnLedger` decides *what* is remembered (a digest of the warned
request, for a window); a store decides *where*. With one proxy process the default
:class:`MemoryWarnStore` is enough. Behind a load balancer the resend of a warned prompt often
lands on another proxy process, which would warn again: those share a store in Redis
(:class:`RedisWarnStore`) or in the database (``logs.warn_store.SqlWarnStore``, built by the
CLI, since only ``logs`` talks SQL).

Every store has one operation, :meth:`WarnStore.take_or_put`, atomic across processes: exactly
one of two proxies that see the same resend at once lets it proceed. Only digests (SHA-256 hex)
are stored, never the prompt or the user. The ledger treats a store that fails as "not a
resend" (warn again): a store outage can cost a user a second notice, never a skipped one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

MAX_ENTRIES = 100_000
REDIS_PREFIX = "promptfence:warn:"


class WarnStore(Protocol):
    def take_or_put(self, key: str, window_s: float) -> bool:
        """True when ``key`` is held and unexpired (it is consumed); otherwise hold ``key`` for
        ``window_s`` seconds and return False."""
        ...


class MemoryWarnStore:
    """Per process, bounded: past ``max_entries`` expired digests go, then (a flood) all."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, max_entries: int = MAX_ENTRIES) -> None:
        self._clock = clock
        self._max = max_entries
        self._pending: dict[str, float] = {}

    def take_or_put(self, key: str, window_s: float) -> bool:
        now = self._clock()
        expiry = self._pending.pop(key, None)
        if expiry is not None and expiry >= now:
            return True
        if len(self._pending) >= self._max:
            self._pending = {k: t for k, t in self._pending.items() if t >= now}
            if len(self._pending) >= self._max:
                self._pending.clear()
        self._pending[key] = now + window_s
        return False

    def __len__(self) -> int:
        return len(self._pending)


class RedisWarnStore:
    """Redis: ``GETDEL`` consumes atomically (one winner), ``SET PX`` holds with Redis' own expiry."""

    def __init__(self, url: str, *, timeout_s: float = 0.5, prefix: str = REDIS_PREFIX, client: Any = None) -> None:
        if client is None:
            import redis

            client = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._redis = client
        self._prefix = prefix

    def take_or_put(self, key: str, window_s: float) -> bool:
        name = self._prefix + key
        if self._redis.getdel(name) is not None:
            return True
        self._redis.set(name, b"1", px=max(1, int(window_s * 1000)))
        return False

    def close(self) -> None:
        self._redis.close()


def is_redis_url(url: str) -> bool:
    return urlsplit(url).scheme in ("redis", "rediss", "unix")
