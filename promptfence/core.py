"""The shared vocabulary of PromptFence: one module every package may import.

Data flows one way: a flow becomes an :class:`Operation` (proxy), the operation's prompt an
:class:`Inspection` (classifiers), the inspection a :class:`Decision` (policies), and all three
a :class:`LogRecord` (logs). These types import nothing heavy (no mitmproxy, torch, faiss,
sqlalchemy, HTTP clients) so the proxy process stays lean and every test can build them.

Every type converts to and from plain JSON-able dicts because the inspection travels between
the proxy and the inspector processes over HTTP.
"""

from __future__ import annotations

import enum
import hashlib
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class Topic(enum.StrEnum):
    """The eight topics of the product description: five content topics, three intent topics."""

    PII = "PII"
    CREDENTIALS = "CREDENTIALS"
    SOURCE_CODE = "SOURCE_CODE"
    CUSTOMER_DATA = "CUSTOMER_DATA"
    FINANCIAL = "FINANCIAL"
    PII_REQUEST = "PII_REQUEST"
    MALICIOUS_CODE = "MALICIOUS_CODE"
    JAILBREAK = "JAILBREAK"

    @property
    def category(self) -> str:
        return "intent" if self in _INTENT_TOPICS else "content"


_INTENT_TOPICS = frozenset({Topic.PII_REQUEST, Topic.MALICIOUS_CODE, Topic.JAILBREAK})


class Confidence(enum.IntEnum):
    """Confidence levels a policy can require; scores underneath are in [0, 1]."""

    NONE = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3

    @classmethod
    def of(cls, score: float) -> Confidence:
        """Bucket a score: the thresholds are the one place where numbers become levels."""
        if score >= CONFIDENCE_THRESHOLDS[cls.HIGH]:
            return cls.HIGH
        if score >= CONFIDENCE_THRESHOLDS[cls.MEDIUM]:
            return cls.MEDIUM
        if score >= CONFIDENCE_THRESHOLDS[cls.LOW]:
            return cls.LOW
        return cls.NONE

    @classmethod
    def parse(cls, name: str) -> Confidence:
        try:
            return cls[name.strip().upper()]
        except KeyError:
            choices = ", ".join(c.name.lower() for c in cls if c is not cls.NONE)
            raise ValueError(f"unknown confidence {name!r} (expected one of: {choices})") from None


CONFIDENCE_THRESHOLDS: Mapping[Confidence, float] = {
    Confidence.LOW: 0.3,
    Confidence.MEDIUM: 0.6,
    Confidence.HIGH: 0.85,
}


class OperationKind(enum.StrEnum):
    """What a user does in an app, named the same across apps so one rule covers all apps."""

    SEND_PROMPT = "SendPrompt"
    SHARE = "Share"
    UPLOAD_FILE = "UploadFile"
    OTHER = "Other"
    # A request to a catalogue host that carries text on a path no operation maps: inspected by
    # the generic extractor so an unknown way to send a prompt is never a free pass.
    UNKNOWN = "Unknown"


class Action(enum.StrEnum):
    """Policy actions, ordered from least to most restrictive by :data:`ACTION_RANK`."""

    ALLOW = "allow"
    LOG = "log"
    REDACT = "redact"
    WARN = "warn"
    BLOCK = "block"


ACTION_RANK: Mapping[Action, int] = {
    Action.ALLOW: 0,
    Action.LOG: 1,
    Action.REDACT: 2,
    Action.WARN: 3,
    Action.BLOCK: 4,
}


_ROUTE_WORD = re.compile(r"^[A-Za-z][A-Za-z_.-]{0,31}$")
PATH_SHAPE_SEGMENTS = 4


def path_shape(path: str) -> str:
    """The route of a path without its data: what a record may say in clear, so requests on
    paths the catalogue does not map can be grouped and the catalogue extended. Only the first
    few segments are kept, and a segment that could carry data (digits, ids, long text) is
    ``{*}``; the full path is never in clear metadata."""
    segments = [seg for seg in path.split("?", 1)[0].split("/") if seg]
    shown = [seg if _ROUTE_WORD.match(seg) else "{*}" for seg in segments[:PATH_SHAPE_SEGMENTS]]
    return "/" + "/".join(shown) + ("/..." if len(segments) > PATH_SHAPE_SEGMENTS else "")


