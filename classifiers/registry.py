"""Which detectors an inspector runs, built once from the configuration.

Embedded defaults (no GPU, no download): Presidio, secrets, source code, the MiniLM intent
head with its multilingual sibling (USE-multilingual-v3, for prompts not in English), and the neighbour memory (same MiniLM instance, SQLite under data_dir; ``memory.enabled``). Prompt Guard and the Llama classifier join only when configured; a configured model that
cannot be loaded is a start-up error, never a silent downgrade.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from promptfence.config import Config, InspectorConfig, MemoryConfig, TopicsConfig
from promptfence.core import Detector

if TYPE_CHECKING:
    from inference.topic_llm import TopicPrompt


def build_detectors(config: Config) -> list[Detector]:
    from classifiers.code_detector import CodeDetector
    from classifiers.presidio_detector import PresidioDetector
    from classifiers.secrets_detector import SecretsDetector

    detectors: list[Detector] = [
        PresidioDetector(spacy_model=config.inspector.presidio_spacy_model),
        CodeDetector(),
    ]
    detectors.append(SecretsDetector())
    embedder = None
    wants_topics = config.topics.builtin or bool(config.topics.files)
    if config.inspector.intent_detector or config.memory.enabled or wants_topics:
        from inference.factory import build_embedder

        # One encoder for both (ONNX or torch, inspector.embedder.backend), shared and batched:
        # a text the intent head and the memory both embed costs one forward pass (issue 17).
        embedder = build_embedder(config.inspector.embedder, config.data_dir)
    if config.inspector.intent_detector and embedder is not None:
        from classifiers.intent_detector import IntentDetector

        detectors.append(IntentDetector(embedder))
        # Non-English prompts (issue 15): USE-multilingual-v3 from its wheel, numpy only.
        from classifiers.multilingual_intent_detector import MultilingualIntentDetector
        from inference.use_embedder import UseEmbedder

        detectors.append(MultilingualIntentDetector(UseEmbedder()))
    from classifiers.llm_detector import build_llm_detector
    from classifiers.promptguard_detector import build_promptguard_detector

    prompts: tuple[TopicPrompt, ...] = ()
    if wants_topics and config.inspector.llm.url is not None:
        from classifiers.custom_topics import load_topic_files, topic_prompts

        prompts = topic_prompts(load_topic_files(config.topics.files, builtin=config.topics.builtin))
    for optional in (
        build_promptguard_detector(config.inspector.prompt_guard),
        build_llm_detector(config.inspector.llm, topics=prompts),
    ):
        if optional is not None:
            detectors.append(optional)
    if wants_topics and embedder is not None:
        from classifiers.custom_topics import build_custom_topic_detector

        custom = build_custom_topic_detector(config.topics.files, config.topics.builtin, embedder)
        if custom is not None:
            detectors.append(custom)
    if config.memory.enabled and embedder is not None:
        from classifiers.neighbour_detector import build_neighbour_detector

        detectors.append(build_neighbour_detector(config, embedder))
    return detectors


def detector_deadlines(config: Config) -> dict[str, float]:
    """Per-detector deadlines where a detector's own budget differs from the default."""
    from classifiers.llm_detector import llm_deadline_s

    deadlines = {"llm": llm_deadline_s(config.inspector.llm)}
    if config.inspector.prompt_guard.timeout_s is not None:
        deadlines["promptguard"] = config.inspector.prompt_guard.timeout_s
    return deadlines


def expected_detector_names(
    inspector: InspectorConfig, memory: MemoryConfig, topics: TopicsConfig | None = None
) -> tuple[str, ...]:
    """The names :func:`build_detectors` gives the detectors it builds for this configuration,
    in the order the engine reports their runs.

    The proxy calls it (it imports no detector module, so nothing heavy) to know which runs a
    complete answer from the inspector has. It follows build_detectors' conditions one for one;
    tests/test_inspector_answers.py builds the detectors for each combination and compares.
    With ``topics`` None the custom-topic detector is not expected (a caller that does not pass
    the topic configuration cannot know whether the inspector loads topic files).
    """
    names = ["presidio", "code", "secrets"]
    if inspector.intent_detector:
        names.extend(("intent", "intent_multilingual"))
    if inspector.prompt_guard.path is not None:
        names.append("promptguard")
    if inspector.llm.url is not None:
        names.append("llm")
    if topics is not None and (topics.builtin or topics.files):
        names.append("custom_topics")
    if memory.enabled:
        names.append("neighbours")
    return tuple(names)
