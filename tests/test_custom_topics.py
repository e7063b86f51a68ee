"""Custom topics on the embedded default: topic files, calibration, the detector, the engine.

The detector runs on the real shipped MiniLM encoder (loaded once for the module)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from classifiers.custom_topics import (
    BUILTIN_TOPICS_DIR,
    NearestExemplarDetector,
    TopicDefinition,
    calibrate,
    custom_topic_names,
    leave_one_out,
    load_topic_file,
    load_topic_files,
    score_of,
)
from classifiers.engine import InspectionEngine
from inference.embedder import EmbedderSpec, SentenceTransformerEmbedder, default_minilm_path
from promptfence.core import Confidence, CustomFinding, Finding, Topic
from promptfence.errors import ConfigError

FALCON = TopicDefinition(
    name="PROJECT_FALCON",
    description="Project Falcon, our unreleased delivery drone.",
    examples=(
        "Summarise the Project Falcon launch timeline for the board meeting.",
        "What is the remaining budget for the Falcon drone programme this quarter?",
        "Draft a supplier email about the Falcon drone battery delivery delay.",
        "List the open risks in the Project Falcon flight certification plan.",
        "Which factories are shortlisted to build the Falcon delivery drone airframe?",
    ),
    counter_examples=(
        "How fast can a peregrine falcon dive?",
        "Write a poem about a falcon over the mountains.",
        "Explain how quadcopter drones keep their balance.",
    ),
    source="test",
)


@pytest.fixture(scope="module")
def embedder() -> Iterator[SentenceTransformerEmbedder]:
    yield SentenceTransformerEmbedder(EmbedderSpec(default_minilm_path()))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "topic.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "field", "line", "message"),
    [
        ("topic: falcon\nexamples: [a, b, c]\n", "topic", 1, "upper-case"),
        ("topic: PII_X\nexamples: [a, b]\n", "examples", 2, "at least 3"),
        ("topic: PII_X\nexamples: [a, b, '']\n", "examples[2]", 2, "non-empty string"),
        ("topic: PII_X\nexamples: [a, b, c]\ncounter: [d]\n", "counter", 3, "unknown key"),
        ("topic: PII_X\nexamples: text\n", "examples", 2, "expected a list"),
        ("examples: [a, b, c]\n", "topic", 1, "required"),
    ],
)
def test_a_broken_topic_file_names_file_line_and_field(
    tmp_path: Path, text: str, field: str, line: int, message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_topic_file(path)
    assert err.value.source == str(path) and err.value.field == field and err.value.line == line
    assert message in str(err.value)


def test_the_shipped_customer_data_set_loads_with_its_source_and_a_company_file_replaces_it(tmp_path: Path) -> None:
    shipped = load_topic_files([])
    assert [t.name for t in shipped] == ["CUSTOMER_DATA"] and shipped[0].builtin is Topic.CUSTOMER_DATA
    assert "CC0" in shipped[0].provenance and len(shipped[0].examples) >= 10
    assert custom_topic_names(shipped) == frozenset()  # a built-in topic is no custom name
    own = _write(tmp_path, "topic: CUSTOMER_DATA\nexamples: [a one, b two, c three]\n")
    replaced = load_topic_files([own])
    assert len(replaced) == 1 and replaced[0].source == str(own)
    assert load_topic_files([], builtin=False) == []
    assert (BUILTIN_TOPICS_DIR / "customer_data.yaml").is_file()


def test_two_company_files_for_one_topic_are_an_error(tmp_path: Path) -> None:
    for name in ("a.yaml", "b.yaml"):
        (tmp_path / name).write_text("topic: FALCON\nexamples: [a one, b two, c three]\n")
    with pytest.raises(ConfigError, match="already defined"):
        load_topic_files([tmp_path], builtin=False)


def test_calibration_separates_the_leave_one_out_similarities() -> None:
    assert calibrate([0.8, 0.7, 0.75], [0.3, 0.4]) == pytest.approx(0.55)
    assert calibrate([0.8, 0.7], []) == pytest.approx(0.65)  # no counter-examples: just under the loosest
    assert calibrate([0.2, 0.25], []) == 0.35  # never below the floor
    assert Confidence.of(score_of(0.55, 0.55, 0.0)) is Confidence.MEDIUM
    assert Confidence.of(score_of(0.55 + 0.12, 0.55, 0.0)) is Confidence.HIGH
    assert Confidence.of(score_of(0.9, 0.55, 0.95)) < Confidence.LOW  # a nearer counter-example wins


def test_the_detector_finds_its_examples_and_not_its_counter_examples(embedder: SentenceTransformerEmbedder) -> None:
    detector = NearestExemplarDetector([FALCON], embedder)
    for example in FALCON.examples:
        (found,) = detector.evidence(example)
        assert isinstance(found, CustomFinding) and found.name == "PROJECT_FALCON"
        assert Confidence.of(found.score) is Confidence.HIGH
        assert example not in found.explanation  # evidence names the example's number, never text
    for counter in FALCON.counter_examples:
        assert all(Confidence.of(f.score) < Confidence.LOW for f in detector.evidence(counter))
    assert detector.detect(FALCON.examples[0]) == []  # Detector.detect: built-in topics only


def test_the_engine_reports_custom_topics_apart_and_built_in_examples_as_findings(
    embedder: SentenceTransformerEmbedder,
) -> None:
    customer = load_topic_files([])[0]
    engine = InspectionEngine([NearestExemplarDetector([FALCON, customer], embedder)], deadline_s=30)
    try:
        falcon = asyncio.run(engine.inspect(FALCON.examples[1]))
        crm = asyncio.run(engine.inspect(customer.examples[0]))
    finally:
        engine.close()
    assert falcon.custom_confidence("PROJECT_FALCON") is Confidence.HIGH
    assert falcon.custom_findings and falcon.custom_findings[0].detector == "custom_topics"
    assert crm.confidence(Topic.CUSTOMER_DATA) is Confidence.HIGH
    assert any(isinstance(f, Finding) and f.kind == "custom.CUSTOMER_DATA" for f in crm.findings)
    assert Topic.CUSTOMER_DATA not in crm.uncovered
    assert "custom_topics" in crm.detectors_run


def test_leave_one_out_reports_precision_and_recall(embedder: SentenceTransformerEmbedder) -> None:
    report = leave_one_out(FALCON, embedder)
    assert report.examples == 5 and report.counter_examples == 3
    assert report.true_positives + report.false_negatives == 5
    assert report.recall == report.true_positives / 5
    assert report.recall >= 0.6 and report.precision >= 0.6
    # An example scored against a set that still holds it would be trivially found; left out,
    # a lone off-topic "example" is missed: the measure is honest.
    odd = TopicDefinition("PROJECT_FALCON", "", (*FALCON.examples, "Bake a chocolate cake for twelve."), (), "t")
    assert 6 in leave_one_out(odd, embedder).missed


def test_topics_test_reports_per_topic_and_fails_below_target(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import json

    import yaml

    from promptfence.cli import main

    path = tmp_path / "falcon.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "topic": FALCON.name,
                "description": FALCON.description,
                "examples": list(FALCON.examples),
                "counter_examples": list(FALCON.counter_examples),
            }
        )
    )
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path / 'home'}\n")
    assert main(["topics", "test", str(path), "--json", "--config", str(config)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["topic"] == "PROJECT_FALCON" and report["examples"] == 5 and report["ok"] is True
    assert 0.0 <= report["precision"] <= 1.0 and report["file"] == str(path)
    assert main(["topics", "test", str(path), "--min-recall", "1.01", "--config", str(config)]) == 1
    table = capsys.readouterr().out
    assert "PROJECT_FALCON" in table and "BELOW TARGET" in table
    for example in FALCON.examples:
        assert example not in table  # numbers, never the examples' text
    broken = tmp_path / "broken.yaml"
    broken.write_text("topic: falcon\n")
    assert main(["topics", "test", str(broken), "--config", str(config)]) == 2
    assert "topic" in capsys.readouterr().err
