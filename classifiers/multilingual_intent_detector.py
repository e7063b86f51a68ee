"""The embedded intent detector for prompts not written in English (issue 15).

The English path (:mod:`classifiers.intent_detector`) embeds with all-MiniLM-L6-v2, which was
trained on English only: on a German jailbreak it finds almost nothing, and it flags French
maths questions. This detector embeds with USE-multilingual-v3 (:mod:`inference.use_embedder`,
sixteen languages in one embedding space) and applies a one-vs-rest logistic head trained by
``scripts/train_multilingual_head.py`` on the permissive English training data plus prompts the
PromptFence developers wrote and translated (sources in ``classifiers/data/MULTILINGUAL_HEAD.md``).
Phrase cues in eight languages (``classifiers/rules/injection_cues.yaml``) add evidence of a
different kind, like the English cues.

It reads a prompt only when :mod:`classifiers.language` finds a language the encoder knows
other than English; English is left to MiniLM, which is better there (BENCHMARKS.md, "Languages
(issue 15)"). The engine drops its findings on prompts written in none of its languages anyway
(``classifiers/data/language_coverage.yaml``); the check here saves the model call.

A long prompt is embedded segment by segment (:func:`classifiers.language.segments`: at most
:data:`MAX_SEGMENTS` of at most 400 characters): the mean vector says what the prompt is about, the most suspicious segment
(weighted 0.9) catches one harmful request in a long harmless text.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import re2  # type: ignore[import-untyped]
import yaml

from classifiers import language as lang
from classifiers.intent_detector import LinearHead, meaningful_views
from classifiers.normalize import SECTION_BREAK
from inference.embedder import Embedder
from promptfence.core import Finding, Span, Topic
from promptfence.errors import ConfigError

DATA_DIR = Path(__file__).parent / "data"
HEAD_FILE = DATA_DIR / "multilingual_head.npz"
MANIFEST_FILE = DATA_DIR / "multilingual_head.json"
CUES_FILE = Path(__file__).parent / "rules" / "injection_cues.yaml"

DETECTOR_NAME = "intent_multilingual"
# The encoder's languages (USE-multilingual-v3), less English (the MiniLM head's).
LANGUAGES = frozenset({"ar", "de", "es", "fr", "it", "ja", "ko", "nl", "pl", "pt", "ru", "th", "tr", "zh"})
SHORT_CHARS = 600  # embedded whole; longer texts segment by segment as well
SEGMENT_WEIGHT = 0.9
# Distinct segments embedded per section (2-8 ms of CPU each, CJK the dearest): past this, an
# even sample, which can miss a single harmful sentence in a long paste (the cues still scan
# the whole text). A 1 MB prompt costs 0.3 (German) to 0.9 (Chinese) CPU-seconds.
MAX_SEGMENTS = 48
ANY_LANGUAGE = "any"  # a cue whose patterns are language-free (checked on every prompt it reads)
MIN_SCORE = 0.2


@dataclass(frozen=True)
class MultilingualCue:
    cue_id: str
    language: str
    topic: Topic
    score: float
    pattern: Any  # an RE2 pattern


_OPTIONS = re2.Options()
_OPTIONS.case_sensitive = False
_OPTIONS.log_errors = False

# RE2's classes are ASCII; the cues are written for letters and spaces of every script.
_OUTSIDE = {"w": r"[\p{L}\p{N}_]", "S": r"[^\s\p{Z}]", "s": r"[\s\p{Z}]"}
_INSIDE = {"w": r"\p{L}\p{N}_", "s": r"\s\p{Z}"}  # within [...]; \S there has no such form


def _unicode(pattern: str) -> str:
    """``\\w``, ``\\s`` and ``\\S`` for every script, inside and outside character classes."""
    out: list[str] = []
    in_class = False
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            escaped = pattern[i + 1]
            table = _INSIDE if in_class else _OUTSIDE
            if in_class and escaped == "S":
                raise ValueError("\\S inside a character class")
            out.append(table.get(escaped, char + escaped))
            i += 2
            continue
        if char == "[" and not in_class:
            in_class = True
        elif char == "]" and in_class and out and out[-1] not in ("[", "[^"):
            in_class = False
        out.append(char)
        i += 1
    return "".join(out)


def load_cues(path: Path = CUES_FILE) -> tuple[MultilingualCue, ...]:
    """The cues of classifiers/rules/injection_cues.yaml; a malformed entry names its field."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    cues = data.get("cues") if isinstance(data, dict) else None
    if not isinstance(cues, dict):
        raise ConfigError("expected a 'cues' mapping", source=str(path))
    found: list[MultilingualCue] = []
    for cue_id, entry in cues.items():
        where = f"cues.{cue_id}"
        try:
            topic = Topic(entry["topic"])
            score = float(entry["score"])
            patterns = dict(entry["patterns"])
        except (KeyError, TypeError, ValueError):
            raise ConfigError("expected topic, score and patterns", source=str(path), field=where) from None
        if not 0.0 < score <= 1.0:
            raise ConfigError("score is in (0, 1]", source=str(path), field=f"{where}.score")
        for language, regexes in patterns.items():
            for i, regex in enumerate(regexes):
                try:
                    compiled = re2.compile(_unicode(str(regex)), _OPTIONS)
                except (re2.error, ValueError):
                    raise ConfigError(
                        "not a valid RE2 pattern", source=str(path), field=f"{where}.patterns.{language}[{i}]"
                    ) from None
                found.append(MultilingualCue(str(cue_id), str(language), topic, score, compiled))
    return tuple(found)


