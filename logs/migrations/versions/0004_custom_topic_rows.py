"""``log_topic`` holds custom topics too: ``topic`` widened to 64 characters, older records backfilled.

Custom topic names (``promptfence.core.CUSTOM_TOPIC_NAME``) run to 64 characters, and records
only kept them in their clear metadata (``custom_topics``), so ``logs list --topic`` and the
viewer's chart could not see them. Each record written before this revision gets its custom
topics' rows from that metadata, in pages, inside the migration's one transaction (a crash
leaves the database at 0003, as if this revision had never started).

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_PAGE = 500
_BUILTIN = (
    "PII", "CREDENTIALS", "SOURCE_CODE", "CUSTOMER_DATA", "FINANCIAL", "PII_REQUEST", "MALICIOUS_CODE", "JAILBREAK",
)


def upgrade() -> None:
    with op.batch_alter_table("log_topic") as batch:
        batch.alter_column("topic", type_=sa.String(64), existing_type=sa.String(32), existing_nullable=False)
    bind = op.get_bind()
    topic_table = sa.table(
        "log_topic",
        sa.column("record_id", sa.String),
        sa.column("topic", sa.String),
        sa.column("score", sa.Float),
        sa.column("confidence", sa.String),
    )
    last_id = 0
    while True:
        rows = bind.execute(
            sa.text("SELECT id, record_id, meta FROM log_record WHERE id > :last ORDER BY id LIMIT :n"),
            {"last": last_id, "n": _PAGE},
        ).all()
        if not rows:
            return
        last_id = int(rows[-1][0])
        batch_rows: list[dict[str, Any]] = []
        for _id, record_id, meta_text in rows:
            custom = json.loads(meta_text).get("custom_topics") or {}
            for name, value in custom.items():
                batch_rows.append(
                    {
                        "record_id": record_id,
                        "topic": str(name)[:64],
                        "score": float(value["score"]),
                        "confidence": str(value["confidence"])[:8],
                    }
                )
        if batch_rows:
            bind.execute(topic_table.insert(), batch_rows)


def downgrade() -> None:
    # 0003 kept built-in topics only (the eight names as of this revision).
    builtin = ", ".join(f"'{name}'" for name in _BUILTIN)
    op.get_bind().execute(sa.text(f"DELETE FROM log_topic WHERE topic NOT IN ({builtin})"))
    with op.batch_alter_table("log_topic") as batch:
        batch.alter_column("topic", type_=sa.String(32), existing_type=sa.String(64), existing_nullable=False)
