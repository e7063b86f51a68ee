"""A policy set that follows its files: edits apply to the next request, broken edits do not.

:class:`ReloadingPolicySet` is what the proxy hands to the addon as its ``DecisionPort``. Each
``decide`` call first compares a cheap signature of the files (``stat()``: inode, size,
mtime; the directory listing for a directory entry) with the last one seen; only when it
changed are the files parsed again. A file modified within the last two seconds is also
hashed, so two same-size writes inside one timestamp tick are still noticed (git's "racy
clean" rule). Connections are never touched: the next request simply sees the new set.

A reload that fails (bad YAML, a schema or semantic error, a missing file) keeps the last
good set running, logs the error (file:line:column: field: message) once per broken state,
and exposes it as :attr:`ReloadingPolicySet.last_error`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

from policies.policy import PolicySet, expand_policy_paths, load_policies
from promptfence.core import Decision, Inspection, Operation
from promptfence.errors import ConfigError

log = logging.getLogger("promptfence.policy")

RACY_WINDOW_S = 2.0

Signature = tuple[object, ...]


def _file_signature(path: Path, now: float) -> object:
    try:
        st = path.stat()
    except OSError as exc:
        return (str(path), "missing", exc.errno)
    item: tuple[object, ...] = (str(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    if now - st.st_mtime < RACY_WINDOW_S:
        try:
            item += (hashlib.sha256(path.read_bytes()).hexdigest(),)
        except OSError:
            item += ("unreadable",)
    return item


class ReloadingPolicySet:
    def __init__(
        self,
        files: Sequence[Path],
        *,
        clock: Callable[[], float] = time.time,
        on_error: Callable[[ConfigError], None] | None = None,
        custom_topics: Collection[str] = (),
    ) -> None:
        self.files = [Path(f) for f in files]
        self.custom_topics = frozenset(custom_topics)
        self._clock = clock
        self._on_error = on_error
        self._signature = self._current_signature()
        self.current: PolicySet = load_policies(self.files, self.custom_topics)  # a broken set at start-up is fatal
        self.last_error: ConfigError | None = None
        self.reloads = 0

    def _current_signature(self) -> Signature:
        now = self._clock()
        parts: list[object] = []
        for entry in self.files:
            if entry.is_dir():
                try:
                    parts.append((str(entry), tuple(sorted(os.listdir(entry)))))
                except OSError as exc:
                    parts.append((str(entry), "unlistable", exc.errno))
        for path in expand_policy_paths(self.files):
            parts.append(_file_signature(path, now))
        return tuple(parts)

    def refresh(self) -> bool:
        """Reload if the files changed; True when a new set was installed."""
        signature = self._current_signature()
        if signature == self._signature:
            return False
        self._signature = signature
        try:
            fresh = load_policies(self.files, self.custom_topics)
        except ConfigError as exc:
            self.last_error = exc
            log.error(
                "policy reload failed; still enforcing the last good set (%d policies): %s",
                len(self.current.policies),
                exc,
            )
            if self._on_error is not None:
                self._on_error(exc)
            return False
        self.current = fresh
        self.last_error = None
        self.reloads += 1
        log.info(
            "policies reloaded: %s",
            ", ".join(f"{p.name} ({len(p.rules)} rules)" for p in fresh.policies),
        )
        return True

    def decide(self, operation: Operation, inspection: Inspection) -> Decision:
        self.refresh()
        return self.current.decide(operation, inspection)
