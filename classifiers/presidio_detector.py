"""PII detection with Microsoft Presidio's pattern recognizers, offline and quiet.

The :class:`PresidioDetector` builds one Presidio ``AnalyzerEngine`` when it is constructed
and reuses it for every prompt. By default no spaCy model is needed: a blank English spaCy
pipeline only tokenizes, and each token's lemma is its lower-cased text, so Presidio's
context words ("ssn", "social security", "passport") still raise the score of a nearby
match. The blank pipeline tokenizes only the blocks of text around matches, where context words
are looked for (:class:`_LocalArtifacts`), not the whole prompt. A trained spaCy model can be
named instead; it adds PERSON and LOCATION from its NER (and then tokenizes everything).

Only pattern recognizers that suit a PII topic are registered (Presidio's default registry
also flags dates, numbers, organisations and nationalities, which ordinary prompts are full
of). Each Presidio entity then has a weight and a minimum score in :data:`ENTITY_RULES`:
weak evidence (a phone-like number, an IP address) stays LOW on its own, strong evidence
(an SSN next to "ssn", a Luhn-valid card, an email address) reaches MEDIUM or HIGH.

Nothing here touches the network: Presidio's email validation asks ``tldextract`` for the
public suffix list, which ``tldextract`` would download on first use; the detector's
extractor reads only the snapshot bundled with ``tldextract``.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
import threading
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import version as _package_version
from typing import Any

import phonenumbers
import spacy
import tldextract
from presidio_analyzer import (
    AnalysisExplanation,
    AnalyzerEngine,
    EntityRecognizer,
    Pattern,
    PatternRecognizer,
    RecognizerRegistry,
    RecognizerResult,
)
from presidio_analyzer.context_aware_enhancers import LemmaContextAwareEnhancer
from presidio_analyzer.nlp_engine import NlpArtifacts, NlpEngine
from presidio_analyzer.pattern_recognizer import REGEX_TIMEOUT_SECONDS as _PRESIDIO_REGEX_TIMEOUT_S
from presidio_analyzer.predefined_recognizers import (
    CreditCardRecognizer,
    DateRecognizer,
    EmailRecognizer,
    IbanRecognizer,
    IpRecognizer,
    NhsRecognizer,
    PhoneRecognizer,
    SpacyRecognizer,
    UsBankRecognizer,
    UsItinRecognizer,
    UsLicenseRecognizer,
    UsPassportRecognizer,
    UsSsnRecognizer,
)
from spacy.attrs import IDX, LENGTH
from spacy.language import Language
from spacy.tokens import Doc
from spacy.tokens import Span as SpacySpan

from classifiers.address_recognizer import StreetAddressRecognizer
from classifiers.intl_recognizers import INTL_ENTITIES, INTL_MIN_SCORE, build_intl_recognizers
from classifiers.linear_patterns import LinearPattern, ScanCapped
from promptfence.core import Finding, Span, Topic

LANGUAGE = "en"
KIND_PREFIX = "pii."


@dataclass(frozen=True)
class EntityRule:
    """How one Presidio entity becomes a finding.

    ``min_score`` applies to Presidio's own score (after its context-word boost): below it
    the match is dropped. ``weight`` scales what remains into the finding's score, so that
    ``weight * presidio_score`` says how strongly this entity alone indicates PII.
    """

    weight: float
    min_score: float


# Presidio's scores, for reference: a match validated by a checksum or a known top-level
# domain scores 1.0; a context word just before a match adds 0.35 (and lifts it to >= 0.4).
# Entities marked "context only" have every weak pattern at 0.3 (see build_recognizers):
# alone they stay under their minimum of 0.5, with a context word they score 0.65.
ENTITY_RULES: Mapping[str, EntityRule] = {
    # Validated (TLD, Luhn, IBAN checksum): strong on their own.
    "EMAIL_ADDRESS": EntityRule(weight=0.7, min_score=0.5),
    "CREDIT_CARD": EntityRule(weight=0.9, min_score=0.5),
    "IBAN_CODE": EntityRule(weight=0.85, min_score=0.5),
    # "ddd-dd-dddd" alone is LOW (0.5); beside "ssn"/"social security" HIGH (0.85). Plain
    # nine-digit runs are context only.
    "US_SSN": EntityRule(weight=1.0, min_score=0.4),
    "US_ITIN": EntityRule(weight=1.0, min_score=0.5),
    # Context only: digit runs that are something else unless a word says what they are.
    "US_PASSPORT": EntityRule(weight=1.0, min_score=0.5),
    "US_BANK_NUMBER": EntityRule(weight=1.0, min_score=0.5),
    "US_DRIVER_LICENSE": EntityRule(weight=1.0, min_score=0.5),
    "UK_NHS": EntityRule(weight=1.0, min_score=0.5),
    "DATE_OF_BIRTH": EntityRule(weight=1.0, min_score=0.5),
    # Weak alone (LOW, 0.33 to 0.41): phone-like numbers, public IP addresses and bare
    # street addresses. Two different weak kinds together (a phone number and a street
    # address: a contact block) reach MEDIUM through the noisy-or; a phone number after
    # "phone"/"mobile"/"call" does too (0.645, just under a context-only entity's 0.65, so
    # "NHS number 943 476 5919" stays an NHS number though "number" is a phone context word).
    "PHONE_NUMBER": EntityRule(weight=0.86, min_score=0.4),
    "IP_ADDRESS": EntityRule(weight=0.55, min_score=0.5),
    # Ours: a house number on a named street is LOW (0.41); with a city (0.54), after
    # "address"/"lives" (0.72) or both (0.9), more.
    "STREET_ADDRESS": EntityRule(weight=0.9, min_score=0.4),
    # Only with a configured spaCy model: names and places are weak evidence alone.
    "PERSON": EntityRule(weight=0.4, min_score=0.5),
    "LOCATION": EntityRule(weight=0.25, min_score=0.5),
    # National identifiers of other countries, scored by their own check digits and context.
    **{entity: EntityRule(weight=1.0, min_score=INTL_MIN_SCORE) for entity in INTL_ENTITIES},
}

_CONTEXT_ONLY_PATTERN_SCORE = 0.3

# Context words replacing Presidio's where its list is too broad for whole words in ordinary
# prompts (the passport list has "us", "united", "states", "travel", "document"; the driver
# licence list has "license", which every source file header has).
_CONTEXT_OVERRIDES: Mapping[str, list[str]] = {
    "US_PASSPORT": ["passport", "passports", "passport#"],
    "US_BANK_NUMBER": [
        "account",
        "accounts",
        "acct",
        "account#",
        "bank",
        "checking",
        "savings",
        "routing",
        "debit",
    ],
    "US_DRIVER_LICENSE": ["driver", "drivers", "driving", "dl", "dmv"],
    "DATE_OF_BIRTH": ["born", "birth", "birthday", "birthdate", "dob"],
}

# spaCy NER labels kept when a model is configured, and the Presidio entity they become.
_NER_LABELS: Mapping[str, str] = {
    "PERSON": "PERSON",
    "PER": "PERSON",
    "GPE": "LOCATION",
    "LOC": "LOCATION",
    "FAC": "LOCATION",
}

# The score Presidio gives an NER entity (spaCy has no per-entity confidence).
_NER_SCORE = 0.85

# Rebuild a blank pipeline after its string store holds this many strings: spaCy interns
# every token it has seen, which would otherwise grow for as long as the process lives.
_MAX_VOCAB_STRINGS = 200_000

# The longest prompt a blank pipeline accepts (spaCy's own default is 1,000,000).
_MAX_PROMPT_CHARS = 20_000_000

# Run once at construction so every pattern is compiled before threads share them.
_WARM_UP_TEXT = (
    "Reach me at warm.up@example.org or +1 415 555 2671, SSN 111-22-3333, "
    "card 4111 1111 1111 1111, 10 Main Street, Springfield, born 1/2/1990."
)

# Failed candidates phonenumbers may try per region and inspection (its default is 65535): each
# costs up to a millisecond of pure Python on long digit runs. A chunk of a long prompt gets its
# share of the budget (at least _PHONE_MIN_TRIES). Running out is noted like a cap.
_PHONE_MAX_TRIES = 100
_PHONE_MIN_TRIES = 8

# Matches each pattern (and the phone matcher, per region) may yield per call: Presidio spends
# tens of microseconds of Python on every match (validation, explanation, context words), so
# 1 MB of SSN-shaped digits took 30 s. The engine scans long prompts chunk by chunk, so the
# cap is per chunk; reaching it is reported as the note ``findings_capped:presidio``.
MAX_MATCHES_PER_PATTERN = 128
CAPPED_NOTE = "findings_capped:presidio"
REGEX_TIMEOUT_NOTE = "regex_timeout:presidio"


class _CallState(threading.local):
    """What happened during the current thread's ``detect`` call (caps reached, timeouts)."""

    def __init__(self) -> None:
        self.capped = False
        self.timed_out = False
        self.phone_tries = _PHONE_MAX_TRIES


