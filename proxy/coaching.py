"""The memory behind the ``warn`` action: an identical resend within the window proceeds.

The first request a warn decision applies to is stopped with a notice; the ledger remembers a
digest of (user, app, operation, conversation, prompt) until the window ends. The same request
again within the window proceeds once (the log says "proceeded after warning"); after that, or
after the window, it is warned again. Only digests are kept, in memory, per proxy process.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from promptfence.core import Operation

MAX_ENTRIES = 100_000


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
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._pending: dict[str, float] = {}

    def resend(self, operation: Operation, window_s: float) -> bool:
        """True when this is an identical resend within the window (and consumes it);
        otherwise remembers the request and returns False (warn it)."""
        now = self._clock()
        key = warn_key(operation)
        expiry = self._pending.pop(key, None)
        if expiry is not None and expiry >= now:
            return True
        if len(self._pending) >= MAX_ENTRIES:
            self._pending = {k: t for k, t in self._pending.items() if t >= now}
            if len(self._pending) >= MAX_ENTRIES:
                self._pending.clear()
        self._pending[key] = now + window_s
        return False
