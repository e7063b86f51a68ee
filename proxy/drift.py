"""The drift alarm: an app that changes its wire format must not silently make PromptFence a pass-through.

The apps' private APIs change without notice. When one does, the symptoms are quiet: an
extractor that no longer finds the prompt, a decoder that meets events it does not know, or a
new path that carries text but that no operation maps (``<app>.unknown``). Each is harmless once;
together, for one operation, they mean the catalogue lags the app. :class:`DriftMonitor` counts,
per app operation:

- ``seen``: requests the operation matched (for ``<app>.unknown``: only those carrying text);
- ``extracted`` / ``extraction_failed``: the extractor read the body, or could not;
- ``decoded`` / ``decode_errors``: an answer stream gave its text without a note, or did not;
- ``unknown_shapes``: answer streams holding well-formed events of a shape the decoder does not know;
- ``unmapped_text``: requests to a catalogue host that no operation maps but that carry text.

Requests and answers are watched in two windows per operation (an answer that breaks must
raise the alarm even though its request extracted fine): each request or answer is a problem
or not (an unmapped request with text always is). When, over the last ``window`` requests or
the last ``window`` answers of an operation (at least ``min_observations`` of them), the
problem share reaches ``alarm_rate``, the alarm is raised: **one** warning line naming the app,
the operation and the counts (never any text), then silence until both shares fall under half
the rate (an info line says it cleared) and one rises again.

Counters are read through :meth:`DriftMonitor.snapshot` (typed, for the metrics endpoint to
come and for tests) and written, at most every ``write_interval_s`` and atomically, to a small
JSON state file in the data directory, which ``promptfence apps status`` reads: the proxy
needs no control port for it. Nothing here imports mitmproxy.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger("promptfence.proxy")

STATE_FILE = "drift-state.json"
STATE_VERSION = 1


@dataclass(frozen=True)
class DriftSettings:
    """When the alarm fires: ``alarm_rate`` of the last ``window`` observations (at least
    ``min_observations`` of them) were problems."""

    alarm_rate: float = 0.5
    window: int = 50
    min_observations: int = 5
    write_interval_s: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.alarm_rate <= 1:
            raise ValueError("alarm_rate must be in (0, 1]")
        if self.window < 1 or self.min_observations < 1:
            raise ValueError("window and min_observations must be at least 1")


@dataclass(frozen=True)
class OperationDrift:
    """One operation's counters (since the proxy started) and its alarm state."""

    app: str
    operation: str
    seen: int = 0
    extracted: int = 0
    extraction_failed: int = 0
    decoded: int = 0
    decode_errors: int = 0
    unknown_shapes: int = 0
    unmapped_text: int = 0
    last_seen: float | None = None
    recent_observations: int = 0
    recent_problems: int = 0
    alarm: bool = False
    alarms: int = 0  # how many times the alarm was raised

    @property
    def recent_rate(self) -> float:
        return self.recent_problems / self.recent_observations if self.recent_observations else 0.0


@dataclass(frozen=True)
class DriftSnapshot:
    taken_at: float
    settings: DriftSettings
    operations: tuple[OperationDrift, ...]

    @property
    def alarms(self) -> tuple[OperationDrift, ...]:
        return tuple(op for op in self.operations if op.alarm)

    def get(self, operation: str) -> OperationDrift | None:
        return next((op for op in self.operations if op.operation == operation), None)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "taken_at": self.taken_at,
                "settings": asdict(self.settings),
                "operations": [asdict(op) for op in self.operations],
            },
            indent=1,
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> DriftSnapshot:
        """Parse a state file; ``ValueError`` (never quoting it) when it is not one."""
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("not a drift state file of this version")
            settings = DriftSettings(**_known(DriftSettings, data["settings"]))
            operations = tuple(OperationDrift(**_known(OperationDrift, op)) for op in data["operations"])
            return cls(float(data["taken_at"]), settings, operations)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"drift state file is malformed ({type(exc).__name__})") from None


def _known(cls: type[Any], data: object) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("expected an object")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class _Counters:
    app: str
    seen: int = 0
    extracted: int = 0
    extraction_failed: int = 0
    decoded: int = 0
    decode_errors: int = 0
    unknown_shapes: int = 0
    unmapped_text: int = 0
    last_seen: float | None = None
    alarm: bool = False
    alarms: int = 0
    requests: deque[bool] = field(default_factory=deque)
    answers: deque[bool] = field(default_factory=deque)

    def worst(self) -> tuple[int, int]:
        """(problems, observations) of the window with the higher problem share."""
        windows = [(sum(w), len(w)) for w in (self.requests, self.answers) if w]
        return max(windows, key=lambda pw: pw[0] / pw[1], default=(0, 0))