_STATE = _CallState()


class _CappedRegex:
    """A compiled pattern whose ``finditer`` stops after :data:`MAX_MATCHES_PER_PATTERN`
    matches and records a regex timeout (Presidio would skip the pattern silently)."""

    def __init__(self, compiled: Any, limit: int = MAX_MATCHES_PER_PATTERN) -> None:
        self._compiled = compiled
        self._limit = limit

    def finditer(self, text: str, *args: Any, **kwargs: Any) -> Iterator[Any]:
        try:
            for count, match in enumerate(self._compiled.finditer(text, *args, **kwargs)):
                if count >= self._limit:
                    _STATE.capped = True
                    return
                yield match
        except ScanCapped:  # too many near-misses for a pattern verified in Python
            _STATE.capped = True
        except TimeoutError:
            _STATE.timed_out = True
            raise

    def __getattr__(self, name: str) -> Any:
        return getattr(self._compiled, name)


def _cap_patterns(recognizers: Iterable[EntityRecognizer]) -> None:
    """Put every pattern (compiled by a first analysis) on RE2 (:class:`LinearPattern`, the same
    findings in linear time) behind a :class:`_CappedRegex`."""
    for recognizer in recognizers:
        for pattern in getattr(recognizer, "patterns", None) or ():
            if pattern.compiled_regex is not None and not isinstance(pattern.compiled_regex, _CappedRegex):
                flags = pattern.compiled_with_flags or 0
                linear = LinearPattern(pattern.regex, flags, use_re2=pattern.name not in BACKTRACKING_PATTERNS)
                pattern.compiled_regex = _CappedRegex(linear)


# Shapes that phonenumbers accepts for some region but that are something else here.
_NOT_PHONE_SHAPES = (
    re.compile(r"\d{5}-\d{4}"),  # a US ZIP+4 code
)

