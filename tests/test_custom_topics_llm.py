"""Custom topics with the Llama classifier: description and examples in the schema-bound prompt.

A stand-in vLLM server (tests/test_topic_llm.py's) reads the request: the custom topic's name must
be a required key of the JSON Schema, its description and examples must be in the system
message (never inside the prompt's fence), and its answer becomes custom-topic evidence."""

from __future__ import annotations

import json
from typing import Any

import pytest

from classifiers.engine import InspectionEngine
from classifiers.llm_detector import LLMTopicDetector
from inference.errors import InvalidModelOutput
from inference.topic_llm import TopicPrompt, VLLMSettings, VLLMTopicClassifier, parse_topic_json, topic_schema
from promptfence.core import Confidence, DetectorStatus, Topic
from tests.test_topic_llm import ALL_NONE, Behaviour, FakeVLLM, fenced_prompt, server  # noqa: F401

FALCON = TopicPrompt(
    "PROJECT_FALCON",
    "Plans and budget of Project Falcon, our unreleased drone.",
    ("Summarise the Falcon launch timeline", "What is the Falcon drone budget?"),
    ("How fast does a falcon dive?",),
)
CUSTOMER = TopicPrompt("CUSTOMER_DATA", "", ("Rank these CRM accounts by renewal risk",), ())


def falcon_model(body: dict[str, Any], _auth: str) -> Behaviour:
    text, _ = fenced_prompt(body)
    answer = {**ALL_NONE, "PROJECT_FALCON": "high" if "Falcon" in text else "none"}
    return Behaviour(json.dumps(answer))


def test_the_schema_and_system_message_carry_the_topic_files() -> None:
    schema = topic_schema([FALCON, CUSTOMER])
    assert "PROJECT_FALCON" in schema["required"] and schema["required"].count("CUSTOMER_DATA") == 1
    body = VLLMTopicClassifier(VLLMSettings(url="http://x", model="m", topics=(FALCON, CUSTOMER))).build_request(
        "hello", "0123456789abcdef"
    )
    system = body["messages"][0]["content"]
    assert "- PROJECT_FALCON: Plans and budget of Project Falcon" in system
    assert '"Summarise the Falcon launch timeline"' in system and "Not this topic" in system
    assert "Rank these CRM accounts by renewal risk" in system  # a built-in topic's examples
    assert "PROJECT_FALCON" not in body["messages"][1]["content"]  # the fence holds the prompt only
    assert body["response_format"]["json_schema"]["schema"] == schema


def test_a_reply_without_the_custom_key_is_out_of_schema() -> None:
    with pytest.raises(InvalidModelOutput, match="lacks field"):
        parse_topic_json(json.dumps(ALL_NONE), ["PROJECT_FALCON"])
    with pytest.raises(InvalidModelOutput, match="PROJECT_FALCON"):
        parse_topic_json(json.dumps({**ALL_NONE, "PROJECT_FALCON": "very"}), ["PROJECT_FALCON"])
    ok = parse_topic_json(json.dumps({**ALL_NONE, "PROJECT_FALCON": "medium"}), ["PROJECT_FALCON"])
    assert ok.custom_levels == {"PROJECT_FALCON": "medium"} and Topic.PII in ok.scores


async def test_the_llm_answer_becomes_custom_topic_evidence(server: tuple[FakeVLLM, str]) -> None:  # noqa: F811
    fake, url = server
    fake.reply = falcon_model
    client = VLLMTopicClassifier(VLLMSettings(url=url, model="tiny-llama", topics=(FALCON,)))
    engine = InspectionEngine([LLMTopicDetector(client)], deadline_s=10)
    try:
        hit = await engine.inspect("Turn the Falcon budget into a slide")
        miss = await engine.inspect("A poem about autumn")
    finally:
        engine.close()
    assert hit.custom_confidence("PROJECT_FALCON") is Confidence.HIGH
    assert [f.detector for f in hit.custom_findings] == ["llm"]
    assert miss.custom_topics == {} and miss.runs[0].status is DetectorStatus.OK
