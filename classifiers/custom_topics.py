"""Custom topics: a company describes a topic in YAML and policies select it like a built-in one.

A topic file holds one topic::

    topic: PROJECT_FALCON            # upper case; a built-in name (CUSTOMER_DATA) gives that topic a detector
    description: Plans, dates and budget of Project Falcon, our unreleased drone platform.
    examples: ["Summarise the Falcon launch timeline for the board", ...]
    counter_examples: ["How do falcons hunt?", ...]
    source: written by the security team, 2026-11 (internal)   # where the examples come from

On the embedded default the :class:`NearestExemplarDetector` embeds the examples and
counter-examples once with the inspector's sentence encoder (MiniLM, or bge-m3 when configured)
and scores a prompt by its nearest exemplar: when that is an example and its similarity reaches
the topic's threshold, the topic is detected. The threshold is calibrated per topic from the
examples themselves, leave-one-out (each example's similarity to its nearest *other* example,
each counter-example's to its nearest example), so a tight topic gets a high bar and a loose one
a lower bar, without anyone picking numbers. ``promptfence topics test FILE`` reports the same
leave-one-out precision and recall, so an admin knows how well the examples describe the topic.

With the Llama classifier configured, the description and examples also go into its
schema-bound prompt (classifiers/llm_detector.py, inference/topic_llm.py).

This module's loading half (:func:`load_topic_files`) imports only YAML and the core types: the
proxy reads topic files to know which names policies may use. The detector imports numpy and
needs an :class:`~inference.embedder.Embedder` (the inspector's).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfence.core import CONFIDENCE_THRESHOLDS, Confidence, CustomFinding, Finding, Topic, is_custom_topic_name
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from inference.embedder import Embedder
    from inference.topic_llm import TopicPrompt

BUILTIN_TOPICS_DIR = Path(__file__).parent / "data" / "custom_topics"
DETECTOR_NAME = "custom_topics"
TOPIC_SUFFIXES = (".yaml", ".yml")
MIN_EXAMPLES = 3
MAX_EXAMPLES = 500
MAX_EXAMPLE_CHARS = 4000
MAX_DESCRIPTION_CHARS = 2000
_KEYS = ("topic", "description", "examples", "counter_examples", "source", "licence")

# Without counter-examples the bar sits this far below the loosest example's nearest neighbour,
# and never below FLOOR (unrelated MiniLM sentences are around 0.0-0.3 apart).
NO_COUNTER_MARGIN = 0.05
THRESHOLD_FLOOR = 0.35
# Similarity above the threshold that raises the score from "medium" to "high".
HIGH_ABOVE = 0.12


@dataclass(frozen=True)
class TopicDefinition:
    """One company topic as the admin wrote it. ``name`` is a built-in topic's value
    (``CUSTOMER_DATA``: examples for a built-in topic) or a custom topic name."""

    name: str
    description: str
    examples: tuple[str, ...]
    counter_examples: tuple[str, ...]
    source: str  # the file
    provenance: str = ""  # where the examples come from, and their licence

    @property
    def builtin(self) -> Topic | None:
        return Topic(self.name) if self.name in Topic.__members__ else None


def expand_topic_paths(files: Sequence[Path], *, builtin: bool = True) -> list[Path]:
    """The shipped sets (when ``builtin``) then the given files; a directory stands for its YAML files."""
    entries = ([BUILTIN_TOPICS_DIR] if builtin else []) + list(files)
    paths: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            paths.extend(sorted(p for p in entry.iterdir() if p.suffix in TOPIC_SUFFIXES))
        else:
            paths.append(entry)
    return paths


def _texts(node: YamlMap, key: str, *, minimum: int) -> tuple[str, ...]:
    value = node.get(key)
    if value is None:
        if minimum:
            raise node.error(None, key, f"required: at least {minimum} {key.replace('_', ' ')}")
        return ()
    if not isinstance(value, YamlList):
        raise node.error(key, key, "expected a list of prompts")
    items: list[str] = []
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise value.error(i, f"{key}[{i}]", "expected a non-empty string")
        if len(item) > MAX_EXAMPLE_CHARS:
            raise value.error(i, f"{key}[{i}]", f"longer than {MAX_EXAMPLE_CHARS} characters")
        items.append(item.strip())
    if len(items) < minimum:
        raise node.error(key, key, f"at least {minimum} {key.replace('_', ' ')} are needed to calibrate the topic")
    if len(items) > MAX_EXAMPLES:
        raise node.error(key, key, f"at most {MAX_EXAMPLES} {key.replace('_', ' ')}")
    return tuple(items)


def load_topic_file(path: Path) -> TopicDefinition:
    """Parse one topic file; an error names the file, line, column and field."""
    source = str(path)
    data = load_yaml_file(path)
    if not isinstance(data, YamlMap):
        raise ConfigError(
            "a topic file is a mapping with topic, description, examples and counter_examples",
            source=source,
            line=1,
            column=1,
            field="topic",
        )
    for key in data:
        if key not in _KEYS:
            raise data.error(key, str(key), f"unknown key (expected: {', '.join(_KEYS)})")
    name = data.get("topic")
    if not isinstance(name, str):
        raise data.error(
            "topic" if "topic" in data else None, "topic", "required: the topic's name (e.g. PROJECT_FALCON)"
        )
    if name not in Topic.__members__ and not is_custom_topic_name(name):
        raise data.error(
            "topic", "topic", "a topic name is 2-64 upper-case letters, digits or '_', starting with a letter"
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise data.error("description", "description", "expected a string")
    if len(description) > MAX_DESCRIPTION_CHARS:
        raise data.error("description", "description", f"longer than {MAX_DESCRIPTION_CHARS} characters")
    provenance = " ".join(str(data.get(k, "")) for k in ("source", "licence")).strip()
    return TopicDefinition(
        name=name,
        description=description.strip(),
        examples=_texts(data, "examples", minimum=MIN_EXAMPLES),
        counter_examples=_texts(data, "counter_examples", minimum=0),
        source=source,
        provenance=provenance,
    )


def load_topic_files(files: Sequence[Path], *, builtin: bool = True) -> list[TopicDefinition]:
    """Every topic file; a name defined twice is an error (the later file is named)."""
    topics: list[TopicDefinition] = []
    seen: dict[str, str] = {}
    for path in expand_topic_paths(files, builtin=builtin):
        topic = load_topic_file(path)
        if topic.name in seen:
            # A company file may replace a shipped set (its own CUSTOMER_DATA examples).
            if seen[topic.name].startswith(str(BUILTIN_TOPICS_DIR)):
                topics = [t for t in topics if t.name != topic.name]
            else:
                raise ConfigError(
                    f"topic {topic.name} is already defined in {seen[topic.name]}",
                    source=str(path),
                    line=1,
                    column=1,
                    field="topic",
                )
        seen[topic.name] = str(path)
        topics.append(topic)
    return topics


def custom_topic_names(topics: Sequence[TopicDefinition]) -> frozenset[str]:
    """The names policies may select beside the built-in topics."""
    return frozenset(t.name for t in topics if t.builtin is None)


# -- calibration and scoring -------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    threshold: float
    loo_positive: tuple[float, ...]  # each example's similarity to its nearest other example
    loo_negative: tuple[float, ...]  # each counter-example's similarity to its nearest example


def calibrate(positive: Sequence[float], negative: Sequence[float]) -> float:
    """The threshold that best separates the leave-one-out similarities: most examples above,
    fewest counter-examples at or above it (ties: midway between the two nearest values)."""
    if not positive:
        return 1.0
    if not negative:
        return max(THRESHOLD_FLOOR, min(positive) - NO_COUNTER_MARGIN)
    values = sorted(set(positive) | set(negative))
    best: tuple[int, float] | None = None
    for i, value in enumerate(values):
        below = values[i - 1] if i else value - NO_COUNTER_MARGIN
        cut = (value + below) / 2
        gain = sum(p >= cut for p in positive) - sum(n >= cut for n in negative)
        if best is None or gain > best[0]:
            best = (gain, cut)
    assert best is not None
    return max(THRESHOLD_FLOOR, best[1])


def score_of(similarity: float, threshold: float, counter_similarity: float) -> float:
    """A similarity as a topic score: at the threshold "medium", ``HIGH_ABOVE`` above it "high";
    below it "low" fading to nothing; capped under "low" when a counter-example is nearer."""
    medium, high = CONFIDENCE_THRESHOLDS[Confidence.MEDIUM], CONFIDENCE_THRESHOLDS[Confidence.HIGH]
    # A logistic curve through (threshold, medium) and (threshold + HIGH_ABOVE, high).
    lo, hi = math.log(medium / (1 - medium)), math.log(high / (1 - high))
    slope = (hi - lo) / HIGH_ABOVE
    z = lo + slope * (similarity - threshold)
    score = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
    if counter_similarity >= similarity:
        score = min(score, CONFIDENCE_THRESHOLDS[Confidence.LOW] * 0.5)
    return score


class _Index:
    """One topic's exemplar vectors and its calibration."""

    def __init__(
        self, topic: TopicDefinition, examples: npt.NDArray[np.float32], counters: npt.NDArray[np.float32]
    ) -> None:
        import numpy as np

        self.topic = topic
        self.examples = examples
        self.counters = counters
        sims = examples @ examples.T
        np.fill_diagonal(sims, -1.0)
        positive = tuple(float(v) for v in sims.max(axis=1)) if len(examples) > 1 else ()
        negative = tuple(float(v) for v in (counters @ examples.T).max(axis=1)) if len(counters) else ()
        self.calibration = Calibration(calibrate(positive, negative), positive, negative)

    def nearest(self, vectors: npt.NDArray[np.float32]) -> tuple[float, int, float]:
        """(best example similarity, its index, best counter-example similarity) over the windows."""
        sims = vectors @ self.examples.T
        flat = int(sims.argmax())
        best = float(sims.flat[flat])
        index = flat % self.examples.shape[0]
        counter = float((vectors @ self.counters.T).max()) if len(self.counters) else -1.0
        return best, index, counter