# Domains reserved for documentation and tests (RFC 2606, RFC 6761): addresses there are
# placeholders, so they keep the pattern's score instead of the validated 1.0.
_RESERVED_EMAIL_DOMAINS = frozenset({"example.com", "example.net", "example.org"})
_RESERVED_EMAIL_TLDS = frozenset({"example", "test", "invalid", "localhost"})


class SpacyModelUnavailableError(RuntimeError):
    """A spaCy model was configured for the detector but cannot be loaded."""


# --- recognizers ---------------------------------------------------------------------------


def offline_tld_extract() -> tldextract.TLDExtract:
    """A ``tldextract`` extractor that never downloads: no cache directory, no suffix-list
    URLs, only the public suffix list snapshot bundled with the package."""
    return tldextract.TLDExtract(cache_dir=None, suffix_list_urls=(), fallback_to_snapshot=True)


# Presidio's email pattern with the local part bounded to 64 characters (RFC 5321's limit):
# unbounded, a long run of "a.a.a..." costs quadratic time.
_EMAIL_PATTERN = Pattern(
    "Email (Medium)",
    r"\b((([!#$%&'*+\-/=?^_`{|}~\w])|([!#$%&'*+\-/=?^_`{|}~\w][!#$%&'*+\-/=?^_`{|}~\.\w]"
    r"{0,62}[!#$%&'*+\-/=?^_`{|}~\w]))[@]\w+(?:-+\w+)*(?:\.\w+(?:-+\w+)*)+)\b",
    0.5,
)


# Patterns that stay on the backtracking engine, and why that is bounded (tests/test_regex_lint.py
# checks them with the same rules as our own patterns).
BACKTRACKING_PATTERNS: dict[str, str] = {
    _EMAIL_PATTERN.name: (
        "the local part is bounded to 64 characters, so each start tries at most that many; RE2's "
        "automaton for the counted repetition is slower (0.4 s per 128 KB of digits and dashes, "
        "against 0.05 s)"
    ),
}


class _OfflineEmailRecognizer(EmailRecognizer):
    """Presidio's email recognizer, offline, and not fooled by URLs or placeholders.

    * Domains are validated against the suffix list bundled with ``tldextract``; Presidio's
      own check would download the list on first use.
    * ``user:password@host`` inside a URL or connection string is a credential, not an
      email address, so matches right after ``:`` (other than ``mailto:``) or inside a
      ``scheme://`` authority are dropped.
    * Addresses at reserved example domains are not validated, so they score as a bare
      pattern (LOW) rather than as a real address.
    """

    def __init__(self, tld_extract: tldextract.TLDExtract) -> None:
        self._tld_extract = tld_extract
        super().__init__(
            patterns=[Pattern(_EMAIL_PATTERN.name, _EMAIL_PATTERN.regex, _EMAIL_PATTERN.score)],
            name="EmailRecognizer",
        )

    def validate_result(self, pattern_text: str) -> bool | None:
        parts = self._tld_extract(pattern_text)
        if parts.fqdn == "":
            return False
        domain = pattern_text.rsplit("@", 1)[-1].lower().rstrip(".")
        reserved = domain.rsplit(".", 1)[-1] in _RESERVED_EMAIL_TLDS or any(
            domain == d or domain.endswith("." + d) for d in _RESERVED_EMAIL_DOMAINS
        )
        return None if reserved else True

    def analyze(
        self,
        text: str,
        entities: list[str],
        nlp_artifacts: NlpArtifacts | None = None,
        regex_flags: int | None = None,
    ) -> list[RecognizerResult]:
        results = super().analyze(text, entities, nlp_artifacts, regex_flags)
        return [r for r in results if not _in_url_userinfo(text, r.start)]


def _in_url_userinfo(text: str, start: int) -> bool:
    """Whether ``text[start:]`` begins inside the user-info part of a URL or DSN."""
    lo, i = max(0, start - 512), start
    while i > lo and not text[i - 1].isspace() and text[i - 1] not in _RUN_BREAKS:
        i -= 1
    run = text[i:start].lower()
    if run.endswith("mailto:"):
        return False
    return run.endswith(":") or "://" in run


_RUN_BREAKS = frozenset("\"'<>()[]{},;")


class _PhoneRecognizer(PhoneRecognizer):
    """Presidio's phone recognizer, bounded, and without matches shaped like something else.

    ``phonenumbers`` tries up to 65535 candidates per region by default, which takes
    seconds on a long run of digits; :data:`_PHONE_MAX_TRIES` failed candidates per region
    and inspection (a chunk's share of them) bound it (real numbers are found all the same).
    """

    NAME = "PhoneRecognizer"

    def analyze(
        self, text: str, entities: list[str], nlp_artifacts: NlpArtifacts | None = None
    ) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        leniency = self.leniency if self.leniency is not None else 1
        for region in self.supported_regions:
            matcher = phonenumbers.PhoneNumberMatcher(text, region, leniency=leniency, max_tries=_STATE.phone_tries)
            for count, match in enumerate(matcher):
                if count >= MAX_MATCHES_PER_PATTERN:
                    _STATE.capped = True
                    break
                if getattr(matcher, "_max_tries", 1) <= 0:
                    _STATE.capped = True
                if any(shape.fullmatch(match.raw_string) for shape in _NOT_PHONE_SHAPES):
                    continue
                results.append(self._result(match.start, match.end))
            if getattr(matcher, "_max_tries", 1) <= 0:  # phonenumbers gave up on the rest
                _STATE.capped = True
        return list(EntityRecognizer.remove_duplicates(results))

    def _result(self, start: int, end: int) -> RecognizerResult:
        return RecognizerResult(
            entity_type=self.supported_entities[0],
            start=start,
            end=end,
            score=self.SCORE,
            analysis_explanation=AnalysisExplanation(
                recognizer=self.NAME,
                original_score=self.SCORE,
                textual_explanation="phone number valid for a supported region",
            ),
            recognition_metadata={
                RecognizerResult.RECOGNIZER_NAME_KEY: self.NAME,
                RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: self.id,
            },
        )


