"""The ``llm`` detector: an LLM's schema-bound view of all eight topics, as findings.

The model is reached through the :class:`~inference.ports.TopicLLM` port (in production
:class:`inference.topic_llm.VLLMTopicClassifier`), which returns a score per topic; this detector
turns every topic scored above zero into a finding of kind ``llm.<TOPIC>``. It is the detector
that covers what pattern rules cannot (CUSTOMER_DATA, FINANCIAL, MALICIOUS_CODE, PII_REQUEST), and
it reports the others too, so that the engine's noisy-or can combine it with the rule-based
evidence. A reply outside the schema, a timeout or a server error propagates as an
:class:`inference.errors.InferenceError`, which the engine records with its own status
(``invalid_output``, ``timeout``, ``unavailable``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from inference.ports import TopicLLM
from promptfence.core import CustomFinding, Finding, Topic
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from inference.topic_llm import TopicPrompt
    from promptfence.config import LLMConfig

NAME = "llm"
KIND_PREFIX = "llm."
# How much longer than the HTTP timeout the engine waits before it records a deadline miss.
DEADLINE_MARGIN_S = 0.5


class LLMTopicDetector:
    name = NAME

    def __init__(self, llm: TopicLLM, *, min_score: float = 0.0) -> None:
        self.llm = llm
        self.min_score = min_score
        self.version = llm.model_id

    def detect(self, text: str) -> Sequence[Finding]:
        return [f for f in self._evidence(text) if isinstance(f, Finding)]

    def detect_with_notes(self, text: str) -> tuple[Sequence[Finding | CustomFinding], tuple[str, ...]]:
        """What the engine calls: built-in findings and, with topic files configured, the
        custom topics' evidence (``CustomFinding``, kept apart from the built-in topics)."""
        return self._evidence(text), ()

    def _evidence(self, text: str) -> Sequence[Finding | CustomFinding]:
        if not text.strip():
            return ()
        assessment = self.llm.assess(text)
        findings: list[Finding | CustomFinding] = []
        for topic in Topic:
            score = assessment.scores.get(topic, 0.0)
            if score <= self.min_score:
                continue
            level = assessment.levels.get(topic)
            rated = f"rated {level}" if level else f"scored {score:.2f}"
            findings.append(
                Finding(
                    detector=NAME,
                    kind=f"{KIND_PREFIX}{topic.value}",
                    topic=topic,
                    score=score,
                    span=None,
                    explanation=f"LLM topic classifier ({self.llm.model_id}) {rated}",
                )
            )
        for name, score in assessment.custom_scores.items():
            if score > self.min_score:
                level = assessment.custom_levels.get(name)
                rated = f"rated {level}" if level else f"scored {score:.2f}"
                findings.append(CustomFinding(NAME, name, score, f"LLM topic classifier ({self.llm.model_id}) {rated}"))
        return tuple(findings)


def llm_deadline_s(config: LLMConfig) -> float:
    """The engine deadline to give the ``llm`` detector: its HTTP timeout plus a margin."""
    return config.timeout_s + DEADLINE_MARGIN_S


def build_llm_detector(
    config: LLMConfig, *, environ: Mapping[str, str] | None = None, topics: Sequence[TopicPrompt] = ()
) -> LLMTopicDetector | None:
    """The detector for ``inspector.llm``, or ``None`` when no ``url`` is configured.

    Contacts nothing at build time (the inspector may start before the vLLM server); an
    unreachable server shows up per inspection as an ``unavailable`` detector run. ``topics``
    (from topic files) put their descriptions and examples into the prompt.
    """
    if config.url is None:
        return None
    from inference.topic_llm import VLLMSettings, VLLMTopicClassifier

    if not config.url.startswith(("http://", "https://")):
        raise ConfigError("expected an http:// or https:// URL", field="inspector.llm.url")
    if not config.model:
        raise ConfigError(
            "the served model name is required when inspector.llm.url is set", field="inspector.llm.model"
        )
    if config.timeout_s <= 0:
        raise ConfigError("expected a positive number of seconds", field="inspector.llm.timeout_s")
    if config.max_tokens < 64:
        raise ConfigError("at least 64 tokens are needed for the eight-topic answer", field="inspector.llm.max_tokens")
    api_key: str | None = None
    if config.api_key_env:
        env = os.environ if environ is None else environ
        api_key = env.get(config.api_key_env)
        if not api_key:
            raise ConfigError(
                f"environment variable {config.api_key_env} is not set", field="inspector.llm.api_key_env"
            )
    classifier = VLLMTopicClassifier(
        VLLMSettings(
            url=config.url,
            model=config.model,
            timeout_s=config.timeout_s,
            api_key=api_key,
            max_tokens=config.max_tokens,
            max_prompt_chars=config.max_prompt_chars,
            topics=tuple(topics),
        )
    )
    return LLMTopicDetector(classifier)
