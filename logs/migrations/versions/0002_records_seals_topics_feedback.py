"""Records with one sealed blob per recipient key, topic and group rows, feedback reports.

Moves every skeleton ``prompt_log`` row over (its ``sealed`` JSON becomes ``log_seal`` rows, its
topics ``log_topic`` rows), then drops ``prompt_log``. Nothing is decrypted: blobs move as they
are.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import json
import time
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    record = op.create_table(
        "log_record",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("record_id", sa.String(64), nullable=False, unique=True),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("user", sa.String(320), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("identity_source", sa.String(32), nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("app_type", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("operation_id", sa.String(128), nullable=False),
        sa.Column("conversation_id", sa.String(128), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("policy", sa.String(128), nullable=False),
        sa.Column("rule_ids", sa.Text, nullable=False),
        sa.Column("dlp_match", sa.Boolean, nullable=False),
        sa.Column("prompt_captured", sa.Boolean, nullable=False),
        sa.Column("inspection_ms", sa.Float, nullable=False),
        sa.Column("prompt_chars", sa.Integer, nullable=False),
        sa.Column("response_chars", sa.Integer, nullable=True),
        sa.Column("response_bytes", sa.BigInteger, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("stored_at", sa.Float, nullable=False),
    )
    op.create_index("ix_log_record_timestamp", "log_record", ["timestamp"])
    op.create_index("ix_log_record_user", "log_record", ["user"])
    op.create_index("ix_log_record_conversation_id", "log_record", ["conversation_id"])
    op.create_index("ix_log_record_app_time", "log_record", ["app", "timestamp"])
    op.create_index("ix_log_record_action_time", "log_record", ["action", "timestamp"])
    fk = sa.ForeignKey("log_record.record_id", ondelete="CASCADE")
    seal = op.create_table(
        "log_seal",
        sa.Column("record_id", sa.String(64), fk, primary_key=True),
        sa.Column("key_id", sa.String(64), primary_key=True),
        sa.Column("blob", sa.Text, nullable=False),
    )
    topic = op.create_table(
        "log_topic",
        sa.Column(
            "record_id", sa.String(64), sa.ForeignKey("log_record.record_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("topic", sa.String(32), primary_key=True),
        sa.Column("score", sa.Float, nullable=False),
        sa.Column("confidence", sa.String(8), nullable=False),
    )
    op.create_index("ix_log_topic_topic", "log_topic", ["topic"])
    group = op.create_table(
        "log_group",
        sa.Column(
            "record_id", sa.String(64), sa.ForeignKey("log_record.record_id", ondelete="CASCADE"), primary_key=True
        ),
        sa.Column("group_name", sa.String(128), primary_key=True),
    )
    op.create_index("ix_log_group_name", "log_group", ["group_name"])
    op.create_table(
        "log_feedback",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column(
            "record_id", sa.String(64), sa.ForeignKey("log_record.record_id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("topic", sa.String(32), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("reporter", sa.String(320), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("note", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_log_feedback_record_id", "log_feedback", ["record_id"])
    op.create_index("ix_log_feedback_created_at", "log_feedback", ["created_at"])

    _copy_skeleton_rows(record, seal, topic, group)
    op.drop_table("prompt_log")


def _copy_skeleton_rows(record: sa.Table, seal: sa.Table, topic: sa.Table, group: sa.Table) -> None:
    bind = op.get_bind()
    old = bind.execute(sa.text("SELECT meta, sealed FROM prompt_log ORDER BY timestamp")).all()
    now = time.time()
    for meta_text, sealed_text in old:
        meta: dict[str, Any] = json.loads(meta_text)
        rid = meta["record_id"]
        decision = meta.get("decision") or {}
        topics: dict[str, Any] = meta.get("topics") or {}
        bind.execute(
            record.insert().values(
                record_id=rid,
                timestamp=meta["timestamp"],
                user=meta["user"],
                groups=json.dumps(meta.get("groups") or []),
                identity_source=meta.get("identity_source") or "anonymous",
                app=meta["app"],
                app_type=meta.get("app_type") or "",
                operation=meta["operation"],
                operation_id=meta.get("operation_id") or "",
                conversation_id=meta.get("conversation_id"),
                action=decision.get("action", "allow"),
                policy=decision.get("policy", ""),
                rule_ids=json.dumps(decision.get("rule_ids") or []),
                dlp_match=bool(meta.get("findings")) or bool(topics),
                prompt_captured=bool(meta.get("prompt_chars")),
                inspection_ms=float(meta.get("inspection_ms") or 0.0),
                prompt_chars=int(meta.get("prompt_chars") or 0),
                response_chars=meta.get("response_chars"),
                response_bytes=int(meta.get("response_bytes") or 0),
                meta=meta_text,
                stored_at=now,
            )
        )
        for kid, blob in json.loads(sealed_text).items():
            bind.execute(seal.insert().values(record_id=rid, key_id=kid, blob=blob))
        for name, value in topics.items():
            bind.execute(
                topic.insert().values(
                    record_id=rid, topic=name, score=float(value["score"]), confidence=str(value["confidence"])
                )
            )
        for name in meta.get("groups") or []:
            bind.execute(group.insert().values(record_id=rid, group_name=name))


def downgrade() -> None:
    raise NotImplementedError("the prompt log does not downgrade past 0002 (restore a backup instead)")
