"""The prompt-log store: clear metadata in columns, the payload sealed to every recipient key.

A :class:`LogRecord` is sealed first (:func:`seal_record`) into a :class:`SealedRecord`, which
holds no plaintext; that is what the database, the spool and the replay ever see. Writes are
upserts on ``record_id`` with one rule: a record written at decision time (``answer_status``
"pending") is replaced by its completion (the answer sealed in too), never the other way round,
and an identical write changes nothing. So replaying a spool twice, out of order, or a spool
whose records had already reached the database, never duplicates a record nor loses an answer.

Clear metadata never carries a plain digest of the prompt (an unsalted hash lets anyone holding
the database confirm a guessed short prompt): :func:`seal_record` puts ``prompt_hmac`` there
instead, an HMAC-SHA256 under a key only the logger holds (:func:`load_or_create_digest_key`).

The schema is created and upgraded by the Alembic migrations shipped in ``logs/migrations``.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from sqlalchemy import Select, Table, bindparam, delete, func, insert, inspect, select, update
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from logs.models import FeedbackRow, GroupRow, RecordRow, SealRow, TopicRow
from logs.sealing import SealingError, key_id, load_private_key, load_public_key, open_sealed, seal
from promptfence.core import Action, Confidence, LogRecord, Payload, Topic
from promptfence.errors import KeyMaterialError, PromptFenceError
from vectors.database import create_store_engine, error_reason, interrupt_active, run_migrations

log = logging.getLogger("promptfence.logs")

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
SKELETON_REVISION = "0001"
VERDICTS = ("false_positive", "true_positive")
SQLITE_BUSY_TIMEOUT_S = 2.0
# A record's answer is still to come; any other status is final (see LogRecord.answer_status).
PENDING = "pending"
DIGEST_KEY_BYTES = 32


class StoreUnavailable(PromptFenceError):
    """The database cannot be reached or refused the operation; the message names no content."""


@dataclass(frozen=True)
class Recipient:
    key_id: str
    public_key: bytes

    @classmethod
    def from_file(cls, path: Path) -> Recipient:
        public = load_public_key(path)
        return cls(key_id(public), public)


@dataclass(frozen=True)
class SealedRecord:
    """A record ready to store: clear metadata and one sealed blob per key id, no plaintext."""

    record_id: str
    metadata: dict[str, Any]
    seals: dict[str, str]

    def to_json(self) -> str:
        return json.dumps({"record_id": self.record_id, "metadata": self.metadata, "seals": self.seals})

    @classmethod
    def from_json(cls, text: str) -> SealedRecord:
        doc = json.loads(text)
        return cls(str(doc["record_id"]), dict(doc["metadata"]), {str(k): str(v) for k, v in doc["seals"].items()})


def seal_record(record: LogRecord, recipients: Sequence[Recipient], digest_key: bytes | None = None) -> SealedRecord:
    """Seal the payload to every recipient; refuses (never stores plaintext) with no recipient.

    The clear metadata loses ``prompt_digest`` (an unkeyed hash) and, with ``digest_key``, gains
    ``prompt_hmac``: equal prompts still have equal values, for de-duplication and correlation,
    but only the key's holder can test a guess.
    """
    if not recipients:
        raise KeyMaterialError("no recipient public key configured: refusing to store an unsealed payload")
    plaintext = json.dumps(record.payload.to_dict(), ensure_ascii=False).encode("utf-8")
    seals = {r.key_id: seal(r.public_key, plaintext) for r in recipients}
    metadata = record.metadata()
    metadata.pop("prompt_digest", None)
    if digest_key is not None:
        metadata["prompt_hmac"] = prompt_hmac(digest_key, record.payload.prompt)
    return SealedRecord(record.record_id, metadata, seals)


def prompt_hmac(key: bytes, text: str) -> str:
    """HMAC-SHA256 of a text under the logger's key, as the first 32 hex digits (128 bits)."""
    return hmac.new(key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()[:32]


def load_or_create_digest_key(path: Path) -> bytes:
    """The logger's HMAC key: read it, or on first start create it (random, mode 0600, its folder 0700).

    Made in a temporary file and linked into place, so a crash never leaves a short key and two
    processes starting together agree on one key.
    """
    try:
        return _read_digest_key(path)
    except FileNotFoundError:
        pass
    from promptfence.config import ensure_private_dir

    ensure_private_dir(path.parent)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, secrets.token_bytes(DIGEST_KEY_BYTES).hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        log.info("created the log digest key %s", path)
    except FileExistsError:
        pass  # another process made it first: use theirs
    finally:
        tmp.unlink(missing_ok=True)
    return _read_digest_key(path)


def _read_digest_key(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise KeyMaterialError(f"{path} is not a log digest key (expected {DIGEST_KEY_BYTES * 2} hex digits)") from None
    if len(key) < 16:
        raise KeyMaterialError(f"{path} is not a log digest key (expected {DIGEST_KEY_BYTES * 2} hex digits)")
    return key


def answer_status(metadata: dict[str, Any]) -> str:
    """A record's answer status; records from before the field existed were written complete."""
    status = metadata.get("answer_status")
    if status:
        return str(status)
    return "none" if (metadata.get("decision") or {}).get("action") == "block" else "complete"


def supersedes(new: dict[str, Any], stored_status: str) -> bool:
    """Whether a write with metadata ``new`` replaces a stored version whose status is ``stored_status``.

    Only a completion replaces a pending record; a final version is never replaced (replaying a
    stale pending line, or a completion twice, changes nothing).
    """
    return stored_status == PENDING and answer_status(new) != PENDING


@dataclass(frozen=True)
class StoredRecord:
    """A record as read back: clear metadata, and sealed blobs that need a private key."""

    record_id: str
    metadata: dict[str, Any]
    sealed: dict[str, str]

    @property
    def key_ids(self) -> list[str]:
        return sorted(self.sealed)

    def open(self, private_key_file: Path) -> Payload:
        try:
            pair = load_private_key(private_key_file)
        except (OSError, ValueError) as exc:
            raise KeyMaterialError(str(exc)) from None
        kid = key_id(pair.public_key)
        blob = self.sealed.get(kid)
        if blob is None:
            sealed_to = ", ".join(sorted(self.sealed)) or "no key"
            raise KeyMaterialError(
                f"record {self.record_id} was sealed to key id(s) {sealed_to}; {private_key_file} holds key id {kid}"
            )
        try:
            return Payload.from_dict(json.loads(open_sealed(pair.private_key, blob)))
        except SealingError as exc:
            raise KeyMaterialError(f"record {self.record_id}: {exc}") from None


@dataclass(frozen=True)
class LogFilter:
    """What ``logs list`` and the viewer filter on; every field is optional (None: any)."""

    since: float | None = None
    until: float | None = None
    user: str | None = None
    group: str | None = None
    app: str | None = None
    app_type: str | None = None
    operation: str | None = None
    # A built-in topic (``Topic``, a str) or a custom topic's name (``is_custom_topic_name``).
    topic: str | None = None
    min_confidence: Confidence = Confidence.LOW
    action: Action | None = None
    dlp_match: bool | None = None
    prompt_captured: bool | None = None
    conversation_id: str | None = None


@dataclass(frozen=True)
class FeedbackReport:
    """An admin's verdict on one topic of one record, with the record's clear metadata.

    ``record`` carries the sealed blobs too, so a learner holding a private key can open the
    prompt the verdict is about (:meth:`StoredRecord.open`).
    """

    id: int
    record_id: str
    topic: Topic
    verdict: str
    reporter: str
    source: str
    note: str
    created_at: float
    record: StoredRecord | None = field(default=None, repr=False)

    @property
    def false_positive(self) -> bool:
        return self.verdict == "false_positive"

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "record_id": self.record_id,
            "topic": self.topic.value,
            "verdict": self.verdict,
            "reporter": self.reporter,
            "source": self.source,
            "note": self.note,
            "created_at": self.created_at,
        }


def dlp_matched(metadata: dict[str, Any]) -> bool:
    """A "DLP payload match": a detector found something (any finding, any topic above none)."""
    topics = metadata.get("topics") or {}
    return bool(metadata.get("findings")) or any(v.get("confidence") != "none" for v in topics.values())


class LogStore:
    """The prompt log in any SQLAlchemy database (SQLite file by default, PostgreSQL tested).

    The schema is brought to the newest migration on first use (:meth:`migrate`); a database that
    is down at construction time is not an error, so the proxy can start and spool.
    """

    def __init__(
        self,
        database_url: str,
        recipients: Sequence[Recipient] = (),
        *,
        digest_key: bytes | None = None,
        timeout_s: float | None = None,
    ) -> None:
        """``timeout_s`` bounds connecting, each statement and the pool wait (PostgreSQL); None: defaults."""
        self.url = database_url
        self.recipients = tuple(recipients)
        self.digest_key = digest_key
        bounds: dict[str, float] = {}
        if timeout_s is not None:
            bounds = {"connect_timeout_s": timeout_s, "statement_timeout_s": timeout_s, "pool_timeout_s": timeout_s}
        self.engine: Engine = create_store_engine(database_url, sqlite_busy_timeout_s=SQLITE_BUSY_TIMEOUT_S, **bounds)
        self._migrated = False

    # -- schema -----------------------------------------------------------------------------
    def migrate(self) -> None:
        """Create or upgrade the schema with Alembic (idempotent; serialised on PostgreSQL)."""
        if self._migrated:
            return
        try:
            run_migrations(self.engine, MIGRATIONS, adopt=_skeleton_revision)
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"cannot migrate the log database ({error_reason(exc)})") from None
        self._migrated = True

    def schema_revision(self) -> str | None:
        with self.engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if "alembic_version" not in tables:
                return None
            rev = conn.exec_driver_sql("SELECT version_num FROM alembic_version").scalar()
            return None if rev is None else str(rev)

    @contextmanager
    def _session(self) -> Iterator[Session]:
        self.migrate()
        try:
            with Session(self.engine) as session:
                yield session
        except SQLAlchemyError as exc:
            raise StoreUnavailable(f"log database error ({error_reason(exc)})") from None

    # -- writing ----------------------------------------------------------------------------
    def seal(self, record: LogRecord) -> SealedRecord:
        return seal_record(record, self.recipients, self.digest_key)

    def write(self, record: LogRecord) -> None:
        """Seal and store one record (synchronously; the proxy goes through the recorder)."""
        self.insert(self.seal(record))

    def insert(self, sealed: SealedRecord) -> bool:
        """Store (or complete) a sealed record; False if nothing changed (see :func:`supersedes`)."""
        return self.insert_many([sealed]) == 1

    def insert_many(self, records: Sequence[SealedRecord]) -> int:
        """Upsert records in order in one transaction; returns how many were new or completed.

        A new ``record_id`` is inserted (insertion order == id order). A stored pending record is
        replaced by its completion: metadata, columns, seals, topics and groups (its position,
        ``stored_at`` and feedback stay). Anything else already stored is left as it is.
        """
        if not records:
            return 0
        with self._session() as session, session.begin():
            conn = session.connection()
            ids = list(dict.fromkeys(r.record_id for r in records))
            stored: dict[str, str] = {}
            for start in range(0, len(ids), 500):
                query = select(_RECORDS.c.record_id, _RECORDS.c.answer_status).where(
                    _RECORDS.c.record_id.in_(ids[start : start + 500])
                )
                stored.update({rid: status for rid, status in conn.execute(query)})
            # The batch's last word on each record, in first-seen order: a record and its
            # completion queued together are inserted once, complete (same outcome as two writes).
            inserts: dict[str, SealedRecord] = {}
            updates: dict[str, SealedRecord] = {}
            changed = 0
            for sealed in records:
                rid = sealed.record_id
                status = answer_status(sealed.metadata)
                if rid not in stored:
                    inserts[rid] = sealed
                elif supersedes(sealed.metadata, stored[rid]):
                    if rid in inserts:
                        inserts[rid] = sealed
                    else:
                        updates[rid] = sealed
                else:
                    continue
                stored[rid] = status
                changed += 1
            # Core statements, one executemany per table: the ORM's per-row statement building
            # was most of the proxy's CPU per inspected prompt (issue 17).
            now = time.time()
            if inserts:
                conn.execute(insert(_RECORDS), [{**_record_columns(r), "stored_at": now} for r in inserts.values()])
            if updates:
                rows = [{**_record_columns(r), "b_record_id": rid} for rid, r in updates.items()]
                for row in rows:
                    row.pop("record_id")
                conn.execute(_UPDATE_RECORD, rows)
                for child in (SealRow, TopicRow, GroupRow):
                    conn.execute(delete(_table(child)).where(_table(child).c.record_id.in_(list(updates))))
            children: dict[type[Any], list[dict[str, Any]]] = {}
            for sealed in (*inserts.values(), *updates.values()):
                for table, rows in _child_rows(sealed):
                    children.setdefault(table, []).extend(rows)
            for table, rows in children.items():
                if rows:
                    conn.execute(insert(_table(table)), rows)
        return changed

    def interrupt(self) -> int:
        """Break the connections of a call stuck on an unanswering network (PostgreSQL); see
        :func:`vectors.database.interrupt_active`."""
        return interrupt_active(self.engine)

    # -- reading ----------------------------------------------------------------------------
    def find(self, flt: LogFilter | None = None, *, limit: int = 50, offset: int = 0) -> list[StoredRecord]:
        query = self._filtered(select(RecordRow), flt or LogFilter())
        query = query.order_by(RecordRow.timestamp.desc(), RecordRow.id.desc()).limit(limit).offset(offset)
        with self._session() as session:
            rows = list(session.scalars(query))
            return self._stored(session, rows)

    def count(self, flt: LogFilter | None = None) -> int:
        query = self._filtered(select(func.count(RecordRow.id)), flt or LogFilter())
        with self._session() as session:
            return int(session.scalar(query) or 0)

    def get(self, record_id: str) -> StoredRecord | None:
        """A record by id, or by a unique prefix of at least 6 characters."""
        with self._session() as session:
            row = session.scalar(select(RecordRow).where(RecordRow.record_id == record_id))
            if row is None and len(record_id) >= 6:
                rows = session.scalars(
                    select(RecordRow).where(RecordRow.record_id.startswith(record_id, autoescape=True)).limit(2)
                ).all()
                row = rows[0] if len(rows) == 1 else None
            return None if row is None else self._stored(session, [row])[0]

    def conversation(self, conversation_id: str) -> list[StoredRecord]:
        """Every record of a conversation, first prompt first."""
        query = (
            select(RecordRow)
            .where(RecordRow.conversation_id == conversation_id)
            .order_by(RecordRow.timestamp, RecordRow.id)
        )
        with self._session() as session:
            return self._stored(session, list(session.scalars(query)))

    def record_ids(self) -> list[str]:
        """Every stored record id in insertion order (for audits and tests)."""
        with self._session() as session:
            return list(session.scalars(select(RecordRow.record_id).order_by(RecordRow.id)))

    def stats(self, flt: LogFilter | None, by: str, bucket_s: int) -> dict[str, Any]:
        """Counts per time bucket and per ``by`` (app, topic or action), for the viewer's chart."""
        if bucket_s <= 0:
            raise ValueError("bucket_s must be positive")
        flt = flt or LogFilter()
        bucket = func.floor(RecordRow.timestamp / bucket_s)
        if by == "topic":
            query = select(bucket, TopicRow.topic, func.count()).join(
                TopicRow, TopicRow.record_id == RecordRow.record_id
            )
            query = query.where(TopicRow.score >= _min_score(flt.min_confidence))
            key: Any = TopicRow.topic
        elif by in ("app", "action", "app_type", "operation", "user"):
            key = getattr(RecordRow, by)
            query = select(bucket, key, func.count())
        else:
            raise ValueError(f"cannot count by {by!r} (expected app, topic, action, app_type, operation or user)")
        query = self._filtered(query, flt).group_by(bucket, key).order_by(bucket, key)
        series: dict[str, dict[int, int]] = {}
        with self._session() as session:
            for b, name, n in session.execute(query):
                series.setdefault(str(name), {})[int(b) * bucket_s] = int(n)
        buckets = sorted({t for counts in series.values() for t in counts})
        return {
            "by": by,
            "bucket_s": bucket_s,
            "buckets": buckets,
            "series": {name: [counts.get(t, 0) for t in buckets] for name, counts in sorted(series.items())},
        }

    def facets(self) -> dict[str, list[str]]:
        """Distinct values the viewer offers in its filter lists."""
        with self._session() as session:

            def distinct(col: Any) -> list[str]:
                return sorted(str(v) for v in session.scalars(select(col).distinct()) if v is not None)

            return {
                "app": distinct(RecordRow.app),
                "app_type": distinct(RecordRow.app_type),
                "operation": distinct(RecordRow.operation),
                "action": distinct(RecordRow.action),
                "user": distinct(RecordRow.user),
                "group": distinct(GroupRow.group_name),
                "topic": distinct(TopicRow.topic),
            }

    # -- retention --------------------------------------------------------------------------
    def purge(self, older_than: float) -> int:
        """Delete records (with their seals, topics, groups, feedback) older than a timestamp."""
        with self._session() as session, session.begin():
            old = select(RecordRow.record_id).where(RecordRow.timestamp < older_than).scalar_subquery()
            for child in (SealRow, TopicRow, GroupRow, FeedbackRow):
                session.execute(delete(child).where(child.record_id.in_(old)))
            result = session.execute(delete(RecordRow).where(RecordRow.timestamp < older_than))
            return int(getattr(result, "rowcount", 0) or 0)

    def enforce_retention(self, retention_days: float | None) -> int:
        """Apply ``logs.retention_days`` (None or 0: keep forever); returns records deleted."""
        if not retention_days:
            return 0
        deleted = self.purge(time.time() - retention_days * 86400.0)
        if deleted:
            log.info("retention: deleted %d log record(s) older than %g days", deleted, retention_days)
        return deleted

    # -- annotations ------------------------------------------------------------------------
    ANNOTATIONS = frozenset({"rescan"})

    def annotate(self, record_id: str, key: str, value: dict[str, Any]) -> bool:
        """Add a clearly marked section to a stored record's clear metadata (``rescan``: what a
        retroactive re-scan found, see ``logs rescan --store``); the record's own fields, its
        columns and its seals stay as they were. False when there is no such record."""
        if key not in self.ANNOTATIONS:
            raise ValueError(f"{key!r} is not an annotation (expected one of: {', '.join(sorted(self.ANNOTATIONS))})")
        with self._session() as session, session.begin():
            row = session.scalar(select(RecordRow).where(RecordRow.record_id == record_id))
            if row is None:
                return False
            meta = json.loads(row.meta)
            meta[key] = value
            row.meta = json.dumps(meta, sort_keys=True)
            return True

    # -- feedback ---------------------------------------------------------------------------
    def add_feedback(
        self, record_id: str, topic: Topic, verdict: str, *, reporter: str, source: str, note: str = ""
    ) -> FeedbackReport:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}")
        with self._session() as session, session.begin():
            exists = session.scalar(select(RecordRow.id).where(RecordRow.record_id == record_id))
            if exists is None:
                raise KeyError(record_id)
            row = FeedbackRow(
                record_id=record_id,
                topic=topic.value,
                verdict=verdict,
                reporter=reporter[:320],
                source=source[:16],
                note=note[:2000],
                created_at=time.time(),
            )
            session.add(row)
            session.flush()
            return _report(row, None)

    def feedback_reports(
        self,
        *,
        record_id: str | None = None,
        topic: Topic | None = None,
        verdict: str | None = None,
        since: float | None = None,
        with_records: bool = False,
    ) -> list[FeedbackReport]:
        """The read API for the learning loop: reports oldest first, optionally with their records."""
        query = select(FeedbackRow).order_by(FeedbackRow.created_at, FeedbackRow.id)
        if record_id is not None:
            query = query.where(FeedbackRow.record_id == record_id)
        if topic is not None:
            query = query.where(FeedbackRow.topic == topic.value)
        if verdict is not None:
            query = query.where(FeedbackRow.verdict == verdict)
        if since is not None:
            query = query.where(FeedbackRow.created_at >= since)
        with self._session() as session:
            rows = list(session.scalars(query))
            records: dict[str, StoredRecord] = {}
            if with_records and rows:
                wanted = {r.record_id for r in rows}
                recs = session.scalars(select(RecordRow).where(RecordRow.record_id.in_(wanted)))
                records = {s.record_id: s for s in self._stored(session, list(recs))}
            return [_report(r, records.get(r.record_id)) for r in rows]

    def close(self) -> None:
        self.engine.dispose()

    # -- helpers ----------------------------------------------------------------------------
    def _filtered(self, query: Select[Any], flt: LogFilter) -> Select[Any]:
        if flt.since is not None:
            query = query.where(RecordRow.timestamp >= flt.since)
        if flt.until is not None:
            query = query.where(RecordRow.timestamp < flt.until)
        for name in ("user", "app", "app_type", "operation", "conversation_id"):
            value = getattr(flt, name)
            if value:
                query = query.where(getattr(RecordRow, name) == value)
        if flt.action is not None:
            query = query.where(RecordRow.action == flt.action.value)
        if flt.dlp_match is not None:
            query = query.where(RecordRow.dlp_match.is_(flt.dlp_match))
        if flt.prompt_captured is not None:
            query = query.where(RecordRow.prompt_captured.is_(flt.prompt_captured))
        if flt.group:
            query = query.where(
                RecordRow.record_id.in_(select(GroupRow.record_id).where(GroupRow.group_name == flt.group))
            )
        if flt.topic is not None:
            query = query.where(
                RecordRow.record_id.in_(
                    select(TopicRow.record_id).where(
                        TopicRow.topic == str(flt.topic), TopicRow.score >= _min_score(flt.min_confidence)
                    )
                )
            )
        return query

    @staticmethod
    def _stored(session: Session, rows: Sequence[RecordRow]) -> list[StoredRecord]:
        ids = [r.record_id for r in rows]
        seals: dict[str, dict[str, str]] = {}
        if ids:
            for s in session.scalars(select(SealRow).where(SealRow.record_id.in_(ids))):
                seals.setdefault(s.record_id, {})[s.key_id] = s.blob
        return [StoredRecord(r.record_id, json.loads(r.meta), seals.get(r.record_id, {})) for r in rows]


