"""Presidio recognizers for national identifiers outside the US and UK (issue 15).

Chinese resident identity numbers and mobile numbers, the German tax id (Steuer-ID), the French
social-security number (NIR), Spanish DNI and NIE, the Italian codice fiscale, the Japanese
My Number, the Korean resident registration number, and the Russian passport, INN and SNILS.
(German IBANs are Presidio's own IBAN recognizer, validated by ISO 13616's mod 97.)

Every format that has a check digit is validated by it, so that a random digit string of the
right length is not PII: a number whose check fails is dropped. What a check leaves to chance
decides how much a number counts alone (:attr:`IdRule.alone`): one chance in 97 (NIR) or 23
(DNI) plus a date of birth is strong evidence; one in eleven (My Number) is weak until a word
beside it says what it is. Formats without a check (a Chinese mobile number, a Russian
passport) count only a little alone. The words that say what a number is are looked for in
the characters just before it (:data:`CONTEXT_CHARS`) as plain substrings, which works in
scripts written without spaces (Presidio's context enhancer works on space-separated tokens).

The patterns are linear-time: fixed-length digit groups with optional single separators, no
nested or unbounded quantifier, and a one-class lookbehind/lookahead at the ends only, the
shape :mod:`classifiers.linear_patterns` runs on RE2 for ASCII text.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from presidio_analyzer import EntityRecognizer, Pattern, PatternRecognizer, RecognizerResult

LANGUAGE = "en"  # the analyzer's one language; the recognizers themselves are script-free
CONTEXT_CHARS = 32


def _digits(value: str) -> str:
    return "".join(c for c in value if c.isdigit())


def _date_ok(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


# --- check digits ---------------------------------------------------------------------------

_CN_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_CN_CHECK = "10X98765432"


def cn_resident_id_valid(value: str) -> bool:
    """GB 11643-1999: ISO 7064 MOD 11-2 over 17 digits, and a real date of birth."""
    raw = value.replace(" ", "").upper()
    if len(raw) != 18 or not raw[:17].isdigit():
        return False
    if not _date_ok(int(raw[6:10]), int(raw[10:12]), int(raw[12:14])):
        return False
    total = sum(int(d) * w for d, w in zip(raw[:17], _CN_WEIGHTS, strict=True))
    return _CN_CHECK[total % 11] == raw[17]


def de_tax_id_valid(value: str) -> bool:
    """Steuerliche Identifikationsnummer: 11 digits, no leading zero, one digit of the first ten
    repeated (twice or three times) and the ISO 7064 MOD 11,10 check digit."""
    digits = _digits(value)
    if len(digits) != 11 or digits[0] == "0":
        return False
    counts = sorted((digits[:10].count(d) for d in set(digits[:10])), reverse=True)
    if counts[0] not in (2, 3) or (len(counts) > 1 and counts[1] > 1):
        return False
    product = 10
    for d in digits[:10]:
        total = (int(d) + product) % 10 or 10
        product = (total * 2) % 11
    check = 11 - product
    return (0 if check == 10 else check) == int(digits[10])


def fr_nir_valid(value: str) -> bool:
    """Numéro d'inscription au répertoire (INSEE): 13 characters and a key of 97 - n mod 97
    (Corsica's 2A/2B count as 19/18)."""
    raw = value.replace(" ", "").upper()
    if len(raw) != 15:
        return False
    body, key = raw[:13], raw[13:]
    body = body.replace("2A", "19", 1) if body[5:7] == "2A" else body
    body = body.replace("2B", "18", 1) if body[5:7] == "2B" else body
    if not body.isdigit() or not key.isdigit() or body[0] not in "12":
        return False
    return 97 - int(body) % 97 == int(key)


_ES_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def es_dni_valid(value: str) -> bool:
    """DNI: eight digits and the letter of their value mod 23; NIE: X/Y/Z (0/1/2), seven digits."""
    raw = value.replace(" ", "").replace("-", "").upper()
    if len(raw) != 9:
        return False
    head = raw[:8]
    if head[0] in "XYZ":
        head = str("XYZ".index(head[0])) + head[1:]
    if not head.isdigit():
        return False
    return _ES_LETTERS[int(head) % 23] == raw[8]


_IT_ODD = dict(
    zip(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        (
            1,
            0,
            5,
            7,
            9,
            13,
            15,
            17,
            19,
            21,
            1,
            0,
            5,
            7,
            9,
            13,
            15,
            17,
            19,
            21,
            2,
            4,
            18,
            20,
            11,
            3,
            6,
            8,
            12,
            14,
            16,
            10,
            22,
            25,
            24,
            23,
        ),
        strict=True,
    )
)
_IT_OMOCODIA = "LMNPQRSTUV"  # digits replaced by letters when two people share a code


def it_fiscal_code_valid(value: str) -> bool:
    """Codice fiscale: 15 characters and a check letter (odd and even positions weighted apart)."""
    raw = value.upper()
    if len(raw) != 16 or not raw.isalnum():
        return False
    total = 0
    for i, char in enumerate(raw[:15]):
        if i % 2 == 0:  # positions 1, 3, 5, ... counted from one
            total += _IT_ODD[char]
        else:
            total += int(char) if char.isdigit() else ord(char) - ord("A")
    day = raw[9:11].translate(str.maketrans(_IT_OMOCODIA, "0123456789"))
    if not day.isdigit() or not (1 <= int(day) <= 31 or 41 <= int(day) <= 71):
        return False
    return chr(ord("A") + total % 26) == raw[15]


def jp_my_number_valid(value: str) -> bool:
    """個人番号: 11 digits and a check digit weighted 2..7, 2..6 from the right, mod 11."""
    digits = _digits(value)
    if len(digits) != 12:
        return False
    body = digits[:11][::-1]
    total = sum(int(d) * (n + 1 if n <= 6 else n - 5) for n, d in enumerate(body, start=1))
    rest = total % 11
    return (0 if rest <= 1 else 11 - rest) == int(digits[11])


def kr_rrn_valid(value: str) -> bool:
    """주민등록번호 YYMMDD-GNNNNNC: a real date (the century from G) and the mod 11 check digit.
    Numbers issued since October 2020 carry no check digit; they count only with a context word
    (:func:`kr_rrn_shape_valid`)."""
    digits = _digits(value)
    if not kr_rrn_shape_valid(value):
        return False
    total = sum(int(d) * w for d, w in zip(digits[:12], (2, 3, 4, 5, 6, 7, 8, 9, 2, 3, 4, 5), strict=True))
    return (11 - total % 11) % 10 == int(digits[12])


def kr_rrn_shape_valid(value: str) -> bool:
    digits = _digits(value)
    if len(digits) != 13 or digits[6] not in "12345678":
        return False
    century = {"1": 1900, "2": 1900, "5": 1900, "6": 1900, "3": 2000, "4": 2000, "7": 2000, "8": 2000}[digits[6]]
    return _date_ok(century + int(digits[:2]), int(digits[2:4]), int(digits[4:6]))


def ru_inn_valid(value: str) -> bool:
    """ИНН: ten digits (an organisation, one check digit) or twelve (a person, two)."""
    d = [int(c) for c in _digits(value)]

    def check(weights: Sequence[int]) -> int:
        return sum(x * w for x, w in zip(d, weights, strict=False)) % 11 % 10

    if len(d) == 10:
        return check((2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[9]
    if len(d) == 12:
        return check((7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[10] and check((3, 7, 2, 4, 10, 3, 5, 9, 4, 6, 8)) == d[11]
    return False


def ru_snils_valid(value: str) -> bool:
    """СНИЛС: nine digits and a two-digit check (weights 9..1, mod 101, 100 -> 00)."""
    digits = _digits(value)
    if len(digits) != 11:
        return False
    total = sum(int(c) * (9 - i) for i, c in enumerate(digits[:9]))
    check = total if total < 100 else (0 if total in (100, 101) else total % 101 % 100)
    return check == int(digits[9:])


# --- the recognizers ------------------------------------------------------------------------


@dataclass(frozen=True)
class IdRule:
    """One national identifier: its patterns, its check, and how much a match counts.

    ``alone``: the score of a validated (or, without a check, matching) number with no context
    word before it; ``with_context``: with one. ``validate`` None: the format has no check digit.
    """

    entity: str
    patterns: tuple[tuple[str, str], ...]  # (name, regex)
    validate: Callable[[str], bool] | None
    alone: float
    with_context: float
    context: tuple[str, ...]
    # A number whose check fails may still count with a context word (formats whose newer
    # numbers have no check digit, like Korea's since 2020): the score it then gets.
    shape_with_context: float = 0.0
    shape: Callable[[str], bool] | None = None


_NOT_BEFORE = r"(?<![0-9A-Za-z])"
_NOT_AFTER = r"(?![0-9A-Za-z])"
_SEP = r"[ -]?"


def _bounded(body: str) -> str:
    return _NOT_BEFORE + body + _NOT_AFTER


ID_RULES: tuple[IdRule, ...] = (
    IdRule(
        "CN_RESIDENT_ID",
        (
            (
                "cn_resident_id",
                _bounded(r"[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}[0-9Xx]"),
            ),
        ),
        cn_resident_id_valid,
        alone=0.9,
        with_context=1.0,
        context=("身份证", "身份號", "证件号", "公民身份", "resident id", "id card", "identity"),
    ),
    IdRule(
        "CN_MOBILE",
        (("cn_mobile", _bounded(r"(?:\+86[ -]?|0086[ -]?)?1[3-9]\d" + _SEP + r"\d{4}" + _SEP + r"\d{4}")),),
        None,
        alone=0.45,
        with_context=0.85,
        context=("手机", "电话", "手機", "電話", "联系", "致电", "mobile", "phone", "tel"),
    ),
    IdRule(
        "DE_TAX_ID",
        (("de_tax_id", _bounded(r"[1-9]\d ?\d{3} ?\d{3} ?\d{3}")),),
        de_tax_id_valid,
        alone=0.6,
        with_context=1.0,
        context=(
            "steuer-id",
            "steuerid",
            "steuer id",
            "steueridentifikationsnummer",
            "identifikationsnummer",
            "idnr",
            "tin",
            "tax id",
        ),
    ),
    IdRule(
        "FR_NIR",
        (("fr_nir", _bounded(r"[12] ?\d{2} ?(?:0[1-9]|1[0-2]|[2-9]\d) ?(?:\d{2}|2[ABab]) ?\d{3} ?\d{3} ?\d{2}")),),
        fr_nir_valid,
        alone=0.85,
        with_context=1.0,
        context=(
            "sécurité sociale",
            "securite sociale",
            "insee",
            "nir",
            "numéro de sécu",
            "numero de secu",
            "carte vitale",
            "social security",
        ),
    ),
    IdRule(
        "ES_NIF",
        (
            ("es_dni", _bounded(r"\d{8}" + _SEP + r"[A-Za-z]")),
            ("es_nie", _bounded(r"[XYZxyz]" + _SEP + r"\d{7}" + _SEP + r"[A-Za-z]")),
        ),
        es_dni_valid,
        alone=0.85,
        with_context=1.0,
        context=("dni", "nie", "nif", "documento nacional", "identidad", "id card"),
    ),
    IdRule(
        "IT_FISCAL_CODE",
        (
            (
                "it_fiscal_code",
                _bounded(
                    r"[A-Za-z]{6}[0-9LMNPQRSTUVlmnpqrstuv]{2}[ABCDEHLMPRSTabcdehlmprst]"
                    r"[0-9LMNPQRSTUVlmnpqrstuv]{2}[A-Za-z][0-9LMNPQRSTUVlmnpqrstuv]{3}[A-Za-z]"
                ),
            ),
        ),
        it_fiscal_code_valid,
        alone=0.9,
        with_context=1.0,
        context=("codice fiscale", "cod. fiscale", "c.f.", "cf", "tax code", "fiscal code"),
    ),
    IdRule(
        "JP_MY_NUMBER",
        (("jp_my_number", _bounded(r"\d{4}" + _SEP + r"\d{4}" + _SEP + r"\d{4}")),),
        jp_my_number_valid,
        alone=0.4,
        with_context=1.0,
        context=("マイナンバー", "個人番号", "まいなんばー", "my number", "mynumber"),
    ),
    IdRule(
        "KR_RRN",
        (("kr_rrn", _bounded(r"\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01]) ?- ?[1-8]\d{6}")),),
        kr_rrn_valid,
        alone=0.85,
        with_context=1.0,
        context=("주민등록번호", "주민번호", "주민등록", "resident registration", "rrn"),
        shape_with_context=0.85,
        shape=kr_rrn_shape_valid,
    ),
    IdRule(
        "RU_PASSPORT",
        (("ru_passport", _bounded(r"\d{2} ?\d{2} ?(?:№ ?)?\d{6}")),),
        None,
        alone=0.0,  # ten digits are anything without the word
        with_context=0.85,
        context=("паспорт", "серия", "passport"),
    ),
    IdRule(
        "RU_INN",
        (("ru_inn", _bounded(r"\d{10}(?:\d{2})?")),),
        ru_inn_valid,
        alone=0.45,
        with_context=1.0,
        context=("инн", "идентификационный номер налогоплательщика", "inn", "taxpayer"),
    ),
    IdRule(
        "RU_SNILS",
        (("ru_snils", _bounded(r"\d{3}-?\d{3}-?\d{3}[ -]?\d{2}")),),
        ru_snils_valid,
        alone=0.75,
        with_context=1.0,
        context=("снилс", "страховой номер", "snils", "pension insurance"),
    ),
)


class NationalIdRecognizer(PatternRecognizer):
    """One :class:`IdRule` as a Presidio pattern recognizer: Presidio (and ``_cap_patterns``,
    which puts the patterns on RE2) finds the candidates; the check and the words just before
    each one decide its score."""

    def __init__(self, rule: IdRule) -> None:
        self.rule = rule
        # Pattern score 0.5: above Presidio's minimum, replaced below in every case.
        patterns = [Pattern(name, regex, 0.5) for name, regex in rule.patterns]
        super().__init__(
            supported_entity=rule.entity,
            name=f"{rule.entity.title().replace('_', '')}Recognizer",
            patterns=patterns,
            supported_language=LANGUAGE,
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        return None  # decided in analyze, where the text around the match is at hand

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: Any = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = []
        lowered: str | None = None
        for result in super().analyze(text, entities, nlp_artifacts, regex_flags):
            value = text[result.start : result.end]
            if lowered is None:
                lowered = text.lower()
            before = lowered[max(0, result.start - CONTEXT_CHARS) : result.start]
            context = any(word in before for word in self.rule.context)
            score = self._score(value, context)
            if score <= EntityRecognizer.MIN_SCORE:
                continue
            result.score = score
            results.append(result)
        return results

    def _score(self, value: str, context: bool) -> float:
        rule = self.rule
        if rule.validate is None:
            return rule.with_context if context else rule.alone
        if rule.validate(value):
            return rule.with_context if context else rule.alone
        if context and rule.shape is not None and rule.shape(value):
            return rule.shape_with_context
        return 0.0


def build_intl_recognizers() -> list[EntityRecognizer]:
    """Fresh instances (they cache compiled patterns), one per :data:`ID_RULES` entry."""
    return [NationalIdRecognizer(rule) for rule in ID_RULES]


# The entities, for the presidio detector's rules: the recognizer's score is final (weight 1),
# and LOW counts, so a weak number alone stays LOW and a validated one is MEDIUM or more.
INTL_ENTITIES = tuple(rule.entity for rule in ID_RULES)
INTL_MIN_SCORE = 0.3
