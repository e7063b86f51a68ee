"""Tests for classifiers.presidio_detector: Presidio's pattern recognizers, offline, scored per entity.

Every prompt here is made up for the test. The detector is built once per module (the first
build imports Presidio, which is slow); tests that must watch a build happen build their own.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import spacy

from classifiers.presidio_detector import (
    ENTITY_RULES,
    EntityRule,
    PresidioDetector,
    SpacyModelUnavailableError,
    pii_topic_score,
)
from promptfence.core import Confidence, Detector, Finding, Span, Topic


@pytest.fixture(scope="module")
def detector() -> PresidioDetector:
    return PresidioDetector()


def confidence(detector: PresidioDetector, text: str) -> Confidence:
    return Confidence.of(pii_topic_score(detector.detect(text)))


def kinds(findings: Iterable[Finding]) -> set[str]:
    return {f.kind for f in findings}


# --- identity and registry -----------------------------------------------------------------


def test_is_a_detector(detector: PresidioDetector) -> None:
    as_protocol: Detector = detector
    assert as_protocol.name == "presidio"
    assert detector.version.startswith("presidio-analyzer 2.")


REQUIRED_ENTITIES = {
    "EMAIL_ADDRESS",
    "US_SSN",
    "CREDIT_CARD",
    "PHONE_NUMBER",
    "IBAN_CODE",
    "US_PASSPORT",
    "US_BANK_NUMBER",
    "IP_ADDRESS",
    "US_ITIN",
    "UK_NHS",
    "STREET_ADDRESS",
}


def test_registry_holds_the_pii_pattern_recognizers_only(detector: PresidioDetector) -> None:
    entities = set(detector.entities)
    assert entities >= REQUIRED_ENTITIES
    # Presidio's defaults that flag ordinary prompts stay out; NER needs a configured model.
    assert not entities & {"DATE_TIME", "PERSON", "LOCATION", "NRP", "ORGANIZATION", "URL"}
    assert entities <= set(ENTITY_RULES)


def test_every_rule_is_a_valid_weighting() -> None:
    for entity, rule in ENTITY_RULES.items():
        assert 0.0 < rule.weight <= 1.0, entity
        assert 0.0 <= rule.min_score <= 1.0, entity


# --- confidence on whole prompts -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at_least"),
    [
        ("My email is jane.doe@example.com and my SSN is 123-45-6789", Confidence.MEDIUM),
        (
            "Our customer's home address is 1234 Abc Avenue, Springfield... this is not PII",
            Confidence.MEDIUM,
        ),
        ("Contact me at maria.lopez@gmail.com", Confidence.MEDIUM),
        ("Charge it to my Visa 4111 1111 1111 1111", Confidence.HIGH),
        ("My SSN is 219-09-9999", Confidence.HIGH),
        ("Please wire it to IBAN GB82 WEST 1234 5698 7654 32", Confidence.MEDIUM),
        ("My passport number is 912803456", Confidence.MEDIUM),
        ("NHS number 943 476 5919", Confidence.MEDIUM),
        ("She was born on 7/5/1981", Confidence.MEDIUM),
        ("My mobile phone is (415) 555-2671", Confidence.MEDIUM),
        ("Call me on +1 415 555 2671.", Confidence.MEDIUM),
        ("Ship it to 42 Elm St. Apt 5 and text +1 415 555 2671 on arrival", Confidence.MEDIUM),
    ],
)
def test_pii_prompts_reach_their_confidence(detector: PresidioDetector, text: str, at_least: Confidence) -> None:
    assert confidence(detector, text) >= at_least


@pytest.mark.parametrize(
    "text",
    [
        "What is 2+2?",
        "Write a haiku about autumn",
        "Explain TCP slow start",
        "The meeting is at 10:30 on 2024-05-01 in room 12",
        "Version 2.0.1 was released on 2024-05-01",
        "Refactor this function to use a list comprehension",
        "The server listens on 127.0.0.1:8080",
        "Chapter 3 The Long Road",
        "Take 2 steps on the way",
        "Order 123456789 shipped in 3 boxes",
        "postgres://admin:s3cret@db.internal.company.com/app",
        "Boston, MA 02110-1301",
    ],
)
def test_benign_prompts_stay_below_low(detector: PresidioDetector, text: str) -> None:
    assert confidence(detector, text) is Confidence.NONE


@pytest.mark.parametrize(
    "text",
    [
        "Reach the desk on +1 415 555 2671.",  # a phone number without a context word
        "Requests came from 8.8.8.8 yesterday",  # a public IP address
        "42 Elm St. Apt 5",  # a street address alone
        "123 Main Street, Anytown, USA",
        "Ref 219-09-9999 attached",  # SSN-shaped, nothing says it is one
        "Send the report to info@example.com",  # a reserved example domain
    ],
)
def test_weak_evidence_alone_is_low(detector: PresidioDetector, text: str) -> None:
    assert confidence(detector, text) is Confidence.LOW


# --- what each recognizer finds, and where ----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "value"),
    [
        ("Contact me at maria.lopez@gmail.com today", "pii.EMAIL_ADDRESS", "maria.lopez@gmail.com"),
        ("mailto:jane@company.org", "pii.EMAIL_ADDRESS", "jane@company.org"),
        ("My SSN is 123-45-6789, thanks", "pii.US_SSN", "123-45-6789"),
        ("my ssn 219099999", "pii.US_SSN", "219099999"),
        ("Charge it to my Visa 4111 1111 1111 1111", "pii.CREDIT_CARD", "4111 1111 1111 1111"),
        ("Call me on +1 415 555 2671.", "pii.PHONE_NUMBER", "+1 415 555 2671"),
        ("IBAN GB82 WEST 1234 5698 7654 32 please", "pii.IBAN_CODE", "GB82 WEST 1234 5698 7654 32"),
        ("My passport number is 912803456", "pii.US_PASSPORT", "912803456"),
        ("my checking account 000123456789", "pii.US_BANK_NUMBER", "000123456789"),
        ("Requests came from 8.8.8.8 yesterday", "pii.IP_ADDRESS", "8.8.8.8"),
        ("My ITIN 912-70-1234 is new", "pii.US_ITIN", "912-70-1234"),
        ("NHS number 943 476 5919", "pii.UK_NHS", "943 476 5919"),
        ("My driver's license D1234567", "pii.US_DRIVER_LICENSE", "D1234567"),
        ("She was born on 7/5/1981 in May", "pii.DATE_OF_BIRTH", "7/5/1981"),
        ("Home address is 1234 Abc Avenue, Springfield.", "pii.STREET_ADDRESS", "1234 Abc Avenue"),
        ("Meet at 42 Elm St. Apt 5 tonight", "pii.STREET_ADDRESS", "42 Elm St. Apt 5"),
        ("Send to 123 Main Street, Anytown, USA.", "pii.STREET_ADDRESS", "123 Main Street, Anytown, USA"),
        ("1600 Pennsylvania Avenue NW", "pii.STREET_ADDRESS", "1600 Pennsylvania Avenue NW"),
        ("i live at 42 elm street", "pii.STREET_ADDRESS", "42 elm street"),
        ("Write to PO Box 1234", "pii.STREET_ADDRESS", "PO Box 1234"),
        ("Ich wohne in der Augsburger Strasse 36", "pii.STREET_ADDRESS", "Augsburger Strasse 36"),
    ],
)
def test_finding_kind_and_span_cover_the_value(detector: PresidioDetector, text: str, kind: str, value: str) -> None:
    findings = detector.detect(text)
    start = text.index(value)
    end = start + len(value)
    covering = [
        f for f in findings if f.kind == kind and f.span is not None and f.span.start <= start and f.span.end >= end
    ]
    assert covering, f"no {kind} finding covers the value; got {[(f.kind, f.span) for f in findings]}"
    for finding in findings:
        assert finding.span is not None
        assert 0 <= finding.span.start < finding.span.end <= len(text)
        assert finding.topic is Topic.PII
        assert finding.detector == "presidio"
        assert finding.kind.startswith("pii.")
        assert 0.0 <= finding.score <= 1.0


PII_PROMPTS = [
    "My email is jane.doe@example.com and my SSN is 123-45-6789",
    "Our customer's home address is 1234 Abc Avenue, Springfield... this is not PII",
    "Card 4111 1111 1111 1111, IBAN GB82 WEST 1234 5698 7654 32, phone (415) 555-2671",
    "Passport 912803456, checking account 000123456789, NHS 943 476 5919, from 8.8.8.8",
    "ssn 219099999, itin 912-70-1234, born 7/5/1981, driver D1234567",
    "i live at 42 elm street; write to maria.lopez@gmail.com",
]


@pytest.mark.parametrize("text", PII_PROMPTS)
def test_explanation_names_the_rule_never_the_value(detector: PresidioDetector, text: str) -> None:
    findings = detector.detect(text)
    assert findings
    for finding in findings:
        assert finding.span is not None
        value = text[finding.span.start : finding.span.end]
        assert value.lower() not in finding.explanation.lower()
        for part in value.split():
            if any(c.isdigit() for c in part) or "@" in part:  # nor an identifying piece of it
                assert part.lower() not in finding.explanation.lower(), (finding.kind, part)
        assert "Recognizer" in finding.explanation
        assert finding.kind.removeprefix("pii.") in finding.explanation
        # Findings travel as JSON: the explanation survives the round trip.
        assert Finding.from_dict(finding.to_dict()).explanation == finding.explanation


def test_one_value_is_one_finding(detector: PresidioDetector) -> None:
    # A card number also holds bank- and phone-shaped digit runs; a formatted SSN is also
    # phone-shaped. Each value is reported once, as its strongest kind.
    for text, kind in [
        ("Charge it to my Visa 4111 1111 1111 1111", "pii.CREDIT_CARD"),
        ("My SSN is 219-09-9999", "pii.US_SSN"),
    ]:
        findings = detector.detect(text)
        assert [f.kind for f in findings] == [kind]


# --- context words -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("without_context", "with_context"),
    [
        ("Reference 219-09-9999 attached", "My SSN is 219-09-9999"),
        ("Reference 219-09-9999 attached", "Social security number: 219-09-9999"),
        ("Reference 219-09-9999 attached", "SOCIAL SECURITY 219-09-9999"),  # lemmas are lower-cased
        ("Reach the desk on +1 415 555 2671.", "Call me on +1 415 555 2671."),  # "call" is a stop word in spaCy
        ("Ship 912803456 today", "My passport number is 912803456"),
        ("Released 7/5/1981 worldwide", "She was born on 7/5/1981"),
    ],
)
def test_context_words_raise_the_score(detector: PresidioDetector, without_context: str, with_context: str) -> None:
    plain = pii_topic_score(detector.detect(without_context))
    boosted = pii_topic_score(detector.detect(with_context))
    assert boosted > plain
    assert Confidence.of(boosted) >= Confidence.MEDIUM
    assert Confidence.of(plain) <= Confidence.LOW


def test_context_words_match_whole_words_only(detector: PresidioDetector) -> None:
    # Substring matching would let "accountant" support a bank number and "handled" ("dl")
    # a driver licence, as it lets "business" support Presidio's passport context "us".
    for text in ["My accountant handled 12345678 invoices", "Our business sold 912803456 widgets"]:
        assert detector.detect(text) == (), text


# --- email, IP and phone refinements ----------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "postgres://admin:s3cret@db.internal.company.com/app",
        "redis-cli -u default:hunter2@cache.company.com",
        "https://deploy:token123@git.company.com/repo.git",
    ],
)
def test_url_credentials_are_not_email_addresses(detector: PresidioDetector, text: str) -> None:
    assert "pii.EMAIL_ADDRESS" not in kinds(detector.detect(text))


def test_private_addresses_are_not_personal(detector: PresidioDetector) -> None:
    for text in ["ping 10.0.0.1", "bind 192.168.1.20", "localhost is 127.0.0.1", "doc net 192.0.2.7"]:
        assert "pii.IP_ADDRESS" not in kinds(detector.detect(text)), text
    assert "pii.IP_ADDRESS" in kinds(detector.detect("ping 8.8.8.8"))


def test_zip_plus_four_is_not_a_phone_number(detector: PresidioDetector) -> None:
    # phonenumbers accepts "02110-1301" as a German or Israeli number.
    assert detector.detect("Boston, MA 02110-1301") == ()
    assert kinds(detector.detect("51 Franklin Street, Boston, MA 02110-1301")) == {"pii.STREET_ADDRESS"}


def test_reserved_example_domains_score_lower_than_real_ones(detector: PresidioDetector) -> None:
    placeholder = pii_topic_score(detector.detect("write to someone@example.com"))
    real = pii_topic_score(detector.detect("write to someone@gmail.com"))
    assert 0.0 < placeholder < real


# --- offline, quiet, safe ----------------------------------------------------------------------


def test_no_network_access(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    attempts: list[Any] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(args)
        raise OSError("network access attempted in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    caplog.set_level(logging.DEBUG)

    fresh = PresidioDetector()  # builds its own suffix-list extractor: must read the snapshot
    findings = fresh.detect("Contact maria.lopez@gmail.com or see https://www.example.co.uk/page")

    assert attempts == []
    emails = [f for f in findings if f.kind == "pii.EMAIL_ADDRESS"]
    assert emails and emails[0].score == pytest.approx(ENTITY_RULES["EMAIL_ADDRESS"].weight)  # validated
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_construction_and_detection_are_quiet(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.WARNING)
    started = time.perf_counter()
    fresh = PresidioDetector()
    built_in = time.perf_counter() - started
    for text in PII_PROMPTS:
        fresh.detect(text)
    assert caplog.records == []
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert built_in < 10.0  # no model to load; typically well under a second


def test_detect_is_thread_safe(detector: PresidioDetector) -> None:
    prompts = [*PII_PROMPTS, "What is 2+2?", "Explain TCP slow start", ""] * 10
    expected = [detector.detect(p) for p in prompts]
    with ThreadPoolExecutor(max_workers=8) as pool:
        got = list(pool.map(detector.detect, prompts))
    assert got == expected


def test_empty_and_blank_prompts(detector: PresidioDetector) -> None:
    assert detector.detect("") == ()
    assert detector.detect(" \n\t ") == ()


@pytest.mark.parametrize(
    "text",
    [
        "a." * 25_000 + "@",  # quadratic for an unbounded email local part
        "12 " * 30_000,  # phonenumbers' default of 65535 tries per region
        "1 " + "Aaaa " * 20_000,  # street-name words without a street type
        "Rua " + "Da " * 30_000,
        "ssn 219-09-9999 " * 3_000,  # thousands of matches through the context step
        "x" * 200_000,
    ],
)
def test_long_hostile_prompts_finish_quickly(detector: PresidioDetector, text: str) -> None:
    started = time.perf_counter()
    detector.detect(text)
    assert time.perf_counter() - started < 5.0


# --- spaCy model configuration -------------------------------------------------------------------


def test_missing_spacy_model_is_a_clear_error(tmp_path: Path) -> None:
    for missing in ["en_core_web_does_not_exist", str(tmp_path / "no-model-here")]:
        with pytest.raises(SpacyModelUnavailableError) as raised:
            PresidioDetector(spacy_model=missing)
        message = str(raised.value)
        assert missing in message
        assert "spacy_model" in message


def test_configured_model_adds_ner_entities(tmp_path: Path) -> None:
    # A tiny model on disk: a blank pipeline whose entity ruler tags one name and one city.
    nlp = spacy.blank("en")
    ruler = nlp.add_pipe("entity_ruler")
    ruler.add_patterns(  # type: ignore[attr-defined]
        [
            {"label": "PERSON", "pattern": "Jane Roe"},
            {"label": "GPE", "pattern": "Springfield"},
            {"label": "ORG", "pattern": "Acme"},
        ]
    )
    nlp.to_disk(tmp_path / "model")

    with_model = PresidioDetector(spacy_model=str(tmp_path / "model"))
    text = "Jane Roe of Acme moved to Springfield; her SSN is 219-09-9999"
    findings = with_model.detect(text)

    assert {"pii.PERSON", "pii.LOCATION", "pii.US_SSN"} <= kinds(findings)
    assert "pii.ORGANIZATION" not in kinds(findings)
    assert {"PERSON", "LOCATION"} <= set(with_model.entities)
    for finding in findings:
        assert finding.span is not None
        assert text[finding.span.start : finding.span.end] not in finding.explanation


# --- rules and the topic score ----------------------------------------------------------------


def test_rules_choose_the_entities_and_weights() -> None:
    only_email = PresidioDetector(rules={"EMAIL_ADDRESS": EntityRule(weight=0.5, min_score=0.5)})
    findings = only_email.detect("maria.lopez@gmail.com, SSN 219-09-9999")
    assert [f.kind for f in findings] == ["pii.EMAIL_ADDRESS"]
    assert findings[0].score == pytest.approx(0.5)
    assert only_email.entities == ("EMAIL_ADDRESS",)


def _finding(kind: str, score: float, topic: Topic = Topic.PII) -> Finding:
    return Finding("presidio", kind, topic, score, Span(0, 1), "test")


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        ([], 0.0),
        ([_finding("pii.EMAIL_ADDRESS", 0.7)], 0.7),
        ([_finding("pii.EMAIL_ADDRESS", 0.7), _finding("pii.EMAIL_ADDRESS", 0.4)], 0.7),  # max within a kind
        ([_finding("pii.EMAIL_ADDRESS", 0.7), _finding("pii.US_SSN", 0.5)], 1 - 0.3 * 0.5),  # noisy-or
        ([_finding("pii.PHONE_NUMBER", 0.35), _finding("pii.STREET_ADDRESS", 0.405)], 1 - 0.65 * 0.595),
        ([_finding("secret.AWS_KEY", 0.9, Topic.CREDENTIALS)], 0.0),  # other topics ignored
        ([_finding("pii.X", 1.7), _finding("pii.Y", -0.2)], 1.0),  # clamped to [0, 1]
    ],
)
def test_pii_topic_score(findings: list[Finding], expected: float) -> None:
    assert pii_topic_score(findings) == pytest.approx(expected)


def test_two_weak_kinds_together_reach_medium() -> None:
    phone = ENTITY_RULES["PHONE_NUMBER"].weight * 0.4  # Presidio's phone score without context
    address = ENTITY_RULES["STREET_ADDRESS"].weight * 0.45  # our bare street-address score
    assert Confidence.of(phone) is Confidence.LOW
    assert Confidence.of(address) is Confidence.LOW
    combined = pii_topic_score([_finding("pii.PHONE_NUMBER", phone), _finding("pii.STREET_ADDRESS", address)])
    assert Confidence.of(combined) is Confidence.MEDIUM