class _PublicIpRecognizer(IpRecognizer):
    """IP addresses that can point at a subscriber: private, loopback, link-local,
    documentation and other non-global addresses identify no one and are dropped."""

    def invalidate_result(self, pattern_text: str) -> bool:
        try:
            return not ipaddress.ip_interface(pattern_text).ip.is_global
        except ValueError:
            return True


class _ContextualNhsRecognizer(NhsRecognizer):
    """NHS numbers need a context word: about one 10-digit number in eleven passes mod 11."""

    # Presidio's NhsRecognizer narrows the return type to bool; PatternRecognizer allows None.
    def validate_result(self, pattern_text: str) -> bool | None:  # type: ignore[override]
        # True would raise the score to 1.0 whatever surrounds it; None keeps the pattern's.
        return None if super().validate_result(pattern_text) else False


class _SsnRecognizer(UsSsnRecognizer):
    """Presidio's SSN recognizer, with the issuing rules as invalidation and no sample list.

    Presidio also drops the three published sample SSNs ("123-45-6789" among them). A
    prompt that says "my SSN is 123-45-6789" still shares an SSN-shaped value as an SSN,
    which is what a prompt gate reports, so only numbers the SSA never issues are dropped:
    area 000, 666 or 9xx (9xx are ITINs), group 00, serial 0000, or one digit repeated.
    """

    def invalidate_result(self, pattern_text: str) -> bool:
        delimiters = {c for c in pattern_text if c in ".- "}
        if len(delimiters) > 1:
            return True
        digits = "".join(c for c in pattern_text if c.isdigit())
        return (
            len(set(digits)) == 1
            or digits[:3] in ("000", "666")
            or digits[0] == "9"
            or digits[3:5] == "00"
            or digits[5:] == "0000"
        )


def _context_only(patterns: Iterable[Pattern], *, keep_stronger: bool = True) -> list[Pattern]:
    """Fresh copies of Presidio's patterns, the weak ones at :data:`_CONTEXT_ONLY_PATTERN_SCORE`.

    Presidio scores bare digit runs 0.05 to 0.1, which its context boost lifts only to 0.4
    or 0.45; at 0.3 a context word makes them 0.65 (MEDIUM) and alone they stay under
    their rule's minimum. With ``keep_stronger`` a stronger pattern (a formatted SSN) keeps
    its own score; without it every pattern needs a context word.
    """
    floor = _CONTEXT_ONLY_PATTERN_SCORE
    return [Pattern(p.name, p.regex, max(p.score, floor) if keep_stronger else floor) for p in patterns]


class _LinearIbanRecognizer(IbanRecognizer):
    """Presidio's IBAN recognizer on a :class:`LinearPattern` behind the match cap.

    Presidio's own loop hands the pattern string to the backtracking ``regex`` module on every
    call (bypassing ``compiled_regex``, so neither RE2 nor the cap would reach it); this one keeps
    its rule: of the match's group ends, the longest that validates wins.
    """

    def __init__(self) -> None:
        super().__init__(name="IbanRecognizer")
        untyped: Any = self  # Presidio's attributes are untyped
        self._flags: int = untyped.global_regex_flags or 0
        self._compiled = [(p, _CappedRegex(LinearPattern(p.regex, self._flags))) for p in untyped.patterns]

    # Presidio's IbanRecognizer.analyze calls its private (name-mangled) pattern loop.
    def _IbanRecognizer__analyze_patterns(self, text: str, flags: int | None = None) -> list[RecognizerResult]:
        results: list[RecognizerResult] = []
        for pattern, compiled in self._compiled:
            try:
                for match in compiled.finditer(text, timeout=_PRESIDIO_REGEX_TIMEOUT_S):
                    result = self._longest_valid(text, pattern, match)
                    if result is not None:
                        results.append(result)
            except TimeoutError:  # noted by _CappedRegex
                continue
        return results

    def _longest_valid(self, text: str, pattern: Pattern, match: Any) -> RecognizerResult | None:
        start, whole_end = match.span(0)
        for group in range(len(match.groups()), 0, -1):
            group_end = match.span(group)[1]
            end = group_end if group_end > 0 else whole_end
            if end <= start:
                continue
            validation = self.validate_result(text[start:end])
            score = pattern.score
            if validation is not None:
                score = EntityRecognizer.MAX_SCORE if validation else EntityRecognizer.MIN_SCORE
            if score <= EntityRecognizer.MIN_SCORE:
                continue
            untyped: Any = self
            explanation = PatternRecognizer.build_regex_explanation(
                untyped.name, pattern.name, pattern.regex, pattern.score, validation, self._flags
            )
            return RecognizerResult(
                entity_type=self.supported_entities[0],
                start=start,
                end=end,
                score=score,
                analysis_explanation=explanation,
                recognition_metadata={
                    RecognizerResult.RECOGNIZER_NAME_KEY: untyped.name,
                    RecognizerResult.RECOGNIZER_IDENTIFIER_KEY: untyped.id,
                },
            )
        return None