def _min_score(level: Confidence) -> float:
    from promptfence.core import CONFIDENCE_THRESHOLDS

    return 0.0 if level is Confidence.NONE else CONFIDENCE_THRESHOLDS[level]


def _table(model: type[Any]) -> Table:
    return cast(Table, model.__table__)


_RECORDS = _table(RecordRow)
_UPDATE_RECORD = (
    update(_RECORDS)
    .where(_RECORDS.c.record_id == bindparam("b_record_id"))
    .values({c.name: bindparam(c.name) for c in _RECORDS.columns if c.name not in ("id", "record_id", "stored_at")})
)


def _record_columns(sealed: SealedRecord) -> dict[str, Any]:
    meta = sealed.metadata
    decision = meta.get("decision") or {}
    return dict(
        record_id=sealed.record_id,
        timestamp=float(meta["timestamp"]),
        user=str(meta["user"])[:320],
        groups=json.dumps(list(meta.get("groups") or [])),
        identity_source=str(meta.get("identity_source") or "anonymous")[:32],
        app=str(meta["app"])[:64],
        app_type=str(meta.get("app_type") or "")[:64],
        operation=str(meta["operation"])[:32],
        operation_id=str(meta.get("operation_id") or "")[:128],
        conversation_id=None if meta.get("conversation_id") is None else str(meta["conversation_id"])[:128],
        action=str(decision.get("action", "allow")),
        policy=str(decision.get("policy", ""))[:128],
        rule_ids=json.dumps(list(decision.get("rule_ids") or [])),
        dlp_match=dlp_matched(meta),
        prompt_captured=bool(meta.get("prompt_chars")),
        inspection_ms=float(meta.get("inspection_ms") or 0.0),
        prompt_chars=int(meta.get("prompt_chars") or 0),
        response_chars=None if meta.get("response_chars") is None else int(meta["response_chars"]),
        response_bytes=int(meta.get("response_bytes") or 0),
        answer_status=answer_status(meta)[:16],
        meta=json.dumps(meta, sort_keys=True),
    )


