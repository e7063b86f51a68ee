"""Inference ports: what classifiers ask of a model, in PromptFence's own vocabulary.

Adapters (in-process transformers, a served vLLM model) implement these; a model's own labels
(``LABEL_1``, ``MALICIOUS``, ``"high"``) are mapped to :class:`~promptfence.core.Topic` scores
inside the adapter and nowhere else. This module imports nothing heavy, so detectors can be typed
against the ports without importing torch.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from promptfence.core import Span, Topic


@dataclass(frozen=True)
class TextClassification:
    """One text's scores in [0, 1] per topic, and where in the text the top score came from.

    ``span`` is the character range of the highest-scoring window when a long text was split
    into windows, or ``None`` when the whole text fitted in one.
    """

    scores: Mapping[Topic, float]
    span: Span | None = None
    windows: int = 1


class TextClassifier(Protocol):
    """A sequence classifier (e.g. Prompt Guard) that scores texts in batches."""

    @property
    def model_id(self) -> str: ...

    @property
    def topics(self) -> frozenset[Topic]: ...

    def classify(self, texts: Sequence[str]) -> list[TextClassification]: ...


@dataclass(frozen=True)
class TopicAssessment:
    """An LLM's view of one prompt: a score in [0, 1] for every topic, and the raw levels."""

    scores: Mapping[Topic, float]
    levels: Mapping[Topic, str] = field(default_factory=dict)
    # Company-defined topics (topic files) the model was asked about: name -> score / level.
    custom_scores: Mapping[str, float] = field(default_factory=dict)
    custom_levels: Mapping[str, str] = field(default_factory=dict)


class TopicLLM(Protocol):
    """A generative model asked for all topics at once, as schema-bound JSON."""

    @property
    def model_id(self) -> str: ...

    def assess(self, text: str) -> TopicAssessment: ...
