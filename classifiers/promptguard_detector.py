"""The ``promptguard`` detector: Prompt Guard 2's malicious probability as JAILBREAK evidence.

The model runs through a :class:`~inference.ports.TextClassifier` (in production the
transformers adapter in :mod:`inference.prompt_guard`), which already speaks in topics; this
detector only applies the reporting threshold and words the finding. Building it imports torch,
so the builder imports the adapter lazily and only when ``inspector.prompt_guard.path`` is set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from inference.ports import TextClassifier
from promptfence.core import Finding, Span, Topic
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from promptfence.config import PromptGuardConfig

NAME = "promptguard"
KIND_PREFIX = "promptguard."


class PromptGuardDetector:
    """Reports each topic the classifier scores at or above ``threshold``.

    The finding's score is the model's probability itself (not rescaled), so the engine's
    confidence levels read it directly: with the default threshold 0.5 a finding is at least
    LOW, and MEDIUM / HIGH from 0.6 / 0.85 on.
    """

    name = NAME

    def __init__(self, classifier: TextClassifier, *, threshold: float = 0.5) -> None:
        if not 0.0 <= threshold <= 1.0:
            raise ConfigError("threshold must be between 0 and 1", field="inspector.prompt_guard.threshold")
        self.classifier = classifier
        self.threshold = threshold
        self.version = f"{classifier.model_id} (threshold {threshold:g})"

    def detect(self, text: str) -> Sequence[Finding]:
        if not text.strip():
            return ()
        (result,) = self.classifier.classify([text])
        return self._findings(result.scores, result.span, result.windows)

    def detect_many(self, texts: Sequence[str]) -> list[Sequence[Finding]]:
        """Batch entry point for evaluation and benchmarks: one batched model call for all texts."""
        results = self.classifier.classify(list(texts))
        return [
            self._findings(r.scores, r.span, r.windows) if t.strip() else ()
            for t, r in zip(texts, results, strict=True)
        ]

    def _findings(self, scores: Mapping[Topic, float], span: Span | None, windows: int) -> Sequence[Finding]:
        findings = []
        for topic, score in sorted(scores.items()):
            if score < self.threshold:
                continue
            where = f" (best of {windows} windows)" if windows > 1 else ""
            findings.append(
                Finding(
                    detector=NAME,
                    kind=f"{KIND_PREFIX}{topic.value}",
                    topic=topic,
                    score=float(score),
                    span=span,
                    explanation=f"{self.classifier.model_id} malicious probability {score:.2f}{where}",
                )
            )
        return tuple(findings)


def build_promptguard_detector(config: PromptGuardConfig) -> PromptGuardDetector | None:
    """The detector for ``inspector.prompt_guard``, or ``None`` when no ``path`` is configured.

    Loads the model now (seconds; call once per inspector process). A configured path that is
    missing raises :class:`inference.errors.ModelNotFoundError` naming it.
    """
    if config.path is None:
        return None
    from inference.prompt_guard import PromptGuardSettings, TransformersSequenceClassifier

    classifier = TransformersSequenceClassifier(
        PromptGuardSettings(
            path=config.path,
            device=config.device,
            dtype=config.dtype,
            batch_size=config.batch_size,
            max_length=config.max_length,
            window_overlap=config.window_overlap,
            malicious_label=config.malicious_label,
        )
    )
    return PromptGuardDetector(classifier, threshold=config.threshold)