def build_recognizers(tld_extract: tldextract.TLDExtract | None = None) -> list[EntityRecognizer]:
    """The PII topic's pattern recognizers, as fresh instances (they cache compiled regexes).

    ``tld_extract`` validates email domains; :func:`offline_tld_extract` by default.
    """
    return [
        _OfflineEmailRecognizer(tld_extract or offline_tld_extract()),
        CreditCardRecognizer(),
        _LinearIbanRecognizer(),
        _SsnRecognizer(patterns=_context_only(UsSsnRecognizer.PATTERNS), name="UsSsnRecognizer"),
        UsItinRecognizer(patterns=_context_only(UsItinRecognizer.PATTERNS)),
        UsPassportRecognizer(
            patterns=_context_only(UsPassportRecognizer.PATTERNS, keep_stronger=False),
            context=list(_CONTEXT_OVERRIDES["US_PASSPORT"]),
        ),
        UsBankRecognizer(
            patterns=_context_only(UsBankRecognizer.PATTERNS, keep_stronger=False),
            context=list(_CONTEXT_OVERRIDES["US_BANK_NUMBER"]),
        ),
        UsLicenseRecognizer(
            patterns=_context_only(UsLicenseRecognizer.PATTERNS, keep_stronger=False),
            context=list(_CONTEXT_OVERRIDES["US_DRIVER_LICENSE"]),
        ),
        _ContextualNhsRecognizer(
            patterns=_context_only(NhsRecognizer.PATTERNS, keep_stronger=False),
            name="NhsRecognizer",
        ),
        DateRecognizer(
            patterns=_context_only(DateRecognizer.PATTERNS, keep_stronger=False),
            context=list(_CONTEXT_OVERRIDES["DATE_OF_BIRTH"]),
            supported_entity="DATE_OF_BIRTH",
            name="DateOfBirthRecognizer",
        ),
        _PhoneRecognizer(name=_PhoneRecognizer.NAME),
        _PublicIpRecognizer(name="IpRecognizer"),
        StreetAddressRecognizer(),
        *build_intl_recognizers(),
    ]


# --- the NLP engine: tokens and lemmas, NER only with a configured model -------------------


def _is_punct(word: str) -> bool:
    """spaCy's own rule for ``Lexeme.is_punct``, without interning the word in a vocab."""
    return bool(word) and all(unicodedata.category(c).startswith("P") for c in word)


def _blank_pipeline() -> Language:
    nlp = spacy.blank(LANGUAGE)
    # spaCy refuses texts over a million characters to protect its parser and NER, which a
    # blank pipeline does not run; tokenizing a long prompt is linear.
    nlp.max_length = _MAX_PROMPT_CHARS
    return nlp


class _TokenizingNlpEngine(NlpEngine):
    """A Presidio NLP engine over one spaCy pipeline: blank by default, or a loaded model.

    With a blank pipeline a token's lemma is its lower-cased text (a blank pipeline has no
    lemmatizer, and empty lemmas would never match a context word). With a model the
    model's lemma is used where it has one, and its PERSON/LOCATION entities are kept.

    spaCy pipelines are not documented as thread-safe and intern every token they see, so
    one lock covers running the pipeline; the blank pipeline is rebuilt when its string
    store gets large (a model is kept as loaded).
    """

    def __init__(self, model: Language | None = None, context_words: Iterable[str] = (), *, local: bool = True) -> None:
        self._model = model
        # Without a model, tokenize only around matches (see _LocalArtifacts); ``local=False``
        # tokenizes the whole text as Presidio would (the tests compare the two).
        self._local = local
        self._nlp: Language = model if model is not None else _blank_pipeline()
        # A recognizer's context word is never a stop word: spaCy lists "call", which would
        # otherwise be dropped before it could support a phone number.
        keep = {w.lower() for w in context_words}
        self._stop_words = frozenset(w.lower() for w in self._nlp.Defaults.stop_words) - keep
        self._lock = threading.Lock()

    # NlpEngine's abstract interface.
    def load(self) -> None:
        """Nothing to do: the pipeline is built in the constructor."""

    def is_loaded(self) -> bool:
        return True

    def process_text(self, text: str, language: str) -> NlpArtifacts:
        self._check_language(language)
        if self._model is None and self._local:
            return _LocalArtifacts(text, self, language)
        with self._lock:
            if self._model is None and len(self._nlp.vocab.strings) > _MAX_VOCAB_STRINGS:
                self._nlp = _blank_pipeline()
            doc = self._nlp(text)
        return self._artifacts(doc, language)

    def tokenize_block(self, block: str) -> list[tuple[int, int, str]]:
        """``(offset, length, lemma)`` of each token of ``block``, as the blank pipeline splits it."""
        with self._lock:
            if len(self._nlp.vocab.strings) > _MAX_VOCAB_STRINGS:
                self._nlp = _blank_pipeline()
            doc = self._nlp.tokenizer(block)
        if not len(doc):
            return []
        return [(int(i), int(n), block[i : i + n].lower()) for i, n in doc.to_array([IDX, LENGTH]).tolist()]

    def is_keyword(self, lemma: str) -> bool:
        """Whether Presidio's ``NlpArtifacts.set_keywords`` keeps ``lemma`` whole."""
        return (
            ":" not in lemma
            and lemma not in self._stop_words
            and not _is_punct(lemma)
            and lemma not in ("-pron-", "be")
        )

    def process_batch(
        self,
        texts: Iterable[str],
        language: str,
        batch_size: int = 1,
        n_process: int = 1,
        **kwargs: Any,
    ) -> Iterator[tuple[str, NlpArtifacts]]:
        for text in texts:
            yield text, self.process_text(text, language)

    def is_stopword(self, word: str, language: str) -> bool:
        return word.lower() in self._stop_words

    def is_punct(self, word: str, language: str) -> bool:
        return _is_punct(word)

    def get_supported_entities(self) -> list[str]:
        return sorted(set(_NER_LABELS.values())) if self._model is not None else []

    def get_supported_languages(self) -> list[str]:
        return [LANGUAGE]

    def _check_language(self, language: str) -> None:
        if language != LANGUAGE:
            raise ValueError(f"language {language!r} is not supported (only {LANGUAGE!r})")

    def _artifacts(self, doc: Doc, language: str) -> NlpArtifacts:
        entities = [
            SpacySpan(doc, ent.start, ent.end, label=_NER_LABELS[ent.label_])
            for ent in doc.ents
            if ent.label_ in _NER_LABELS
        ]
        artifacts = NlpArtifacts(
            entities=entities,
            tokens=doc,
            tokens_indices=[token.idx for token in doc],
            lemmas=[token.lemma_ or token.lower_ for token in doc],
            nlp_engine=self,
            language=language,
            scores=[_NER_SCORE] * len(entities),
        )
        artifacts.keywords = _KeywordList(artifacts.keywords)
        return artifacts


