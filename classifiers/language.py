"""Which language(s) a prompt is written in, segment by segment.

The embedded intent head and the English phrase cues read English only; a policy must be able
to tell a prompt they cannot read from a harmless one (issue 15). This module names the
languages of a prompt, so that the engine can say which (language, topic) pairs no detector that
ran covers (:class:`promptfence.core.LanguageGap`) and route non-English text to the
multilingual head.

Identification is py3langid (BSD-3-Clause; its naive-Bayes model over byte n-grams ships inside
the wheel, nothing is downloaded), helped by the script of each segment: Hangul is Korean,
kana is Japanese, Han without kana is Chinese (py3langid's byte n-grams confuse the three on
short texts). A prompt is cut into segments (lines and sentences, short ones merged) and each is
identified on its own, so a German request pasted under an English one counts as German too.
Segments with too few letters (code, digits, base64) say nothing and are skipped; a prompt with
no confident segment is ``und`` (ISO 639-2 "undetermined"), which the engine treats as readable
by every detector: not knowing is never a reason to drop evidence.

The work is bounded whatever the prompt: at most :data:`MAX_SEGMENTS` segments of at most
:data:`MAX_SEGMENT_CHARS` characters, sampled evenly across a long text.
"""

from __future__ import annotations

import re
import threading
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from promptfence.core import Topic
from promptfence.errors import ConfigError

UNDETERMINED = "und"
# py3langid's label for text without linguistic content (code, markup, digits).
NO_LANGUAGE = frozenset({"zxx"})

MAX_SEGMENTS = 24
MAX_SEGMENT_CHARS = 400
MIN_SEGMENT_LETTERS = 12  # fewer letters than this: no language (a code line, a number)
MERGE_BELOW_CHARS = 60  # short sentences are merged with the next before identification
# A segment counts when py3langid is this sure (probabilities normalised over its languages).
MIN_PROBABILITY = 0.5
# A language is named when its segments hold at least this share of the identified letters.
MIN_SHARE = 0.15
# Texts longer than this are not split whole: segments are taken at evenly spaced offsets.
SAMPLE_DIRECTLY_CHARS = 64 * 1024

_SEGMENT = re.compile(r"[^\n.!?。！？]+[.!?。！？]*")


@dataclass(frozen=True)
class LanguageShare:
    """One language of a prompt and the share of its identified letters written in it."""

    language: str
    share: float


def _script(char: str) -> str:
    """A coarse script name for one letter: what decides CJK before py3langid is asked."""
    code = ord(char)
    if 0xAC00 <= code <= 0xD7AF or 0x1100 <= code <= 0x11FF or 0x3130 <= code <= 0x318F:
        return "hangul"
    if 0x3040 <= code <= 0x30FF or 0x31F0 <= code <= 0x31FF or 0xFF66 <= code <= 0xFF9F:
        return "kana"
    if 0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0xF900 <= code <= 0xFAFF:
        return "han"
    return "other"


def _letters(text: str) -> list[str]:
    return [c for c in text if c.isalpha()]


def script_language(text: str) -> str | None:
    """The language a CJK script says for itself, or None when the letters are not CJK.

    Hangul anywhere (a fifth of the letters) is Korean; kana is Japanese (Japanese mixes kana
    with Han); Han alone is Chinese. One CJK letter counts for as much as a Latin word does."""
    letters = _letters(text)
    if not letters:
        return None
    counts = {"hangul": 0, "kana": 0, "han": 0}
    for char in letters:
        script = _script(char)
        if script in counts:
            counts[script] += 1
    cjk = sum(counts.values())
    # A CJK letter carries about a word's worth of text: compare with the Latin words, not letters.
    other_words = len(re.findall(r"[^\W\d_]{2,}", "".join(c if _script(c) == "other" else " " for c in text)))
    if cjk == 0 or cjk < other_words:
        return None
    if counts["hangul"] * 5 >= cjk:
        return "ko"
    if counts["kana"] * 10 >= cjk:
        return "ja"
    return "zh"


def segments(text: str, limit: int = MAX_SEGMENTS) -> list[str]:
    """Lines and sentences of ``text``, short ones merged, at most ``limit`` (evenly spread)."""
    if len(text) > SAMPLE_DIRECTLY_CHARS:
        step = len(text) // limit
        return [text[i * step : i * step + MAX_SEGMENT_CHARS] for i in range(limit)]
    found: list[str] = []
    pending = ""
    for match in _SEGMENT.finditer(text):
        piece = match.group(0).strip()
        if not piece:
            continue
        pending = f"{pending} {piece}" if pending else piece
        if len(pending) >= MERGE_BELOW_CHARS:
            found.append(pending[:MAX_SEGMENT_CHARS])
            pending = ""
    if pending:
        if found and len(pending) < MERGE_BELOW_CHARS // 2 and len(found[-1]) + len(pending) < MAX_SEGMENT_CHARS:
            found[-1] = f"{found[-1]} {pending}"
        else:
            found.append(pending[:MAX_SEGMENT_CHARS])
    if len(found) > limit:
        spacing = (len(found) - 1) / max(limit - 1, 1)
        found = [found[round(i * spacing)] for i in range(limit)]
    return found