class NearestExemplarDetector:
    """Custom topics on the embedded default: nearest exemplar, calibrated per topic."""

    name = DETECTOR_NAME
    version = "1"

    def __init__(self, topics: Sequence[TopicDefinition], embedder: Embedder) -> None:
        if not topics:
            raise ValueError("no topics to detect")
        self.embedder = embedder
        self.topics = tuple(topics)
        self._indexes = [self._index(t) for t in self.topics]
        # The engine keeps findings only for the built-in topics a detector may speak for.
        self.topic_weights: Mapping[Topic, float] = {t.builtin: 1.0 for t in self.topics if t.builtin is not None}

    def _index(self, topic: TopicDefinition) -> _Index:
        texts = [*topic.examples, *topic.counter_examples]
        vectors = self.embedder.embed(texts)
        n = len(topic.examples)
        return _Index(topic, vectors[:n], vectors[n:])

    @property
    def thresholds(self) -> dict[str, float]:
        return {index.topic.name: index.calibration.threshold for index in self._indexes}

    def detect(self, text: str) -> Sequence[Finding]:
        """Built-in topics' findings only (the Detector protocol); the engine calls
        :meth:`detect_with_notes`, which also returns the custom topics' evidence."""
        return [f for f in self.evidence(text) if isinstance(f, Finding)]

    def detect_with_notes(self, text: str) -> tuple[Sequence[Finding | CustomFinding], tuple[str, ...]]:
        return self.evidence(text), ()

    def evidence(self, text: str) -> Sequence[Finding | CustomFinding]:
        if not text.strip():
            return ()
        vectors = self.embedder.embed_windows(text)
        if len(vectors) == 0:
            return ()
        out: list[Finding | CustomFinding] = []
        for index in self._indexes:
            out.extend(self._evidence(index, vectors))
        return out

    def _evidence(self, index: _Index, vectors: Any) -> list[Finding | CustomFinding]:
        best, nearest, counter = index.nearest(vectors)
        threshold = index.calibration.threshold
        score = score_of(best, threshold, counter)
        if score < CONFIDENCE_THRESHOLDS[Confidence.LOW] * 0.5:
            return []
        why = (
            f"nearest example {nearest + 1} of {index.topic.name} (similarity {best:.2f}, threshold {threshold:.2f}"
            + (f", nearest counter-example {counter:.2f})" if counter > -1.0 else ")")
        )
        builtin = index.topic.builtin
        if builtin is not None:
            return [Finding(self.name, f"custom.{index.topic.name}", builtin, score, None, why)]
        return [CustomFinding(self.name, index.topic.name, score, why)]