# Context is looked up in blocks of about this many characters, cut where whitespace ends (so
# that each block tokenizes exactly as it would inside the whole text), and at most
# _MAX_CONTEXT_BLOCKS blocks either side of a match: a context word further than that from a
# match, past nothing but stop words and punctuation, is not seen.
_CONTEXT_BLOCK_CHARS = 256
_MAX_CONTEXT_BLOCKS = 16
# A block boundary is searched for this far; a run of non-space characters longer than that is
# cut anyway (its tokens at the cut may then differ from spaCy's over the whole run).
_MAX_BOUNDARY_SEARCH = 256
_SPACE_THEN_WORD = re.compile(r"\s(?=\S)")
_LETTER = re.compile(r"[^\W\d_]")


class _LocalTokens:
    """Stands in for a Doc in :class:`_LocalArtifacts`: truthy, so Presidio asks for context."""

    def __bool__(self) -> bool:
        return True


class _LocalArtifacts(NlpArtifacts):
    """NLP artifacts of a blank pipeline that tokenize only where a match needs context.

    Presidio's only use of a blank pipeline's tokens is the context step: for each match, the
    lemmas of the few keyword tokens before it. Tokenizing and lemmatising the whole text costs
    seconds per megabyte of digits or punctuation (spaCy interns every new token), so the text
    is tokenized block by block, on demand, and each block once. Blocks start right after
    whitespace, where spaCy's tokenizer starts afresh, so their tokens are the ones the whole
    text would have.
    """

    def __init__(self, text: str, engine: _TokenizingNlpEngine, language: str) -> None:
        super().__init__(
            entities=[],
            tokens=_LocalTokens(),  # type: ignore[arg-type]
            tokens_indices=[],
            lemmas=[],
            nlp_engine=engine,
            language=language,
        )
        self.text = text
        self._engine = engine
        self._starts: list[int] = []  # block k is text[starts[k]:starts[k+1]]
        self._blocks: dict[int, list[tuple[int, int, str]]] = {}
        self._lettered: list[int] | None = None  # blocks holding a letter, cumulative
        self._cut_blocks(len(text))

    def _cut_blocks(self, length: int) -> None:
        text, position = self.text, 0
        while position < length:
            self._starts.append(position)
            target = position + _CONTEXT_BLOCK_CHARS
            if target >= length:
                break
            found = _SPACE_THEN_WORD.search(text, target - 1, min(length, target + _MAX_BOUNDARY_SEARCH))
            position = found.end() if found else min(length, target + _MAX_BOUNDARY_SEARCH)
        self._starts.append(length)

    def block_of(self, position: int) -> int:
        return max(0, bisect.bisect_right(self._starts, position) - 1)

    def block(self, k: int) -> list[tuple[int, int, str]]:
        """Tokens of block ``k`` as (offset in the text, length, lemma)."""
        tokens = self._blocks.get(k)
        if tokens is None:
            start, end = self._starts[k], self._starts[k + 1]
            tokens = [(start + i, n, lemma) for i, n, lemma in self._engine.tokenize_block(self.text[start:end])]
            self._blocks[k] = tokens
        return tokens

    def _letters_near(self, k: int) -> bool:
        """Whether a block within reach of block ``k`` (either side) holds a letter."""
        if self._lettered is None:
            counts = [0]
            for b in range(self.block_count):
                has = _LETTER.search(self.text, self._starts[b], self._starts[b + 1]) is not None
                counts.append(counts[-1] + has)
            self._lettered = counts
        lo = max(0, k - _MAX_CONTEXT_BLOCKS)
        hi = min(self.block_count, k + _MAX_CONTEXT_BLOCKS + 1)
        return self._lettered[hi] > self._lettered[lo]

    @property
    def block_count(self) -> int:
        return len(self._starts) - 1

    def context(self, start: int, before: int, after: int) -> list[str]:
        """The keyword lemmas Presidio's enhancer collects around a match starting at ``start``:
        up to ``before + 1`` back from (and ``after + 1`` on from) the token holding it."""
        k = self.block_of(start)
        if not self._letters_near(k):
            # Every context word has a letter: with none within reach, none can support the
            # match (Presidio would collect only numbers and symbols), so skip tokenizing.
            return []
        # The token holding ``start``: the first whose end lies past it (Presidio's rule).
        tokens = self.block(k)
        index = next((i for i, (offset, length, _) in enumerate(tokens) if start < offset + length), None)
        if index is None:
            k, index = k + 1, 0
        words: list[str] = []
        for step, limit in ((-1, before + 1), (1, after + 1)):
            block, remaining = k, limit
            i: int | None = index
            while remaining > 0 and 0 <= block < self.block_count and abs(block - k) <= _MAX_CONTEXT_BLOCKS:
                tokens = self.block(block)
                if i is None:
                    i = len(tokens) - 1 if step < 0 else 0
                while 0 <= i < len(tokens) and remaining > 0:
                    lemma = tokens[i][2]
                    if self._engine.is_keyword(lemma):
                        words.append(lemma)
                        remaining -= 1
                    i += step
                block, i = block + step, None
        return list(set(words))