def text_digest(text: str) -> str:
    """A short, stable digest of a text: what plain-text logs may say instead of the text."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Identity:
    """Who sent the request, and how we know it."""

    user: str
    groups: tuple[str, ...] = ()
    source: str = "anonymous"
    client_address: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "groups": list(self.groups),
            "source": self.source,
            "client_address": self.client_address,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Identity:
        return cls(
            user=str(data["user"]),
            groups=tuple(str(g) for g in data.get("groups", ())),
            source=str(data.get("source", "anonymous")),
            client_address=data.get("client_address"),
        )


@dataclass(frozen=True)
class Operation:
    """A request mapped to an app and an operation, with what the user sent.

    ``prompt`` is the user's text and is sensitive: it is only ever inspected or sealed,
    never printed; ``repr`` hides it for that reason.
    """

    app: str
    app_type: str
    operation_id: str
    kind: OperationKind
    identity: Identity
    prompt: str = field(default="", repr=False)
    conversation_id: str | None = None
    message_id: str | None = None
    parent_message_id: str | None = None
    model: str | None = None
    attachments: tuple[str, ...] = field(default=(), repr=False)
    host: str = ""
    path: str = field(default="", repr=False)

    @property
    def has_prompt(self) -> bool:
        return bool(self.prompt.strip())

    def to_dict(self) -> dict[str, Any]:
        return {
            "app": self.app,
            "app_type": self.app_type,
            "operation_id": self.operation_id,
            "kind": self.kind.value,
            "identity": self.identity.to_dict(),
            "prompt": self.prompt,
            "conversation_id": self.conversation_id,
            "message_id": self.message_id,
            "parent_message_id": self.parent_message_id,
            "model": self.model,
            "attachments": list(self.attachments),
            "host": self.host,
            "path": self.path,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Operation:
        return cls(
            app=str(data["app"]),
            app_type=str(data.get("app_type", "genai_chat")),
            operation_id=str(data["operation_id"]),
            kind=OperationKind(data["kind"]),
            identity=Identity.from_dict(data.get("identity") or {"user": "anonymous"}),
            prompt=str(data.get("prompt", "")),
            conversation_id=data.get("conversation_id"),
            message_id=data.get("message_id"),
            parent_message_id=data.get("parent_message_id"),
            model=data.get("model"),
            attachments=tuple(str(a) for a in data.get("attachments", ())),
            host=str(data.get("host", "")),
            path=str(data.get("path", "")),
        )


@dataclass(frozen=True)
class Span:
    start: int
    end: int


@dataclass(frozen=True)
class Finding:
    """One detector's evidence for one topic.

    ``explanation`` names the rule or model that fired and never the matched value, so a
    finding can be shown in clear metadata and plain logs.
    """

    detector: str
    kind: str
    topic: Topic
    score: float
    span: Span | None
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "kind": self.kind,
            "topic": self.topic.value,
            "score": round(self.score, 4),
            "span": None if self.span is None else [self.span.start, self.span.end],
            "explanation": self.explanation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Finding:
        span = data.get("span")
        return cls(
            detector=str(data["detector"]),
            kind=str(data["kind"]),
            topic=Topic(data["topic"]),
            score=float(data["score"]),
            span=None if span is None else Span(int(span[0]), int(span[1])),
            explanation=str(data.get("explanation", "")),
        )


class DetectorStatus(enum.StrEnum):
    OK = "ok"
    FAILED = "failed"
    TIMEOUT = "timeout"
    INVALID_OUTPUT = "invalid_output"
    UNAVAILABLE = "unavailable"
    # The sender made the request impossible to inspect (oversize, undecodable, too deep): the
    # policy's on_uninspectable decides, never on_error.
    UNINSPECTABLE = "uninspectable"


@dataclass(frozen=True)
class DetectorRun:
    """What happened to one detector on one prompt: the Inspection keeps every run."""

    detector: str
    status: DetectorStatus
    elapsed_ms: float
    error: str | None = None

    @property
    def failed(self) -> bool:
        return self.status is not DetectorStatus.OK

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "status": self.status.value,
            "elapsed_ms": round(self.elapsed_ms, 2),
            "error": self.error,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DetectorRun:
        return cls(
            detector=str(data["detector"]),
            status=DetectorStatus(data["status"]),
            elapsed_ms=float(data.get("elapsed_ms", 0.0)),
            error=data.get("error"),
        )


@dataclass(frozen=True)
class TopicScore:
    topic: Topic
    score: float

    @property
    def confidence(self) -> Confidence:
        return Confidence.of(self.score)


@dataclass(frozen=True)
class Obfuscation:
    """One kind of disguise the normaliser undid before the detectors ran ("leet", "rot13",
    "base64", "homoglyphs", "zero_width", ...): evidence for policies (``obfuscated:``) and the
    log, never a verdict by itself. ``spans`` locate it in the prompt (a few, merged; none for
    whole-text transforms or inner layers); ``count`` says how many there were."""

    kind: str
    count: int = 1
    spans: tuple[Span, ...] = ()

    @property
    def label(self) -> str:
        return self.kind if self.count == 1 else f"{self.kind} x{self.count}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "count": self.count, "spans": [[s.start, s.end] for s in self.spans]}


@dataclass(frozen=True)
class NeighbourRef:
    """A remembered centroid that changed a topic's score: id and similarity, never any text.

    ``reason`` is ``fallback`` (its LLM labels stood in for a failed LLM), ``false_positive`` or
    ``true_positive`` (admins' reports on it moved the confidence); ``delta`` is its share of
    the change of ``topic``'s score.
    """

    centroid_id: int
    similarity: float
    topic: Topic
    delta: float
    reason: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.centroid_id,
            "similarity": round(self.similarity, 4),
            "topic": self.topic.value,
            "delta": round(self.delta, 4),
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> NeighbourRef:
        return cls(
            centroid_id=int(data["id"]),
            similarity=float(data["similarity"]),
            topic=Topic(data["topic"]),
            delta=float(data.get("delta", 0.0)),
            reason=str(data.get("reason", "")),
        )


# A custom topic's name (topic files, classifiers/custom_topics.py): upper-case like the built-in
# topics, so a policy names both the same way; a built-in name is never a custom topic.
CUSTOM_TOPIC_NAME = re.compile(r"^[A-Z][A-Z0-9_]{1,63}$")


def is_custom_topic_name(name: str) -> bool:
    return bool(CUSTOM_TOPIC_NAME.match(name)) and name not in {t.value for t in Topic}


def is_topic_name(name: str) -> bool:
    """A built-in topic or a custom topic's name: what a log filter may select."""
    return name in {t.value for t in Topic} or is_custom_topic_name(name)


@dataclass(frozen=True)
class CustomFinding:
    """Evidence for a company-defined topic (``PROJECT_FALCON``): which detector, how strong,
    and why (the nearest example's index and similarity), never the prompt's words. Built-in
    topics keep :class:`Finding`; custom topics are names, not :class:`Topic` members."""

    detector: str
    name: str
    score: float
    explanation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "detector": self.detector,
            "name": self.name,
            "score": round(self.score, 4),
            "explanation": self.explanation,
        }


