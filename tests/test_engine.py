"""The inspection engine: concurrent detectors, deadlines, failures on the record."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from classifiers.engine import InspectionEngine, combine_topic_scores
from promptfence.core import DetectorStatus, Finding, Topic


class SleepyDetector:
    version = "test"

    def __init__(self, name: str, seconds: float, score: float = 0.7, fail: bool = False) -> None:
        self.name = name
        self.seconds = seconds
        self.score = score
        self.fail = fail

    def detect(self, text: str) -> Sequence[Finding]:
        time.sleep(self.seconds)
        if self.fail:
            raise RuntimeError("model exploded")
        return [Finding(self.name, f"test.{self.name}", Topic.PII, self.score, None, "rule test")]


async def test_detectors_run_concurrently() -> None:
    engine = InspectionEngine([SleepyDetector(f"d{i}", 0.4) for i in range(4)], deadline_s=5)
    started = time.perf_counter()
    inspection = await engine.inspect("x")
    wall = time.perf_counter() - started
    engine.close()
    assert len(inspection.findings) == 4
    assert wall < 1.2, f"took {wall:.2f}s: detectors ran one after another (sum would be 1.6s)"


async def test_deadline_and_failure_are_recorded_not_raised() -> None:
    engine = InspectionEngine(
        [SleepyDetector("fast", 0.0), SleepyDetector("slow", 2.0), SleepyDetector("broken", 0.0, fail=True)],
        deadline_s=5,
        deadlines={"slow": 0.2},
    )
    started = time.perf_counter()
    inspection = await engine.inspect("x")
    wall = time.perf_counter() - started
    engine.close()
    status = {run.detector: run.status for run in inspection.runs}
    assert status == {"fast": DetectorStatus.OK, "slow": DetectorStatus.TIMEOUT, "broken": DetectorStatus.FAILED}
    assert wall < 1.5  # the deadline was honoured
    assert inspection.failed_detectors == ("slow", "broken")
    assert [f.detector for f in inspection.findings] == ["fast"]


def _f(kind: str, score: float, topic: Topic = Topic.PII) -> Finding:
    return Finding("d", kind, topic, score, None, "rule")


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        ([_f("a", 0.5)], 0.5),
        ([_f("a", 0.5), _f("a", 0.5)], 0.5),  # repetition of one kind does not add up
        ([_f("a", 0.5), _f("b", 0.5)], 0.75),  # independent kinds do
        ([_f("a", 1.5)], 1.0),
    ],
)
def test_combine(findings: list[Finding], expected: float) -> None:
    assert combine_topic_scores(findings)[Topic.PII] == pytest.approx(expected)


def test_duplicate_detector_names_are_rejected() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        InspectionEngine([SleepyDetector("a", 0), SleepyDetector("a", 0)])