class _KeywordList(list[str]):
    """Presidio's keyword list with set-speed ``in``: its context step asks, for every
    match, whether each nearby lemma is a keyword, which on a list is quadratic."""

    def __init__(self, items: Iterable[str]) -> None:
        super().__init__(items)
        self._members = frozenset(self)

    def __contains__(self, item: object) -> bool:
        return item in self._members


class _ContextEnhancer(LemmaContextAwareEnhancer):
    """Presidio's lemma context enhancer, whole words, with a logarithmic token lookup.

    Presidio scans the tokens from the start for every match, which is quadratic on a long
    prompt full of numbers. Tokens never overlap, so the token holding a match is found by
    bisection; the answer is the same (and the error names no matched text).
    """

    def __init__(self) -> None:
        # Whole words: with substring matching "us" would match "use" and "business".
        super().__init__(context_matching_mode="whole_word")

    def _extract_surrounding_words(self, nlp_artifacts: NlpArtifacts, word: str, start: int) -> list[str]:
        if isinstance(nlp_artifacts, _LocalArtifacts):
            return nlp_artifacts.context(start, self.context_prefix_count, self.context_suffix_count)
        return list(super()._extract_surrounding_words(nlp_artifacts, word, start))

    @staticmethod
    def _find_index_of_match_token(word: str, start: int, tokens: Any, tokens_indices: list[int]) -> int:
        i = bisect.bisect_right(tokens_indices, start) - 1
        if i >= 0 and start < tokens_indices[i] + len(tokens[i]):
            return i
        if i + 1 < len(tokens_indices):
            return i + 1
        raise ValueError("no token covers the match")


def _load_spacy_model(model: str) -> Language:
    """Load a configured spaCy model by package name or path; never download one."""
    try:
        nlp = spacy.load(model)
    except (OSError, ImportError, ValueError) as exc:
        raise SpacyModelUnavailableError(
            f"spaCy model {model!r} is configured for the presidio detector but cannot be "
            "loaded (it is neither an installed model package nor a model directory, or it "
            "is incompatible with this spaCy); install it, fix the name, or leave "
            f"spacy_model unset to use Presidio's patterns only: {exc}"
        ) from exc
    if "parser" in nlp.pipe_names:  # sentence structure is not needed for context words
        nlp.disable_pipe("parser")
    return nlp


# --- the detector ---------------------------------------------------------------------------


def _explanation(result: RecognizerResult, value: str) -> str:
    """Name the recognizer, pattern and context word; never the matched value."""
    meta = result.recognition_metadata or {}
    recognizer = str(meta.get(RecognizerResult.RECOGNIZER_NAME_KEY) or "presidio recognizer")
    parts = [f"{recognizer} found {result.entity_type}"]
    explanation = result.analysis_explanation
    if explanation is not None:
        if explanation.pattern_name:
            parts.append(f"pattern '{explanation.pattern_name}'")
        if explanation.validation_result:
            parts.append("checksum/format validated")
        if explanation.supportive_context_word:
            parts.append(f"context word '{explanation.supportive_context_word}'")
    text = "; ".join(parts)
    if value and value.strip().lower() in text.lower():
        # A pattern or context word that happens to equal the value must not leak it.
        text = f"{recognizer} found {result.entity_type}"
        if value.strip().lower() in text.lower():
            text = "presidio recognizer"
    return text


def _without_overlaps(findings: Iterable[Finding]) -> list[Finding]:
    """Keep one finding per stretch of text: the strongest (then the longest).

    Presidio's recognizers overlap (a formatted SSN is also phone-like, a card number holds
    bank-number-like digit runs); counting one value as two kinds of evidence would inflate
    the topic's noisy-or. Kept spans never overlap, so each new span only needs checking
    against its two neighbours: O(n log n) however many matches a prompt has.
    """
    starts: list[int] = []  # kept spans, sorted by start
    ends: list[int] = []
    kept: list[Finding] = []
    for finding in sorted(findings, key=_strongest_first):
        span = finding.span
        if span is not None:
            i = bisect.bisect_right(starts, span.start)
            if (i > 0 and ends[i - 1] > span.start) or (i < len(starts) and starts[i] < span.end):
                continue
            starts.insert(i, span.start)
            ends.insert(i, span.end)
        kept.append(finding)
    return sorted(kept, key=lambda f: (f.span.start if f.span else -1, f.kind))


