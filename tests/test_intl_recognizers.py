"""Issue 15: national identifiers of other countries, validated by their check digits, so that
a random digit string of the right shape is not PII."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from classifiers import intl_recognizers as intl
from classifiers.linear_patterns import LinearPattern
from classifiers.presidio_detector import PresidioDetector
from promptfence.core import Confidence, Topic

# (validator, valid numbers, the same numbers with a wrong check character or impossible date)
CASES: list[tuple[str, Callable[[str], bool], list[str], list[str]]] = [
    (
        "cn",
        intl.cn_resident_id_valid,
        ["11010519491231002X", "310104198506126453"],
        ["110105194912310021", "310104198513126453"],
    ),
    (
        "de",
        intl.de_tax_id_valid,
        ["65929970489", "95205473653", "82038569188"],
        ["65929970488", "11111111111", "05205473653"],
    ),
    ("fr", intl.fr_nir_valid, ["184127645108946", "2 87 05 75 011 885 43"], ["184127645108947", "387057501188543"]),
    ("es", intl.es_dni_valid, ["12345678Z", "X1234567L", "44508649S"], ["12345678A", "X1234567A", "44508649T"]),
    (
        "it",
        intl.it_fiscal_code_valid,
        ["RSSMRA85T10A562S", "BNCGLI90C22H657J"],
        ["RSSMRA85T10A562T", "BNCGLI90C99H657J"],
    ),
    ("jp", intl.jp_my_number_valid, ["123456789018", "0727 0393 1058"], ["123456789019", "072703931059"]),
    ("kr", intl.kr_rrn_valid, ["850315-1496217", "8503151498670"], ["850315-1496218", "851315-1496217"]),
    ("ru_inn", intl.ru_inn_valid, ["7707083893", "779824983609"], ["7707083894", "779824983600"]),
    ("ru_snils", intl.ru_snils_valid, ["112-233-445 95", "36463722192"], ["112-233-445 96", "36463722193"]),
]


@pytest.mark.parametrize(("name", "valid", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_check_digits(name: str, valid: Callable[[str], bool], good: list[str], bad: list[str]) -> None:
    for number in good:
        assert valid(number), f"{name}: {number} should validate"
    for number in bad:
        assert not valid(number), f"{name}: {number} should not validate"


@pytest.mark.parametrize(("name", "valid", "good", "bad"), CASES, ids=[c[0] for c in CASES])
def test_most_random_strings_of_the_shape_fail_the_check(
    name: str, valid: Callable[[str], bool], good: list[str], bad: list[str]
) -> None:
    rng = random.Random(15)
    sample = good[0]
    shaped = ["".join(rng.choice("0123456789") if c.isdigit() else c for c in sample) for _ in range(2000)]
    passed = sum(valid(s) for s in shaped) / len(shaped)
    assert passed <= 0.12, f"{name}: {passed:.1%} of random strings validate"


def test_every_pattern_is_linear_time_on_re2() -> None:
    for rule in intl.ID_RULES:
        for name, regex in rule.patterns:
            assert LinearPattern(regex, 0).linear, f"{name} does not run on RE2"


@pytest.fixture(scope="module")
def presidio() -> PresidioDetector:
    return PresidioDetector()


@pytest.mark.parametrize(
    ("text", "kind", "level"),
    [
        ("我的身份证号码是11010519491231002X，请帮我核对。", "CN_RESIDENT_ID", Confidence.HIGH),
        ("客户手机：13812345678，请尽快联系。", "CN_MOBILE", Confidence.HIGH),
        ("Meine Steuer-ID lautet 65929970489.", "DE_TAX_ID", Confidence.HIGH),
        ("Überweisung an IBAN DE89 3704 0044 0532 0130 00 bitte heute.", "IBAN_CODE", Confidence.MEDIUM),
        ("Mon numéro de sécurité sociale est 1 84 12 76 451 089 46.", "FR_NIR", Confidence.HIGH),
        ("Mi DNI es 12345678Z y vivo en Madrid.", "ES_NIF", Confidence.HIGH),
        ("Il mio codice fiscale è RSSMRA85T10A562S.", "IT_FISCAL_CODE", Confidence.HIGH),
        ("私のマイナンバーは123456789018です。", "JP_MY_NUMBER", Confidence.HIGH),
        ("제 주민등록번호는 850315-1496217입니다.", "KR_RRN", Confidence.HIGH),
        ("Мой паспорт 45 06 123456, выдан в Москве.", "RU_PASSPORT", Confidence.HIGH),
        ("ИНН компании 7707083893.", "RU_INN", Confidence.HIGH),
        ("СНИЛС 112-233-445 95", "RU_SNILS", Confidence.HIGH),
    ],
)
def test_presidio_finds_national_ids(presidio: PresidioDetector, text: str, kind: str, level: Confidence) -> None:
    findings = [f for f in presidio.detect(text) if f.kind == f"pii.{kind}"]
    assert findings, f"no {kind} in {text!r}"
    assert all(f.topic is Topic.PII for f in findings)
    assert Confidence.of(max(f.score for f in findings)) >= level
    span = findings[0].span
    assert span is not None and text[span.start : span.end].strip()[0].isalnum()


@pytest.mark.parametrize(
    "text",
    [
        "身份证 110105194912310021",  # wrong check digit
        "Steuer-ID 65929970488",  # wrong check digit
        "DNI 12345678A",  # wrong letter
        "codice fiscale RSSMRA85T10A562T",  # wrong check letter
        "マイナンバー 123456789019",  # wrong check digit
        "ИНН 7707083894",
        "СНИЛС 112-233-445 96",
        "Order 4821 7730 1295 shipped in batch 10293847561.",  # digit strings that are nothing
        "Ten digits 4506123456 without a word for them.",
    ],
)
def test_invalid_or_unexplained_numbers_are_not_national_ids(presidio: PresidioDetector, text: str) -> None:
    kinds = {f.kind for f in presidio.detect(text)}
    assert not kinds & {f"pii.{e}" for e in intl.INTL_ENTITIES}, kinds


def test_a_valid_number_alone_counts_less_than_with_its_word(presidio: PresidioDetector) -> None:
    alone = [f for f in presidio.detect("ref 123456789018 ok") if f.kind == "pii.JP_MY_NUMBER"]
    named = [f for f in presidio.detect("マイナンバー 123456789018") if f.kind == "pii.JP_MY_NUMBER"]
    assert named and Confidence.of(named[0].score) is Confidence.HIGH
    assert not alone or Confidence.of(alone[0].score) <= Confidence.LOW
