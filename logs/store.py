"""The prompt-log store: one row per inspected operation, payload sealed to every recipient key.

Clear columns hold what a security team filters on (time, user, app, operation, topics,
decision); the prompt and the answer exist only inside ``sealed``: one HPKE blob per recipient
key, each tagged with its key id, so a record stays readable by every admin it was sealed to and
old records stay readable after a key rotation.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Boolean, Float, Index, String, Text, create_engine, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from logs.sealing import SealingError, key_id, load_private_key, load_public_key, open_sealed, seal
from promptfence.core import Action, LogRecord, Payload
from promptfence.errors import KeyMaterialError

log = logging.getLogger("promptfence.logs")


class Base(DeclarativeBase):
    pass


class PromptLogRow(Base):
    __tablename__ = "prompt_log"

    record_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(320), index=True)
    groups: Mapped[str] = mapped_column(Text, default="[]")
    app: Mapped[str] = mapped_column(String(64), index=True)
    app_type: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(32))
    operation_id: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    action: Mapped[str] = mapped_column(String(16), index=True)
    rule_ids: Mapped[str] = mapped_column(Text, default="[]")
    topics: Mapped[str] = mapped_column(Text, default="{}")
    dlp_match: Mapped[bool] = mapped_column(Boolean, default=False)
    prompt_captured: Mapped[bool] = mapped_column(Boolean, default=False)
    meta: Mapped[str] = mapped_column(Text)
    sealed: Mapped[str] = mapped_column(Text)

    __table_args__ = (Index("ix_prompt_log_app_time", "app", "timestamp"),)


@dataclass(frozen=True)
class Recipient:
    key_id: str
    public_key: bytes

    @classmethod
    def from_file(cls, path: Path) -> Recipient:
        public = load_public_key(path)
        return cls(key_id(public), public)


@dataclass(frozen=True)
class StoredRecord:
    """A row as read back: clear metadata, and sealed blobs that need a private key."""

    record_id: str
    metadata: dict[str, Any]
    sealed: dict[str, str]

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


class LogStore:
    def __init__(self, database_url: str, recipients: Sequence[Recipient]) -> None:
        if database_url.startswith("sqlite:///"):
            Path(database_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        self.engine: Engine = create_engine(database_url, future=True)
        self.recipients = tuple(recipients)
        Base.metadata.create_all(self.engine)

    def write(self, record: LogRecord) -> None:
        if not self.recipients:
            raise KeyMaterialError("no recipient public key configured: refusing to store an unsealed payload")
        meta = record.metadata()
        plaintext = json.dumps(record.payload.to_dict(), ensure_ascii=False).encode("utf-8")
        sealed = {r.key_id: seal(r.public_key, plaintext) for r in self.recipients}
        row = PromptLogRow(
            record_id=record.record_id,
            timestamp=record.timestamp,
            user=meta["user"],
            groups=json.dumps(meta["groups"]),
            app=meta["app"],
            app_type=meta["app_type"],
            operation=meta["operation"],
            operation_id=meta["operation_id"],
            conversation_id=meta["conversation_id"],
            action=record.decision.action.value,
            rule_ids=json.dumps(list(record.decision.rule_ids)),
            topics=json.dumps(meta["topics"]),
            dlp_match=bool(record.inspection.findings),
            prompt_captured=bool(record.payload.prompt),
            meta=json.dumps(meta),
            sealed=json.dumps(sealed),
        )
        with Session(self.engine) as session, session.begin():
            session.add(row)

    def list(
        self,
        *,
        limit: int = 50,
        app: str | None = None,
        action: Action | None = None,
        user: str | None = None,
        conversation_id: str | None = None,
    ) -> list[StoredRecord]:
        query = select(PromptLogRow).order_by(PromptLogRow.timestamp.desc()).limit(limit)
        if app:
            query = query.where(PromptLogRow.app == app)
        if action:
            query = query.where(PromptLogRow.action == action.value)
        if user:
            query = query.where(PromptLogRow.user == user)
        if conversation_id:
            query = query.where(PromptLogRow.conversation_id == conversation_id)
        with Session(self.engine) as session:
            return [_stored(row) for row in session.scalars(query)]

    def get(self, record_id: str) -> StoredRecord | None:
        with Session(self.engine) as session:
            row = session.get(PromptLogRow, record_id)
            if row is None and len(record_id) >= 6:
                rows = session.scalars(
                    select(PromptLogRow).where(PromptLogRow.record_id.startswith(record_id)).limit(2)
                ).all()
                row = rows[0] if len(rows) == 1 else None
            return None if row is None else _stored(row)

    def close(self) -> None:
        self.engine.dispose()


def _stored(row: PromptLogRow) -> StoredRecord:
    return StoredRecord(row.record_id, json.loads(row.meta), json.loads(row.sealed))


class AsyncRecorder:
    """The proxy's ``RecordPort``: writes on one worker thread so the event loop never waits
    on the database, and in arrival order."""

    def __init__(self, store: LogStore) -> None:
        self.store = store
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="log-writer")

    async def record(self, record: LogRecord) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self.store.write, record)
        log.info(
            "record %s written (%s, %s)", record.record_id, record.operation.operation_id, record.decision.action.value
        )

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self.store.close()