def _strongest_first(finding: Finding) -> tuple[float, int, int, str]:
    span = finding.span or Span(-1, -1)
    return (-finding.score, span.start, span.start - span.end, finding.kind)


def pii_topic_score(findings: Iterable[Finding]) -> float:
    """The PII topic's score from findings: max within a kind, noisy-or across kinds.

    An email and an SSN together are surer evidence than either alone; three emails are not
    surer than one. Findings of other topics are ignored.
    """
    best: dict[str, float] = {}
    for finding in findings:
        if finding.topic is not Topic.PII:
            continue
        score = min(max(finding.score, 0.0), 1.0)
        best[finding.kind] = max(best.get(finding.kind, 0.0), score)
    miss = 1.0
    for score in best.values():
        miss *= 1.0 - score
    return 1.0 - miss


class PresidioDetector:
    """PII findings from Presidio pattern recognizers (plus NER when a model is configured).

    :param spacy_model: a spaCy model package name or directory to use for tokens, lemmas
        and PERSON/LOCATION entities; ``None`` (the default) uses a blank English pipeline
        and patterns only. A configured model that cannot be loaded raises
        :class:`SpacyModelUnavailableError` rather than silently running without it.
    :param rules: per-entity weight and minimum score; :data:`ENTITY_RULES` by default.
        Entities without a rule are not reported.

    ``detect`` is safe to call from several threads at once.
    """

    name = "presidio"

    def __init__(
        self,
        spacy_model: str | None = None,
        *,
        rules: Mapping[str, EntityRule] | None = None,
        local_context: bool = True,
    ) -> None:
        self.version = f"presidio-analyzer {_package_version('presidio-analyzer')}"
        # Without a model: tokenize only around matches (False: the whole text, as Presidio does).
        self.local_context = local_context
        self.spacy_model = spacy_model
        self._rules: Mapping[str, EntityRule] = dict(ENTITY_RULES if rules is None else rules)
        model = _load_spacy_model(spacy_model) if spacy_model else None
        tld_extract = offline_tld_extract()
        recognizers = build_recognizers(tld_extract)
        if model is not None:
            recognizers.append(
                SpacyRecognizer(
                    supported_language=LANGUAGE,
                    supported_entities=sorted(set(_NER_LABELS.values())),
                    ner_strength=_NER_SCORE,
                )
            )
        context_words = [w for r in recognizers for w in (r.context or ())]
        # _LocalArtifacts skips context lookups where no letter is within reach.
        assert all(_LETTER.search(w) for w in context_words), "a context word without a letter"
        registry = RecognizerRegistry(recognizers=recognizers, supported_languages=[LANGUAGE])
        self._analyzer = AnalyzerEngine(
            registry=registry,
            nlp_engine=_TokenizingNlpEngine(model, context_words, local=local_context),
            supported_languages=[LANGUAGE],
            context_aware_enhancer=_ContextEnhancer(),
        )
        self._entities = sorted(e for e in self._analyzer.get_supported_entities(LANGUAGE) if e in self._rules)
        # Warm up once, single-threaded: Presidio compiles each pattern on first use and
        # tldextract reads its suffix-list snapshot on first use.
        tld_extract("example.com")
        self.detect(_WARM_UP_TEXT)
        _cap_patterns(recognizers)

    def worker_factory(self) -> Callable[[], PresidioDetector]:
        """A picklable way to build this detector again in a worker process."""
        return functools.partial(
            PresidioDetector, self.spacy_model, rules=dict(self._rules), local_context=self.local_context
        )

    @property
    def entities(self) -> tuple[str, ...]:
        """The Presidio entities this detector reports."""
        return tuple(self._entities)

    def detect(self, text: str) -> Sequence[Finding]:
        return self.detect_with_notes(text)[0]

    # The engine passes each chunk's share of the prompt (classifiers/workers.py).
    takes_share = True

    def detect_with_notes(self, text: str, share: float = 1.0) -> tuple[Sequence[Finding], tuple[str, ...]]:
        """Findings, and notes when a pattern reached its match cap or timed out.

        ``share``: the part of the prompt ``text`` is (a chunk), which gets that part of the
        inspection's budget of failed phone-number candidates.
        """
        _STATE.capped = _STATE.timed_out = False
        _STATE.phone_tries = max(_PHONE_MIN_TRIES, round(_PHONE_MAX_TRIES * min(max(share, 0.0), 1.0)))
        findings = self._detect(text)
        notes = ((CAPPED_NOTE,) if _STATE.capped else ()) + ((REGEX_TIMEOUT_NOTE,) if _STATE.timed_out else ())
        return findings, notes

    def _detect(self, text: str) -> Sequence[Finding]:
        if not text.strip():
            return ()
        results = self._analyzer.analyze(
            text=text,
            language=LANGUAGE,
            entities=list(self._entities),
            return_decision_process=True,
        )
        findings: list[Finding] = []
        for result in results:
            rule = self._rules.get(result.entity_type)
            if rule is None or result.score < rule.min_score:
                continue
            findings.append(
                Finding(
                    detector=self.name,
                    kind=KIND_PREFIX + result.entity_type,
                    topic=Topic.PII,
                    score=min(max(rule.weight * result.score, 0.0), 1.0),
                    span=Span(result.start, result.end),
                    explanation=_explanation(result, text[result.start : result.end]),
                )
            )
        return tuple(_without_overlaps(findings))