# De-obfuscation that had to stop before the innermost text (classifiers/normalize.py): what was
# hidden past the bound was never inspected, and the sender chose to hide it that way.
UNINSPECTABLE_TRANSFORMS: Mapping[str, str] = {
    "decode_depth_exceeded": "encodings nested deeper than the decoder follows",
    "decode_sections_exceeded": "more encoded sections than the decoder opens",
}


@dataclass(frozen=True)
class Inspection:
    """What the classifiers found in one prompt; what policies read and logs record."""

    findings: tuple[Finding, ...]
    topics: Mapping[Topic, float]
    runs: tuple[DetectorRun, ...]
    elapsed_ms: float = 0.0
    # De-obfuscation applied before the detectors ran (e.g. "unicode", "base64", "rot13").
    transforms: tuple[str, ...] = ()
    # The same as evidence: what kind of disguise, how often, where (see Obfuscation).
    obfuscations: tuple[Obfuscation, ...] = ()
    # Topics no detector that ran is able to classify (see classifiers/topics.yaml).
    uncovered: tuple[Topic, ...] = ()
    # The prompt's languages (ISO 639-1, most written first; "und": undetermined) and each
    # (language, topic) pair no detector that ran reads (classifiers/data/language_coverage.yaml).
    languages: tuple[str, ...] = ()
    uncovered_languages: tuple[tuple[str, Topic], ...] = ()
    # Embedding memory (vectors/): the neighbours that moved a score, what the engine did with
    # the memory ("neighbour_fallback", "feedback_adjusted"), and the centroids this prompt's
    # redacted vector was assigned to, so `promptfence feedback` can teach them without the text.
    neighbours: tuple[NeighbourRef, ...] = ()
    notes: tuple[str, ...] = ()
    memory_tenant: str | None = None
    memory_centroids: tuple[int, ...] = ()
    # Company-defined topics (topic files): name -> score, and the evidence behind each.
    custom_topics: Mapping[str, float] = field(default_factory=dict)
    custom_findings: tuple[CustomFinding, ...] = ()

    def confidence(self, topic: Topic) -> Confidence:
        return Confidence.of(self.topics.get(topic, 0.0))

    def custom_confidence(self, name: str) -> Confidence:
        return Confidence.of(self.custom_topics.get(name, 0.0))

    @property
    def failed_detectors(self) -> tuple[str, ...]:
        return tuple(run.detector for run in self.runs if run.failed)

    @property
    def errored_detectors(self) -> tuple[str, ...]:
        """Detectors that failed for reasons the sender does not control: on_error's business."""
        return tuple(run.detector for run in self.runs if run.failed and run.status is not DetectorStatus.UNINSPECTABLE)

    @property
    def uninspectable_reasons(self) -> tuple[str, ...]:
        """Why the request could not be inspected at all (oversize, undecodable, too deep):
        the sender's doing, so on_uninspectable decides, never on_error."""
        reasons = [
            f"uninspectable: {run.error or run.detector}"
            for run in self.runs
            if run.status is DetectorStatus.UNINSPECTABLE
        ]
        reasons += [
            f"uninspectable: {UNINSPECTABLE_TRANSFORMS[t]}" for t in self.transforms if t in UNINSPECTABLE_TRANSFORMS
        ]
        return tuple(reasons)

    @property
    def detectors_run(self) -> tuple[str, ...]:
        return tuple(run.detector for run in self.runs)

    def detected(self, minimum: Confidence = Confidence.LOW) -> dict[Topic, Confidence]:
        return {topic: Confidence.of(score) for topic, score in self.topics.items() if Confidence.of(score) >= minimum}

    @classmethod
    def failure(cls, detector: str, status: DetectorStatus, error: str, elapsed_ms: float = 0.0) -> Inspection:
        """An inspection that could not happen at all (e.g. the inspector is unreachable)."""
        return cls(
            findings=(), topics={}, runs=(DetectorRun(detector, status, elapsed_ms, error),), elapsed_ms=elapsed_ms
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "topics": {
                topic.value: {"score": round(score, 4), "confidence": Confidence.of(score).name.lower()}
                for topic, score in sorted(self.topics.items())
            },
            "findings": [f.to_dict() for f in self.findings],
            "runs": [r.to_dict() for r in self.runs],
            "elapsed_ms": round(self.elapsed_ms, 2),
            "transforms": list(self.transforms),
            "obfuscation": [o.to_dict() for o in self.obfuscations],
            "uncovered": [t.value for t in self.uncovered],
            "languages": list(self.languages),
            "uncovered_languages": [[lang, topic.value] for lang, topic in self.uncovered_languages],
            "neighbours": [n.to_dict() for n in self.neighbours],
            "notes": list(self.notes),
            "memory": None
            if self.memory_tenant is None
            else {"tenant": self.memory_tenant, "centroids": list(self.memory_centroids)},
            "custom_topics": {
                name: {"score": round(score, 4), "confidence": Confidence.of(score).name.lower()}
                for name, score in sorted(self.custom_topics.items())
            },
            "custom_findings": [f.to_dict() for f in self.custom_findings],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Inspection:
        """Parse an Inspection's JSON strictly (it crosses a process boundary).

        ``topics``, ``findings`` and ``runs`` are required; every field must have its type,
        numbers must be finite (scores in [0, 1]), topics and statuses known. Anything else
        raises :class:`InspectionFormatError` naming the field (``field topics.PII.score is not
        a number``), never a value. Whether every expected detector ran is the caller's check.
        """
        if not isinstance(data, Mapping):
            raise InspectionFormatError("is not a JSON object")
        for required in ("topics", "findings", "runs"):
            if required not in data:
                raise InspectionFormatError(f"missing field {required}")
        raw_topics = data["topics"]
        if not isinstance(raw_topics, Mapping):
            raise InspectionFormatError("field topics is not an object")
        topics: dict[Topic, float] = {}
        for name, value in raw_topics.items():
            if not isinstance(name, str) or name not in _TOPICS:
                raise InspectionFormatError("field topics has an unknown topic name")
            topic = Topic(name)
            where = f"topics.{topic.value}"
            if isinstance(value, Mapping):
                if "score" not in value:
                    raise InspectionFormatError(f"missing field {where}.score")
                value, where = value["score"], f"{where}.score"
            topics[topic] = _wire_number(value, where, low=0.0, high=1.0)
        findings = []
        for i, item in enumerate(_wire_list(data["findings"], "findings")):
            where = f"findings[{i}]"
            finding = _wire_object(item, where)
            span = finding.get("span")
            if span is not None:
                if not isinstance(span, list) or len(span) != 2:
                    raise InspectionFormatError(f"field {where}.span is not a [start, end] pair")
                start, end = (_wire_int(s, f"{where}.span") for s in span)
                if not 0 <= start <= end:
                    raise InspectionFormatError(f"field {where}.span is not a valid range")
                span = Span(start, end)
            findings.append(
                Finding(
                    detector=_wire_str(finding.get("detector"), f"{where}.detector"),
                    kind=_wire_str(finding.get("kind"), f"{where}.kind"),
                    topic=_wire_topic(finding.get("topic"), f"{where}.topic"),
                    score=_wire_number(finding.get("score"), f"{where}.score", low=0.0, high=1.0),
                    span=span,
                    explanation=_wire_str(finding.get("explanation", ""), f"{where}.explanation"),
                )
            )
        runs = []
        for i, item in enumerate(_wire_list(data["runs"], "runs")):
            where = f"runs[{i}]"
            run = _wire_object(item, where)
            detector = _wire_str(run.get("detector"), f"{where}.detector")
            if not detector:
                raise InspectionFormatError(f"field {where}.detector is empty")
            status = run.get("status")
            if not isinstance(status, str) or status not in _STATUSES:
                raise InspectionFormatError(f"field {where}.status is not a known status")
            error = run.get("error")
            runs.append(
                DetectorRun(
                    detector=detector,
                    status=DetectorStatus(status),
                    elapsed_ms=_wire_number(run.get("elapsed_ms", 0.0), f"{where}.elapsed_ms", low=0.0),
                    error=None if error is None else _wire_str(error, f"{where}.error"),
                )
            )
        neighbours = []
        for i, item in enumerate(_wire_list(data.get("neighbours", []), "neighbours")):
            where = f"neighbours[{i}]"
            ref = _wire_object(item, where)
            neighbours.append(
                NeighbourRef(
                    centroid_id=_wire_int(ref.get("id"), f"{where}.id"),
                    similarity=_wire_number(ref.get("similarity"), f"{where}.similarity"),
                    topic=_wire_topic(ref.get("topic"), f"{where}.topic"),
                    delta=_wire_number(ref.get("delta", 0.0), f"{where}.delta"),
                    reason=_wire_str(ref.get("reason", ""), f"{where}.reason"),
                )
            )
        obfuscations = []
        for i, item in enumerate(_wire_list(data.get("obfuscation", []), "obfuscation")):
            where = f"obfuscation[{i}]"
            entry = _wire_object(item, where)
            spans = []
            for j, pair in enumerate(_wire_list(entry.get("spans", []), f"{where}.spans")):
                if not isinstance(pair, list) or len(pair) != 2:
                    raise InspectionFormatError(f"field {where}.spans[{j}] is not a [start, end] pair")
                start, end = (_wire_int(x, f"{where}.spans[{j}]") for x in pair)
                if not 0 <= start <= end:
                    raise InspectionFormatError(f"field {where}.spans[{j}] is not a valid range")
                spans.append(Span(start, end))
            count = _wire_int(entry.get("count", 1), f"{where}.count")
            if count < 1:
                raise InspectionFormatError(f"field {where}.count is not positive")
            kind = _wire_str(entry.get("kind"), f"{where}.kind")
            if not kind:
                raise InspectionFormatError(f"field {where}.kind is empty")
            obfuscations.append(Obfuscation(kind, count, tuple(spans)))
        gaps = []
        for i, pair in enumerate(_wire_list(data.get("uncovered_languages", []), "uncovered_languages")):
            where = f"uncovered_languages[{i}]"
            if not isinstance(pair, list) or len(pair) != 2:
                raise InspectionFormatError(f"field {where} is not a [language, topic] pair")
            gaps.append((_wire_language(pair[0], f"{where}[0]"), _wire_topic(pair[1], f"{where}[1]")))
        memory = data.get("memory")
        tenant: str | None = None
        centroids: tuple[int, ...] = ()
        if memory is not None:
            mem = _wire_object(memory, "memory")
            tenant = _wire_str(mem.get("tenant"), "memory.tenant")
            centroids = tuple(
                _wire_int(c, f"memory.centroids[{i}]")
                for i, c in enumerate(_wire_list(mem.get("centroids", []), "memory.centroids"))
            )
        custom_topics: dict[str, float] = {}
        raw_custom = data.get("custom_topics", {})
        if not isinstance(raw_custom, Mapping):
            raise InspectionFormatError("field custom_topics is not an object")
        for name, value in raw_custom.items():
            # The unknown name is not quoted: the answer is not trusted to be free of prompt text.
            if not isinstance(name, str) or not is_custom_topic_name(name):
                raise InspectionFormatError("field custom_topics has a name that is not a custom topic name")
            where = f"custom_topics.{name}"
            if isinstance(value, Mapping):
                if "score" not in value:
                    raise InspectionFormatError(f"missing field {where}.score")
                value, where = value["score"], f"{where}.score"
            custom_topics[name] = _wire_number(value, where, low=0.0, high=1.0)
        custom_findings = []
        for i, item in enumerate(_wire_list(data.get("custom_findings", []), "custom_findings")):
            where = f"custom_findings[{i}]"
            entry = _wire_object(item, where)
            name = _wire_str(entry.get("name"), f"{where}.name")
            if not is_custom_topic_name(name):
                raise InspectionFormatError(f"field {where}.name is not a custom topic name")
            custom_findings.append(
                CustomFinding(
                    detector=_wire_str(entry.get("detector"), f"{where}.detector"),
                    name=name,
                    score=_wire_number(entry.get("score"), f"{where}.score", low=0.0, high=1.0),
                    explanation=_wire_str(entry.get("explanation", ""), f"{where}.explanation"),
                )
            )
        return cls(
            findings=tuple(findings),
            topics=topics,
            runs=tuple(runs),
            elapsed_ms=_wire_number(data.get("elapsed_ms", 0.0), "elapsed_ms", low=0.0),
            transforms=tuple(
                _wire_str(t, f"transforms[{i}]")
                for i, t in enumerate(_wire_list(data.get("transforms", []), "transforms"))
            ),
            obfuscations=tuple(obfuscations),
            uncovered=tuple(
                _wire_topic(t, f"uncovered[{i}]")
                for i, t in enumerate(_wire_list(data.get("uncovered", []), "uncovered"))
            ),
            languages=tuple(
                _wire_language(lang, f"languages[{i}]")
                for i, lang in enumerate(_wire_list(data.get("languages", []), "languages"))
            ),
            uncovered_languages=tuple(gaps),
            neighbours=tuple(neighbours),
            notes=tuple(_wire_str(n, f"notes[{i}]") for i, n in enumerate(_wire_list(data.get("notes", []), "notes"))),
            memory_tenant=tenant,
            memory_centroids=centroids,
            custom_topics=custom_topics,
            custom_findings=tuple(custom_findings),
        )


class InspectionFormatError(ValueError):
    """An Inspection's JSON is not in the schema. The message names the field and what is wrong
    with it (``field runs[2].status is not a known status``), never the value found there."""


_STATUSES = frozenset(s.value for s in DetectorStatus)
_TOPICS = frozenset(t.value for t in Topic)


def _wire_number(value: Any, where: str, *, low: float | None = None, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InspectionFormatError(f"field {where} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer too large for a float
        raise InspectionFormatError(f"field {where} is not a finite number") from None
    if not math.isfinite(number):
        raise InspectionFormatError(f"field {where} is not a finite number")
    if (low is not None and number < low) or (high is not None and number > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else f"at least {low:g}"
        raise InspectionFormatError(f"field {where} is not {bounds}")
    return number


def _wire_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InspectionFormatError(f"field {where} is not an integer")
    return value


def _wire_str(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise InspectionFormatError(f"field {where} is not a string")
    return value


def _wire_list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise InspectionFormatError(f"field {where} is not a list")
    return value


def _wire_object(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InspectionFormatError(f"field {where} is not an object")
    return value


_LANGUAGE_CODE = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$")


def _wire_language(value: Any, where: str) -> str:
    # A language code (ISO 639: "de", "und", "zh-Hant"), never free text.
    if not isinstance(value, str) or not _LANGUAGE_CODE.match(value):
        raise InspectionFormatError(f"field {where} is not a language code")
    return value


def _wire_topic(value: Any, where: str) -> Topic:
    # The unknown name is not quoted: the answer is not trusted to be free of prompt text.
    if not isinstance(value, str) or value not in _TOPICS:
        raise InspectionFormatError(f"field {where} is not a known topic")
    return Topic(value)


@dataclass(frozen=True)
class Redaction:
    """One span of the prompt that a ``redact`` decision replaces with ``[LABEL]``.

    It holds offsets into :attr:`Operation.prompt` and a type label (``EMAIL_ADDRESS``), never
    the value, so it may appear in clear metadata.
    """

    start: int
    end: int
    label: str

    @property
    def placeholder(self) -> str:
        return f"[{self.label}]"


@dataclass(frozen=True)
class Decision:
    """The policy outcome: an action, the rules that produced it, and what to tell the user.

    ``redactions`` are the spans every matching ``redact`` rule asks to replace (applied when
    the request goes upstream); ``outcome`` is what enforcement did, set by the proxy
    (e.g. ``"proceeded after warning"``, ``"redacted"``).
    """

    action: Action
    rule_ids: tuple[str, ...]
    policy: str
    message: str = ""
    reason: str = ""
    redactions: tuple[Redaction, ...] = ()
    outcome: str = ""
    # A warn whose rule asks the user for a reason (``justification: required``): the resend
    # must carry a ``Justification:`` line (proxy/justification.py).
    justification_required: bool = False
    # What the shadow (candidate) policy set would have decided: recorded, never enforced.
    shadow: ShadowDecision | None = None

    @property
    def blocks(self) -> bool:
        return self.action is Action.BLOCK

    def redacted_counts(self) -> dict[str, int]:
        """What was (or is to be) redacted, by kind: what logs may say instead of the values."""
        counts: dict[str, int] = {}
        for redaction in self.redactions:
            counts[redaction.label] = counts.get(redaction.label, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": self.action.value,
            "rule_ids": list(self.rule_ids),
            "policy": self.policy,
            "message": self.message,
            "reason": self.reason,
        }
        if self.redactions:
            data["redacted"] = self.redacted_counts()
        if self.outcome:
            data["outcome"] = self.outcome
        if self.justification_required:
            data["justification_required"] = True
        return data


@dataclass(frozen=True)
class ShadowDecision:
    """A candidate policy set's verdict on the same request (``policies.shadow``): what the
    record keeps so ``logs list --shadow-diff`` can show where it disagrees with the enforced
    set. ``error`` says why there is none (a broken shadow set never touches the flow)."""

    action: Action | None
    rule_ids: tuple[str, ...] = ()
    policy: str = ""
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "action": None if self.action is None else self.action.value,
            "rules": list(self.rule_ids),
            "policy": self.policy,
        }
        if self.error is not None:
            data["error"] = self.error
        return data


@dataclass(frozen=True)
class Payload:
    """The sensitive part of a log record: only ever stored sealed to the admins' keys."""

    prompt: str = field(repr=False)
    response: str | None = field(default=None, repr=False)
    attachments: tuple[str, ...] = field(default=(), repr=False)
    # The reason a user gave to proceed past a warn (a ``Justification:`` line): sealed, like the prompt.
    justification: str | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "prompt": self.prompt,
            "response": self.response,
            "attachments": list(self.attachments),
        }
        if self.justification is not None:
            data["justification"] = self.justification
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Payload:
        justification = data.get("justification")
        return cls(
            prompt=str(data.get("prompt", "")),
            response=data.get("response"),
            attachments=tuple(str(a) for a in data.get("attachments", ())),
            justification=None if justification is None else str(justification),
        )


@dataclass(frozen=True)
class LogRecord:
    """One inspected operation: clear metadata plus a payload the store seals."""

    record_id: str
    timestamp: float
    operation: Operation
    inspection: Inspection
    decision: Decision
    payload: Payload = field(repr=False)
    response_bytes: int = 0
    # Why the streamed answer could not be (fully) reconstructed, if so: "truncated frame",
    # "3 undecodable events", ... Never quotes the answer. None: decoded, or nothing to decode.
    response_decode_error: str | None = None
    # Where the answer stands: "pending" (the prompt was forwarded; this record was written at
    # decision time and a completion with the answer follows), "complete" (the answer stream
    # ended, see response_decode_error), "upstream_error" (it ended in an error), "none" (nothing
    # was forwarded, e.g. blocked). A crash between the two writes leaves "pending", never nothing.
    answer_status: str = "none"

    def metadata(self) -> dict[str, Any]:
        """Everything that may be stored in clear; the prompt and answer are not in it."""
        op = self.operation
        return {
            "record_id": self.record_id,
            "timestamp": self.timestamp,
            "user": op.identity.user,
            "groups": list(op.identity.groups),
            "identity_source": op.identity.source,
            "app": op.app,
            "app_type": op.app_type,
            "operation_id": op.operation_id,
            "operation": op.kind.value,
            "conversation_id": op.conversation_id,
            "model": op.model,
            "host": op.host,
            "path_shape": path_shape(op.path),
            "topics": self.inspection.to_dict()["topics"],
            "detectors_run": list(self.inspection.detectors_run),
            "detectors_failed": list(self.inspection.failed_detectors),
            "detector_ms": {run.detector: round(run.elapsed_ms, 2) for run in self.inspection.runs},
            # Why each failed detector failed: the kind and a message that never quotes the prompt.
            "detector_errors": {
                run.detector: {"status": run.status.value, "error": run.error}
                for run in self.inspection.runs
                if run.failed
            },
            "findings": [f.to_dict() for f in self.inspection.findings],
            "neighbours": [n.to_dict() for n in self.inspection.neighbours],
            "inspection_notes": list(self.inspection.notes),
            # De-obfuscation undone before the detectors ran (names only: "base64", "unicode"),
            # and the evidence: kind, count and prompt offsets of each disguise (never text).
            "transforms": list(self.inspection.transforms),
            "obfuscation": [o.to_dict() for o in self.inspection.obfuscations],
            # The prompt's languages, and the (language, topic) pairs no detector read (codes only).
            "languages": list(self.inspection.languages),
            "uncovered_languages": self.inspection.to_dict()["uncovered_languages"],
            "memory": self.inspection.to_dict()["memory"],
            "decision": self.decision.to_dict(),
            "inspection_ms": round(self.inspection.elapsed_ms, 2),
            "prompt_chars": len(self.payload.prompt),
            "response_chars": None if self.payload.response is None else len(self.payload.response),
            "response_bytes": self.response_bytes,
            "response_decode_error": self.response_decode_error,
            "answer_status": self.answer_status,
            "attachments_count": len(self.payload.attachments),
            "message_id": op.message_id,
            "custom_topics": self.inspection.to_dict()["custom_topics"],
            "custom_findings": [f.to_dict() for f in self.inspection.custom_findings],
            # The candidate policy set's verdict (policies.shadow); null when none is configured.
            "shadow": None if self.decision.shadow is None else self.decision.shadow.to_dict(),
            # Whether a reason was sealed with the prompt (its text is only in the sealed payload).
            "justified": self.payload.justification is not None,
        }


class Detector(Protocol):
    """The uniform detector interface (LLM Guard's scanner idea, with typed findings)."""

    name: str
    version: str

    def detect(self, text: str) -> Sequence[Finding]: ...
