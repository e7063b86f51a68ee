"""The walking skeleton's single table, as ``create_all`` made it before migrations existed.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "prompt_log",
        sa.Column("record_id", sa.String(36), primary_key=True),
        sa.Column("timestamp", sa.Float, nullable=False),
        sa.Column("user", sa.String(320), nullable=False),
        sa.Column("groups", sa.Text, nullable=False),
        sa.Column("app", sa.String(64), nullable=False),
        sa.Column("app_type", sa.String(64), nullable=False),
        sa.Column("operation", sa.String(32), nullable=False),
        sa.Column("operation_id", sa.String(128), nullable=False),
        sa.Column("conversation_id", sa.String(128), nullable=True),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("rule_ids", sa.Text, nullable=False),
        sa.Column("topics", sa.Text, nullable=False),
        sa.Column("dlp_match", sa.Boolean, nullable=False),
        sa.Column("prompt_captured", sa.Boolean, nullable=False),
        sa.Column("meta", sa.Text, nullable=False),
        sa.Column("sealed", sa.Text, nullable=False),
    )
    op.create_index("ix_prompt_log_timestamp", "prompt_log", ["timestamp"])
    op.create_index("ix_prompt_log_user", "prompt_log", ["user"])
    op.create_index("ix_prompt_log_app", "prompt_log", ["app"])
    op.create_index("ix_prompt_log_conversation_id", "prompt_log", ["conversation_id"])
    op.create_index("ix_prompt_log_action", "prompt_log", ["action"])
    op.create_index("ix_prompt_log_app_time", "prompt_log", ["app", "timestamp"])


def downgrade() -> None:
    op.drop_table("prompt_log")
