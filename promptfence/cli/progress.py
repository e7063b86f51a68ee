"""Progress for commands that load models and inspect many prompts (replay, eval, policy explain).

Why: loading the detectors takes seconds to minutes and a long dataset longer; a silent terminal
looks hung. On a terminal the progress is one line on stderr, redrawn in place (a spinner while
models load, a bar while prompts are inspected) and wiped when done; when stderr is not a
terminal (piped, CI, a test) nothing is drawn, so output that is parsed stays exactly as it was.
The line never shows prompt text, only counts and stage names.
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TextIO

BAR_WIDTH = 30
SPINNER = "|/-\\"
REDRAW_S = 0.1


def _interactive(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or odd stream: no progress
        return False


class Progress:
    """``label [#####.....] 3/10`` on a terminal; nothing otherwise."""

    def __init__(self, label: str, total: int, stream: TextIO | None = None, *, enabled: bool | None = None) -> None:
        self.label = label
        self.total = max(0, total)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = _interactive(self.stream) if enabled is None else enabled
        self._last = 0.0

    def line(self) -> str:
        filled = BAR_WIDTH if not self.total else min(BAR_WIDTH, BAR_WIDTH * self.done // self.total)
        return f"{self.label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {self.done}/{self.total}"

    def advance(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last >= REDRAW_S or self.done >= self.total):
            self._last = now
            self.stream.write("\r\x1b[K" + self.line())
            self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()

    def __enter__(self) -> Progress:
        if self.enabled:
            self.stream.write(self.line())
            self.stream.flush()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.close()


@contextmanager
def stage(label: str, stream: TextIO | None = None, *, enabled: bool | None = None) -> Iterator[None]:
    """A spinner with the elapsed seconds while the block runs (``loading detectors / 12s``)."""
    out = stream if stream is not None else sys.stderr
    if not (_interactive(out) if enabled is None else enabled):
        yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        i = 0
        while not stop.wait(REDRAW_S):
            out.write(f"\r\x1b[K{label} {SPINNER[i % len(SPINNER)]} {time.monotonic() - started:.0f}s")
            out.flush()
            i += 1

    thread = threading.Thread(target=spin, name="progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        out.write("\r\x1b[K")
        out.flush()
