"""``log_record.answer_status``: a record written at decision time, completed when the answer ends.

"pending" (the prompt was forwarded; its answer has not been recorded yet), "complete",
"upstream_error", or "none" (nothing was forwarded, e.g. blocked). Records written before this
revision were written once, after the answer: they are "none" when blocked and "complete"
otherwise, and their clear metadata says so too.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import json

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("log_record") as batch:
        batch.add_column(sa.Column("answer_status", sa.String(16), nullable=False, server_default="complete"))
    op.create_index("ix_log_record_answer_status", "log_record", ["answer_status"])
    bind = op.get_bind()
    rows = bind.execute(sa.text("SELECT id, action, meta FROM log_record")).all()
    for row_id, action, meta_text in rows:
        status = "none" if action == "block" else "complete"
        meta = json.loads(meta_text)
        meta.setdefault("answer_status", status)
        bind.execute(
            sa.text("UPDATE log_record SET answer_status = :s, meta = :m WHERE id = :i"),
            {"s": meta["answer_status"], "m": json.dumps(meta, sort_keys=True), "i": row_id},
        )


def downgrade() -> None:
    op.drop_index("ix_log_record_answer_status", "log_record")
    with op.batch_alter_table("log_record") as batch:
        batch.drop_column("answer_status")
