"""Worker processes for detectors a deadline cannot interrupt, and for normalisation.

Pure-Python and C regex loops hold the GIL: a thread running one cannot be stopped, and while
it runs the inspector's event loop (health checks included) barely moves. So the rule-based
detectors (Presidio, secrets, code) and :func:`classifiers.normalize.analyse` run in a small
pool of worker processes. Each worker builds its detectors once, from picklable factories, and
then serves one call at a time over a pipe. A call that misses its deadline gets its worker
killed (SIGKILL: nothing keeps burning CPU) and a fresh worker started in the background; the
pool is never left short for longer than a worker's start-up.

Workers are forked from multiprocessing's fork server (a clean single-threaded process that has
imported the detector modules once), so a replacement skips the imports; the main process
itself is never forked, since it runs threads and torch.

Everything that crosses the pipe is the prompt (in) and findings or an analysis (out); a failure
comes back as the exception's type name only, never its message, which could quote the text.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import queue
import signal
import threading
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

log = logging.getLogger("promptfence.inspector")

ANALYSE = "analyse"
# Modules the fork server imports once, so that each (re)started worker only builds detectors.
PRELOAD = [
    "classifiers.normalize",
    "classifiers.code_detector",
    "classifiers.secrets_detector",
    "classifiers.presidio_detector",
    "classifiers.intent_detector",
]

# A factory builds a detector, or (for a model detector) an object whose ``prepare(text)``
# returns that detector's model input: see IntentDetector.prepare_factory.
DetectorFactory = Callable[[], Any]


class WorkerTimeout(Exception):
    """The call missed its deadline; its worker was killed."""


class WorkerFailed(Exception):
    """The call raised in the worker (``kind`` is the exception's type name) or the worker died."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


def _worker_main(conn: Connection, factories: Mapping[str, DetectorFactory]) -> None:
    """A worker's life: build the detectors, then answer (op, text) calls until EOF."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    from classifiers.normalize import analyse

    detectors = {name: factory() for name, factory in factories.items()}
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        op, text, share = message
        try:
            if op == ANALYSE:
                result: Any = analyse(text)
            else:
                detector = detectors[op]
                prepare = getattr(detector, "prepare", None)
                detect_with_notes = getattr(detector, "detect_with_notes", None)
                if prepare is not None:  # a model detector's text preparation (its input, not findings)
                    result = prepare(text)
                elif detect_with_notes is not None:
                    if getattr(detector, "takes_share", False):
                        found, notes = detect_with_notes(text, share=share)
                    else:
                        found, notes = detect_with_notes(text)
                    result = (tuple(found), tuple(notes))
                else:
                    result = (tuple(detector.detect(text)), ())
            reply: tuple[str, Any] = ("ok", result)
        except Exception as exc:  # the type only: a message could quote the prompt
            reply = ("error", type(exc).__name__)
        try:
            conn.send(reply)
        except (BrokenPipeError, OSError):
            return


class _Worker:
    def __init__(self, ctx: Any, factories: Mapping[str, DetectorFactory]) -> None:
        parent, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, dict(factories)), daemon=True)
        self.process.start()
        child.close()
        self.conn: Connection = parent
        self._kill_lock = threading.Lock()
        self._killed = False

    def wait_ready(self, timeout: float) -> bool:
        try:
            if not self.conn.poll(timeout):
                return False
            return bool(self.conn.recv()[0] == "ready")
        except (EOFError, OSError):
            return False

    def kill(self) -> None:
        """Idempotent and thread-safe: a deadline's replacement and the pool's close may both
        kill one worker, and closing its pipe twice could close a descriptor reused meanwhile."""
        with self._kill_lock:
            if self._killed:
                return
            self._killed = True
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


@dataclass
class _Ticket:
    """One call: which worker serves it, and whether the caller gave up on it."""

    worker: _Worker | None = None
    abandoned: bool = False


class WorkerPool:
    """``processes`` workers, each holding every detector from ``factories``.

    :meth:`submit` is thread-safe and returns a concurrent future; :meth:`abandon` kills the
    worker serving a call (or drops the call if it has not started) once its caller's deadline
    has passed.
    """

    def __init__(
        self,
        factories: Mapping[str, DetectorFactory],
        *,
        processes: int = 2,
        spares: int = 0,
        start_timeout_s: float = 120.0,
        start_method: str = "forkserver",
    ) -> None:
        if processes < 1:
            raise ValueError("a worker pool needs at least one process")
        if spares < 0:
            raise ValueError("spares cannot be negative")
        self.factories = dict(factories)
        self.processes = processes
        self.spares = spares
        # Started workers waiting to replace a killed one at once: building the detectors takes
        # seconds (Presidio's recognizers, ~500 RE2 rules), during which the pool would run one
        # short; a prompt that gets its worker killed would cost everyone that capacity.
        self._spare: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self.start_timeout_s = start_timeout_s
        self._ctx = multiprocessing.get_context(start_method)
        if start_method == "forkserver":
            self._ctx.set_forkserver_preload(PRELOAD)
        self._idle: queue.SimpleQueue[_Worker] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._closed = False
        self._all: set[_Worker] = set()
        # One thread per call in flight: each only waits on a pipe (no GIL held while blocked).
        self._io = ThreadPoolExecutor(max_workers=max(16, 8 * processes), thread_name_prefix="detector-io")
        self.restarts = 0
        starting = [self._spawn() for _ in range(processes + spares)]
        for worker in starting[:processes]:  # in parallel: all started before the first is waited for
            self._admit(worker)
        for worker in starting[processes:]:
            self._admit(worker, into=self._spare)

    # -- lifecycle -------------------------------------------------------------------------

    def _spawn(self) -> _Worker:
        worker = _Worker(self._ctx, self.factories)
        with self._lock:
            self._all.add(worker)
        return worker

    def _admit(self, worker: _Worker, into: queue.SimpleQueue[_Worker] | None = None) -> None:
        if not worker.wait_ready(self.start_timeout_s):
            worker.kill()
            with self._lock:
                self._all.discard(worker)
            raise RuntimeError("a detector worker did not start")
        (self._idle if into is None else into).put(worker)

    def _replace(self, dead: _Worker) -> None:
        """Kill ``dead`` and start its successor, off the caller's thread."""

        def run() -> None:
            with self._lock:
                self._all.discard(dead)  # first: close() must not kill it a second time
                closed = self._closed
            dead.kill()
            if closed:
                return
            with self._lock:
                if self._closed:
                    return
                self.restarts += 1
            try:
                spare = self._spare.get_nowait()
            except queue.Empty:
                spare = None
            try:
                if spare is not None:
                    self._idle.put(spare)  # ready now; a new spare is built in its place
                    self._admit(self._spawn(), into=self._spare)
                else:
                    self._admit(self._spawn())
            except Exception as exc:  # the pool runs one short; the next replacement tries again
                log.error("detector worker restart failed: %s", type(exc).__name__)

        threading.Thread(target=run, name="detector-restart", daemon=True).start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()
        self._io.shutdown(wait=False, cancel_futures=True)

    def pids(self) -> list[int]:
        with self._lock:
            return [w.process.pid for w in self._all if w.process.pid is not None]

    # -- calls -----------------------------------------------------------------------------

    def submit(self, op: str, text: str, share: float = 1.0) -> tuple[Future[Any], _Ticket]:
        """Run ``op`` on ``text`` in a worker. ``share`` is the part of the whole prompt that
        ``text`` is (a chunk), for detectors with a per-inspection budget (``takes_share``)."""
        ticket = _Ticket()
        return self._io.submit(self._call, op, text, ticket, share), ticket

    def abandon(self, ticket: _Ticket) -> None:
        with self._lock:
            ticket.abandoned = True
            worker, ticket.worker = ticket.worker, None
        if worker is not None:
            self._replace(worker)

    def _call(self, op: str, text: str, ticket: _Ticket, share: float = 1.0) -> Any:
        worker = self._idle.get()
        with self._lock:
            if ticket.abandoned or self._closed:
                self._idle.put(worker)
                raise WorkerTimeout(op)
            ticket.worker = worker
        try:
            worker.conn.send((op, text, share))
            reply = worker.conn.recv()
        except (EOFError, OSError):
            with self._lock:
                abandoned = ticket.abandoned
                ticket.worker = None
            if abandoned:
                raise WorkerTimeout(op) from None
            self._replace(worker)  # it died on its own (out of memory, a crash)
            raise WorkerFailed("WorkerDied") from None
        with self._lock:
            ticket.worker = None
            abandoned = ticket.abandoned
        if not abandoned:
            self._idle.put(worker)
        if reply[0] == "ok":
            return reply[1]
        raise WorkerFailed(str(reply[1]))
