"""The memory behind the ``warn`` action: an identical resend within the window proceeds.

The first request a warn decision applies to is stopped with a notice; the ledger remembers a
digest of (user, app, operation, conversation, prompt) until the window ends. The same request
again within the window proceeds once (the log says "proceeded after warning"); after that, or
after the window, it is warned again. Only digests are kept: in memory, per proxy process, by
default, or in a shared store (Redis, the database: proxy/warn_store.py) so that several proxy
processes behind one load balancer recognise each other's warnings.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable

from promptfence.core import Operation
from proxy.warn_store import MAX_ENTRIES, MemoryWarnStore, WarnStore

__all__ = ["MAX_ENTRIES", "WarnLedger", "warn_key"]

log = logging.getLogger("promptfence.proxy")


def warn_key(operation: Operation) -> str:
    parts = (
        operation.identity.user,
        operation.app,
        operation.operation_id,
        operation.conversation_id or "",
        operation.prompt,
        "\x1f".join(operation.attachments),
    )
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


class WarnLedger:
    def __init__(self, clock: Callable[[], float] = time.monotonic, store: WarnStore | None = None) -> None:
        self.store: WarnStore = store if store is not None else MemoryWarnStore(clock)

    def resend(self, operation: Operation, window_s: float) -> bool:
        """True when this is an identical resend within the window (and consumes it);
        otherwise remembers the request and returns False (warn it). A store that fails
        counts as no resend: the user is warned again, never let through unwarned."""
        try:
            return self.store.take_or_put(warn_key(operation), window_s)
        except Exception as exc:  # Redis or the database is down: the type only
            log.warning("warn ledger store failed: %s", type(exc).__name__)
            return False
