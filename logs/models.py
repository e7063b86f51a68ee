"""SQLAlchemy 2 models of the prompt log; the schema itself is owned by the Alembic migrations.

Only clear metadata lives in columns. The prompt, the answer and the attachment names exist only
as HPKE blobs in :class:`SealRow`, one per recipient key id, so a record stays readable by every
admin it was sealed to and old records stay readable after a key rotation.

Topics and groups have their own rows so filters and counts are plain SQL on SQLite and
PostgreSQL alike (no JSON operators, which differ between the two).
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vectors.database import BIG_ID


class Base(DeclarativeBase):
    pass


class RecordRow(Base):
    """One inspected operation. ``id`` is the insertion order, ``record_id`` the public id."""

    __tablename__ = "log_record"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(String(64), unique=True)
    timestamp: Mapped[float] = mapped_column(Float, index=True)
    user: Mapped[str] = mapped_column(String(320), index=True)
    groups: Mapped[str] = mapped_column(Text)  # JSON list, for display; filters use GroupRow
    identity_source: Mapped[str] = mapped_column(String(32))
    app: Mapped[str] = mapped_column(String(64))
    app_type: Mapped[str] = mapped_column(String(64))
    operation: Mapped[str] = mapped_column(String(32))
    operation_id: Mapped[str] = mapped_column(String(128))
    conversation_id: Mapped[str | None] = mapped_column(String(128), index=True, nullable=True)
    action: Mapped[str] = mapped_column(String(16))
    policy: Mapped[str] = mapped_column(String(128))
    rule_ids: Mapped[str] = mapped_column(Text)  # JSON list
    dlp_match: Mapped[bool] = mapped_column(Boolean)
    prompt_captured: Mapped[bool] = mapped_column(Boolean)
    inspection_ms: Mapped[float] = mapped_column(Float)
    prompt_chars: Mapped[int] = mapped_column(Integer)
    response_chars: Mapped[int | None] = mapped_column(Integer, nullable=True)
    response_bytes: Mapped[int] = mapped_column(BigInteger)
    # "pending" until the answer is recorded, then "complete" / "upstream_error"; "none": not forwarded.
    answer_status: Mapped[str] = mapped_column(String(16), index=True, server_default="complete")
    meta: Mapped[str] = mapped_column(Text)  # the complete clear metadata, JSON
    stored_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (
        Index("ix_log_record_app_time", "app", "timestamp"),
        Index("ix_log_record_action_time", "action", "timestamp"),
    )


class SealRow(Base):
    """The payload sealed to one recipient key (matched-data-cli v3 blob)."""

    __tablename__ = "log_seal"

    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("log_record.record_id", ondelete="CASCADE"), primary_key=True
    )
    key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    blob: Mapped[str] = mapped_column(Text)


class TopicRow(Base):
    __tablename__ = "log_topic"

    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("log_record.record_id", ondelete="CASCADE"), primary_key=True
    )
    # 64: a custom topic's longest name (promptfence.core.CUSTOM_TOPIC_NAME); revision 0004.
    topic: Mapped[str] = mapped_column(String(64), primary_key=True)
    score: Mapped[float] = mapped_column(Float)
    confidence: Mapped[str] = mapped_column(String(8))

    __table_args__ = (Index("ix_log_topic_topic", "topic"),)


class GroupRow(Base):
    __tablename__ = "log_group"

    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("log_record.record_id", ondelete="CASCADE"), primary_key=True
    )
    group_name: Mapped[str] = mapped_column(String(128), primary_key=True)

    __table_args__ = (Index("ix_log_group_name", "group_name"),)


class FeedbackRow(Base):
    """An admin's verdict on one topic of one record: the input of the learning loop."""

    __tablename__ = "log_feedback"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    record_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("log_record.record_id", ondelete="CASCADE"), index=True
    )
    topic: Mapped[str] = mapped_column(String(32))
    verdict: Mapped[str] = mapped_column(String(16))  # "false_positive" | "true_positive"
    reporter: Mapped[str] = mapped_column(String(320))
    source: Mapped[str] = mapped_column(String(16))  # "cli" | "viewer"
    note: Mapped[str] = mapped_column(Text)
    created_at: Mapped[float] = mapped_column(Float, index=True)