class LanguageIdentifier:
    """py3langid's model, loaded once per process (decompressing it takes seconds) and shared
    by threads (classification reads the model only)."""

    _lock = threading.Lock()
    _model: Any = None

    @classmethod
    def model(cls) -> Any:
        with cls._lock:
            if cls._model is None:
                from py3langid.langid import MODEL_FILE  # type: ignore[import-untyped]
                from py3langid.langid import LanguageIdentifier as _Model

                cls._model = _Model.from_model_file(MODEL_FILE, norm_probs=True)
            return cls._model

    @classmethod
    def classify(cls, segment: str) -> tuple[str, float]:
        language, probability = cls.model().classify(segment)
        return str(language), float(probability)


def identify_segment(segment: str) -> str | None:
    """One segment's language, or None when it has too few letters or no confident answer."""
    letters = _letters(segment)
    by_script = script_language(segment)
    if by_script is not None:
        return by_script if len(letters) >= 4 else None
    if len(letters) < MIN_SEGMENT_LETTERS:
        return None
    # Accents and compatibility forms confuse byte n-grams less once composed.
    language, probability = LanguageIdentifier.classify(unicodedata.normalize("NFC", segment))
    if probability < MIN_PROBABILITY or language in NO_LANGUAGE:
        return None
    return language


def identify(text: str) -> tuple[LanguageShare, ...]:
    """The languages of ``text``, most written first; ``(und, 1.0)`` when none is clear."""
    letters_by_language: dict[str, int] = {}
    for segment in segments(text):
        language = identify_segment(segment)
        if language is not None:
            weight = len(_letters(segment))
            letters_by_language[language] = letters_by_language.get(language, 0) + weight
    total = sum(letters_by_language.values())
    if not total:
        return (LanguageShare(UNDETERMINED, 1.0),)
    shares = sorted(
        (LanguageShare(lang, n / total) for lang, n in letters_by_language.items()),
        key=lambda s: (-s.share, s.language),
    )
    kept = tuple(s for s in shares if s.share >= MIN_SHARE) or shares[:1]
    return tuple(kept)


def languages(text: str) -> tuple[str, ...]:
    """Only the language codes of :func:`identify`."""
    return tuple(s.language for s in identify(text))


def reads(detector_languages: Sequence[str] | None, prompt_languages: Sequence[str]) -> bool:
    """Whether a detector reading ``detector_languages`` (None: any) can read a prompt in
    ``prompt_languages``: one shared language suffices, and ``und`` is readable by all."""
    if detector_languages is None or not prompt_languages or UNDETERMINED in prompt_languages:
        return True
    return any(lang in detector_languages for lang in prompt_languages)


COVERAGE_FILE = Path(__file__).parent / "data" / "language_coverage.yaml"


@dataclass(frozen=True)
class Coverage:
    """The languages one detector reads (None: any) and whether its findings on a prompt in
    none of them are dropped."""

    languages: frozenset[str] | None = None
    drop_outside: bool = False
    # ``outside: discard``: dropped outside its languages even where no other detector reads
    # the topic (the topic is then uncovered there), for a detector whose score is noise there.
    discard_outside: bool = False
    # Topics whose findings are kept even outside those languages (``keep_topics``).
    keep_topics: frozenset[Topic] = frozenset()


def load_coverage(path: Path = COVERAGE_FILE) -> dict[str, Coverage]:
    """detector name -> :class:`Coverage`, from classifiers/data/language_coverage.yaml."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    detectors = data.get("detectors") if isinstance(data, dict) else None
    if not isinstance(detectors, dict):
        raise ConfigError("expected a 'detectors' mapping", source=str(path))
    result: dict[str, Coverage] = {}
    for name, entry in detectors.items():
        where = f"detectors.{name}"
        if not isinstance(entry, dict) or set(entry) - {"languages", "outside", "keep_topics"}:
            raise ConfigError("expected {languages, outside, keep_topics}", source=str(path), field=where)
        try:
            keep = frozenset(Topic(t) for t in entry.get("keep_topics", []))
        except (TypeError, ValueError):
            raise ConfigError("keep_topics lists topics", source=str(path), field=f"{where}.keep_topics") from None
        langs = entry.get("languages", "any")
        outside = entry.get("outside", "keep")
        if outside not in ("keep", "drop", "discard"):
            raise ConfigError("outside is keep, drop or discard", source=str(path), field=f"{where}.outside")
        drop, discard = outside in ("drop", "discard"), outside == "discard"
        if langs == "any":
            result[str(name)] = Coverage(None, drop, discard, keep)
            continue
        if not isinstance(langs, list) or not all(isinstance(x, str) and _CODE.match(x) for x in langs):
            raise ConfigError(
                "languages is any or a list of ISO 639 codes", source=str(path), field=f"{where}.languages"
            )
        result[str(name)] = Coverage(frozenset(langs), drop, discard, keep)
    return result


_CODE = re.compile(r"^[a-z]{2,3}$")


def gaps(
    prompt_languages: Sequence[str],
    covered: Mapping[str, Iterable[Topic]],
    coverage: Mapping[str, Coverage],
) -> tuple[tuple[str, Topic], ...]:
    """Each (language, topic) of the prompt that no detector in ``covered`` (name -> the topics
    it covers, for the detectors that ran) reads. An undetermined prompt has no gaps of its own:
    its topics are those in Inspection.uncovered."""
    found: list[tuple[str, Topic]] = []
    for language in prompt_languages:
        if language == UNDETERMINED:
            continue
        read: set[Topic] = set()
        for name, topics in covered.items():
            entry = coverage.get(name, Coverage())
            if entry.languages is None or language in entry.languages:
                read.update(topics)
        found.extend((language, topic) for topic in Topic if topic not in read)
    return tuple(found)