class DriftMonitor:
    """Per-operation counters, the alarm, and the state file (when ``state_path`` is given)."""

    def __init__(
        self,
        settings: DriftSettings | None = None,
        state_path: Path | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or DriftSettings()
        self.state_path = state_path
        self._clock = clock
        self._ops: dict[str, _Counters] = {}
        self._last_write = 0.0
        self._write_pending = False

    # -- what the proxy reports --------------------------------------------------------------
    def request(self, app: str, operation: str, *, extracted: bool) -> None:
        """A request the operation matched: its extractor read the body (or not)."""
        ops = self._op(app, operation)
        ops.seen += 1
        if extracted:
            ops.extracted += 1
        else:
            ops.extraction_failed += 1
        self._observe(operation, ops, ops.requests, problem=not extracted)

    def unmapped(self, app: str, operation: str) -> None:
        """A request to a catalogue host that no operation maps, carrying text."""
        ops = self._op(app, operation)
        ops.seen += 1
        ops.unmapped_text += 1
        self._observe(operation, ops, ops.requests, problem=True)

    def answer(self, app: str, operation: str, *, decoded: bool, unknown_shapes: int = 0) -> None:
        """An answer stream ended: decoded cleanly (text, no note) or not; unknown event shapes in it."""
        ops = self._op(app, operation)
        if decoded:
            ops.decoded += 1
        else:
            ops.decode_errors += 1
        if unknown_shapes:
            ops.unknown_shapes += 1
        self._observe(operation, ops, ops.answers, problem=not decoded or unknown_shapes > 0)

    # -- reading ----------------------------------------------------------------------------
    def snapshot(self) -> DriftSnapshot:
        return DriftSnapshot(
            self._clock(),
            self.settings,
            tuple(
                OperationDrift(
                    app=c.app,
                    operation=name,
                    seen=c.seen,
                    extracted=c.extracted,
                    extraction_failed=c.extraction_failed,
                    decoded=c.decoded,
                    decode_errors=c.decode_errors,
                    unknown_shapes=c.unknown_shapes,
                    unmapped_text=c.unmapped_text,
                    last_seen=c.last_seen,
                    recent_observations=c.worst()[1],
                    recent_problems=c.worst()[0],
                    alarm=c.alarm,
                    alarms=c.alarms,
                )
                for name, c in sorted(self._ops.items())
            ),
        )

    def write_state(self) -> None:
        """Write the state file now (atomically: readers see the old file or the new one)."""
        self._write_pending = False
        if self.state_path is None:
            return
        self._last_write = self._clock()
        try:
            write_atomic(self.state_path, self.snapshot().to_json())
        except OSError as exc:
            log.warning("drift state not written to %s (%s)", self.state_path, type(exc).__name__)

    # -- internals --------------------------------------------------------------------------
    def _op(self, app: str, operation: str) -> _Counters:
        ops = self._ops.get(operation)
        if ops is None:
            window = self.settings.window
            ops = self._ops[operation] = _Counters(app, requests=deque(maxlen=window), answers=deque(maxlen=window))
        ops.last_seen = self._clock()
        return ops

    def _observe(self, operation: str, ops: _Counters, window: deque[bool], *, problem: bool) -> None:
        window.append(problem)
        count, problems = len(window), sum(window)
        rate = problems / count
        settings = self.settings
        if not ops.alarm and count >= settings.min_observations and rate >= settings.alarm_rate:
            ops.alarm = True
            ops.alarms += 1
            log.warning(
                "DRIFT ALARM app=%s op=%s: %d of the last %d %s failed "
                "(extraction failed %d, decode errors %d, unknown event shapes %d, unmapped text %d since start; "
                "threshold %.0f%%): the app may have changed its wire format and this operation may "
                "no longer be inspected or recorded in full; see `promptfence apps status`",
                ops.app,
                operation,
                problems,
                count,
                "answers" if window is ops.answers else "requests",
                ops.extraction_failed,
                ops.decode_errors,
                ops.unknown_shapes,
                ops.unmapped_text,
                settings.alarm_rate * 100,
            )
            self.write_state()
            return
        worst_problems, worst_count = ops.worst()
        if ops.alarm and worst_problems / worst_count < settings.alarm_rate / 2:
            ops.alarm = False
            log.info("drift alarm cleared app=%s op=%s: %d of the last %d failed", ops.app, operation, problems, count)
        self._changed()

    def _changed(self) -> None:
        """Write the state file at most every ``write_interval_s``; a later write is scheduled."""
        if self.state_path is None or self._write_pending:
            return
        wait = self._last_write + self.settings.write_interval_s - self._clock()
        if wait <= 0:
            self.write_state()
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no event loop (offline use): write now
            self.write_state()
            return
        self._write_pending = True
        loop.call_later(wait, self.write_state)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path`` and rename it over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_state(path: Path) -> DriftSnapshot | None:
    """The state file a running (or stopped) proxy left, or None when there is none."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return DriftSnapshot.from_json(text)


def by_operation(snapshot: DriftSnapshot | None) -> Mapping[str, OperationDrift]:
    return {} if snapshot is None else {op.operation: op for op in snapshot.operations}


class DriftCollector:
    """The drift counters on the proxy's ``/metrics`` (promptfence/metrics.py), read at scrape
    time from :meth:`DriftMonitor.snapshot`: per app operation, never any request content."""

    _COUNTERS = (
        ("seen", "Requests and answers seen."),
        ("extraction_failed", "Requests whose extraction failed or found no prompt in a text body."),
        ("decode_errors", "Answer streams with decode errors."),
        ("unknown_shapes", "Answers carrying events of a shape the decoder does not know."),
        ("unmapped_text", "Text-carrying requests to catalogue hosts that no operation maps."),
    )

    def __init__(self, monitor: DriftMonitor) -> None:
        self.monitor = monitor

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        snapshot = self.monitor.snapshot()
        families = {
            name: CounterMetricFamily(f"promptfence_drift_{name}", text, labels=["app", "operation"])
            for name, text in self._COUNTERS
        }
        alarm = GaugeMetricFamily(
            "promptfence_drift_alarm", "1 while the operation's recent problem rate is over the threshold.",
            labels=["app", "operation"],
        )  # fmt: skip
        for op in snapshot.operations:
            labels = [op.app, op.operation]
            for name, family in families.items():
                family.add_metric(labels, getattr(op, name))
            alarm.add_metric(labels, 1.0 if op.alarm else 0.0)
        yield from families.values()
        yield alarm