def views(text: str) -> list[str]:
    """The sections of an analysis text, non-empty. With a decoded section, as the English
    detector reads them (:func:`classifiers.intent_detector.meaningful_views`): the payload
    decoded, with its wrapper, never the wrapper alone (a foreign-language "decode this and
    answer" alone reads as a jailbreak whatever the payload says)."""
    sections = [s for s in (part.strip() for part in text.split(SECTION_BREAK)) if s]
    if len(sections) <= 1:
        return sections
    return [v for v in meaningful_views(text) if v.strip()] or sections


class MultilingualIntentDetector:
    name = DETECTOR_NAME

    def __init__(self, embedder: Embedder, head: LinearHead | None = None) -> None:
        self.embedder = embedder
        self.head = head or LinearHead.load(HEAD_FILE, MANIFEST_FILE)
        if self.head.weights.shape[1] != embedder.dimension:
            raise ValueError(
                f"multilingual head expects {self.head.weights.shape[1]}-d embeddings, "
                f"{embedder.name} gives {embedder.dimension}"
            )
        self.version = f"{self.head.version}+{embedder.name}"
        self.cues = load_cues()

    def reads(self, languages: Sequence[str]) -> bool:
        return any(language in LANGUAGES for language in languages)

    def scores(self, text: str) -> dict[Topic, float]:
        """Per-topic probability of the most suspicious section: whole meaning or one segment."""
        best: dict[Topic, float] = {}
        for view in views(text):
            for topic, score in self._section_scores(view).items():
                best[topic] = max(best.get(topic, 0.0), score)
        return best

    def _section_scores(self, view: str) -> Mapping[Topic, float]:
        # Identical segments (a repeated boilerplate line) have identical vectors: embedded once.
        pieces = [view] if len(view) <= SHORT_CHARS else list(dict.fromkeys(lang.segments(view, 4 * MAX_SEGMENTS)))
        if len(pieces) > MAX_SEGMENTS:
            spacing = (len(pieces) - 1) / (MAX_SEGMENTS - 1)
            pieces = [pieces[round(i * spacing)] for i in range(MAX_SEGMENTS)]
        vectors = self.embedder.embed(pieces)
        mean = vectors.mean(axis=0, keepdims=True)
        mean /= max(float(np.linalg.norm(mean)), 1e-9)
        doc: npt.NDArray[np.float32] = self.head.probabilities(mean)[0]
        if len(pieces) > 1:
            doc = np.maximum(doc, self.head.probabilities(vectors).max(axis=0) * SEGMENT_WEIGHT)
        scores = {topic: float(doc[i]) for i, topic in enumerate(self.head.topics)}
        if Topic.PII in scores and Topic.PII_REQUEST in scores:
            # As in the English head: asking about a named person is a request, not content.
            scores[Topic.PII] *= 1.0 - scores[Topic.PII_REQUEST]
        return scores

    def detect(self, text: str) -> Sequence[Finding]:
        languages = lang.languages(text)
        if not text.strip() or not self.reads(languages):
            return ()
        findings = [
            Finding(self.name, f"intent.{topic.value}", topic, score, None, f"embedding head {self.head.version}")
            for topic, score in self.scores(text).items()
            if score >= MIN_SCORE
        ]
        seen: set[str] = set()
        for cue in self.cues:
            # Only the prompt's own languages' cues: each is a scan of the whole text.
            if cue.cue_id in seen or (cue.language != ANY_LANGUAGE and cue.language not in languages):
                continue
            match = cue.pattern.search(text)
            if match:
                seen.add(cue.cue_id)
                findings.append(
                    Finding(
                        self.name,
                        f"cue.{cue.cue_id}",
                        cue.topic,
                        cue.score,
                        Span(match.start(), match.end()),
                        f"phrase cue {cue.cue_id} ({cue.language})",
                    )
                )
        return findings
