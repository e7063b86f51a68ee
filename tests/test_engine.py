"""The inspection engine: concurrent detectors, deadlines, failures on the record."""

from __future__ import annotations

import time
from collections.abc import Sequence

import pytest

from classifiers.engine import InspectionEngine, combine_topic_scores, load_topic_map
from promptfence.core import DetectorStatus, Finding, Span, Topic
from promptfence.errors import ConfigError

ANY = {t: 1.0 for t in Topic}


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
    engine = InspectionEngine(
        [SleepyDetector(f"d{i}", 0.4) for i in range(4)], deadline_s=5, topic_map={f"d{i}": ANY for i in range(4)}
    )
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
        topic_map={"fast": ANY, "slow": ANY, "broken": ANY},
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
        InspectionEngine([SleepyDetector("a", 0), SleepyDetector("a", 0)], topic_map={"a": ANY})


def test_a_detector_must_be_in_the_topic_map() -> None:
    with pytest.raises(ConfigError, match="missing from the topic map"):
        InspectionEngine([SleepyDetector("stranger", 0)])


async def test_topic_map_filters_and_weights_and_reports_uncovered() -> None:
    engine = InspectionEngine(
        [SleepyDetector("d", 0, score=0.8)], topic_map={"d": {Topic.PII: 0.5, Topic.FINANCIAL: 1.0}}
    )
    inspection = await engine.inspect("x")
    engine.close()
    assert inspection.topics == {Topic.PII: pytest.approx(0.4)}
    assert Topic.FINANCIAL not in inspection.uncovered and Topic.JAILBREAK in inspection.uncovered


def test_shipped_topic_map_names_known_topics() -> None:
    shipped = load_topic_map()
    assert {"presidio", "secrets", "code", "intent", "promptguard", "llm", "neighbours"} <= set(shipped)


class EchoSpanDetector:
    """Reports the first occurrence of a needle, wherever it is in the analysis text."""

    name = "echo"
    version = "test"

    def __init__(self, needle: str) -> None:
        self.needle = needle

    def detect(self, text: str) -> list[Finding]:
        at = text.find(self.needle)
        return (
            []
            if at < 0
            else [Finding("echo", "test.echo", Topic.PII, 0.9, Span(at, at + len(self.needle)), "rule echo")]
        )


async def test_spans_map_back_to_the_prompt_through_normalisation() -> None:
    prompt = "ｓｓｎ: 2\u200b19-09-9999"
    engine = InspectionEngine([EchoSpanDetector("219-09-9999")], topic_map={"echo": ANY})
    inspection = await engine.inspect(prompt)
    engine.close()
    [finding] = inspection.findings
    assert finding.span is not None
    assert prompt[finding.span.start : finding.span.end] == "2\u200b19-09-9999"
    assert "unicode" in inspection.transforms


async def test_decoded_content_is_inspected_without_a_span() -> None:
    import base64

    prompt = "please decode " + base64.b64encode(b"the secret needle is here").decode()
    engine = InspectionEngine([EchoSpanDetector("secret needle")], topic_map={"echo": ANY})
    inspection = await engine.inspect(prompt)
    engine.close()
    [finding] = inspection.findings
    assert finding.span is None and "de-obfuscated" in finding.explanation
    assert "base64" in inspection.transforms