def topic_scores(meta: Mapping[str, Any]) -> dict[str, Any]:
    """Built-in and custom topics alike, so ``--topic`` and the chart count a company's topics too."""
    return {**(meta.get("topics") or {}), **(meta.get("custom_topics") or {})}


def _child_rows(sealed: SealedRecord) -> list[tuple[type[Any], list[dict[str, Any]]]]:
    rid = sealed.record_id
    seals = [{"record_id": rid, "key_id": kid, "blob": blob} for kid, blob in sorted(sealed.seals.items())]
    topics = [
        {"record_id": rid, "topic": str(name), "score": float(value["score"]), "confidence": str(value["confidence"])}
        for name, value in topic_scores(sealed.metadata).items()
    ]
    groups = [
        {"record_id": rid, "group_name": str(g)[:128]} for g in dict.fromkeys(sealed.metadata.get("groups") or [])
    ]
    return [(SealRow, seals), (TopicRow, topics), (GroupRow, groups)]


def _report(row: FeedbackRow, record: StoredRecord | None) -> FeedbackReport:
    return FeedbackReport(
        id=row.id,
        record_id=row.record_id,
        topic=Topic(row.topic),
        verdict=row.verdict,
        reporter=row.reporter,
        source=row.source,
        note=row.note,
        created_at=row.created_at,
        record=record,
    )


def _skeleton_revision(conn: Connection) -> str | None:
    """The skeleton's revision if ``conn`` holds ``prompt_log`` unversioned (adopt it).

    Unversioned: no ``alembic_version`` (the walking skeleton's create_all), or an empty one (a
    first migration killed by a version that ran DDL outside a transaction; 0002 moves the
    rows over and drops the table, so a half-made 0001 is as good as a whole one).
    """
    tables = set(inspect(conn).get_table_names())
    if "prompt_log" not in tables or "log_record" in tables:
        return None
    if "alembic_version" not in tables:
        return SKELETON_REVISION
    stamped = conn.exec_driver_sql("SELECT count(*) FROM alembic_version").scalar()
    return SKELETON_REVISION if not stamped else None