# -- leave-one-out evaluation (``promptfence topics test``) ------------------------------------


@dataclass(frozen=True)
class TopicReport:
    name: str
    threshold: float
    examples: int
    counter_examples: int
    true_positives: int
    false_positives: int
    false_negatives: int
    missed: tuple[int, ...]  # 1-based example numbers not detected when left out
    false_alarms: tuple[int, ...]  # 1-based counter-example numbers detected when left out

    @property
    def precision(self) -> float:
        found = self.true_positives + self.false_positives
        return self.true_positives / found if found else 0.0

    @property
    def recall(self) -> float:
        return self.true_positives / self.examples if self.examples else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.name,
            "threshold": round(self.threshold, 4),
            "examples": self.examples,
            "counter_examples": self.counter_examples,
            "precision": round(self.precision, 4),
            "recall": round(self.recall, 4),
            "missed_examples": list(self.missed),
            "false_alarms": list(self.false_alarms),
        }


def leave_one_out(topic: TopicDefinition, embedder: Embedder, minimum: Confidence = Confidence.MEDIUM) -> TopicReport:
    """Each example and counter-example scored by a detector calibrated without it: the
    precision and recall a new prompt like it can expect. A prompt counts as detected at
    ``minimum`` confidence (what a ``{TOPIC: medium}`` rule selects)."""
    import numpy as np

    texts = [*topic.examples, *topic.counter_examples]
    vectors = embedder.embed(texts)
    n = len(topic.examples)
    examples, counters = vectors[:n], vectors[n:]
    cut = CONFIDENCE_THRESHOLDS[minimum]
    missed: list[int] = []
    false_alarms: list[int] = []
    for i in range(len(texts)):
        if i < n:
            keep_e = np.delete(examples, i, axis=0)
            index = _Index(topic, keep_e, counters)
        else:
            index = _Index(topic, examples, np.delete(counters, i - n, axis=0))
        best, _nearest, counter = index.nearest(vectors[i : i + 1])
        detected = score_of(best, index.calibration.threshold, counter) >= cut
        if i < n and not detected:
            missed.append(i + 1)
        if i >= n and detected:
            false_alarms.append(i - n + 1)
    full = _Index(topic, examples, counters)
    return TopicReport(
        name=topic.name,
        threshold=full.calibration.threshold,
        examples=n,
        counter_examples=len(counters),
        true_positives=n - len(missed),
        false_positives=len(false_alarms),
        false_negatives=len(missed),
        missed=tuple(missed),
        false_alarms=tuple(false_alarms),
    )


def build_custom_topic_detector(
    files: Sequence[Path], builtin: bool, embedder: Embedder
) -> NearestExemplarDetector | None:
    topics = load_topic_files(files, builtin=builtin)
    return NearestExemplarDetector(topics, embedder) if topics else None


def topic_prompts(topics: Sequence[TopicDefinition]) -> tuple[TopicPrompt, ...]:
    """The topic files as the Llama classifier's prompt takes them (inference/topic_llm.py)."""
    from inference.topic_llm import TopicPrompt

    return tuple(TopicPrompt(t.name, t.description, t.examples, t.counter_examples) for t in topics)


def configured_topic_names(files: Sequence[Path], builtin: bool) -> frozenset[str]:
    """The custom topic names the configuration's topic files declare (for policy loading)."""
    return custom_topic_names(load_topic_files(files, builtin=builtin))
