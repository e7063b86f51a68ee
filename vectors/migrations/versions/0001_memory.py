"""Embedding memory: namespaces, centroids with counters, per-topic labels and reports, tombstones.

Revision ID: v0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "v0001"
down_revision = None
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "vector_namespace",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("dimension", sa.Integer, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("tombstones_from", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.UniqueConstraint("tenant", "model", name="uq_vector_namespace_tenant_model"),
    )
    op.create_table(
        "vector_centroid",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("namespace_id", _BIG_ID, sa.ForeignKey("vector_namespace.id", ondelete="CASCADE"), nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=False),
        sa.Column("members", sa.Integer, nullable=False),
        sa.Column("hits", sa.Integer, nullable=False),
        sa.Column("fp_reports", sa.Integer, nullable=False),
        sa.Column("tp_reports", sa.Integer, nullable=False),
        sa.Column("label_n", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("last_used", sa.Float, nullable=False),
        sa.Column("changed_gen", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_vector_centroid_ns_gen", "vector_centroid", ["namespace_id", "changed_gen"])
    op.create_index("ix_vector_centroid_ns_used", "vector_centroid", ["namespace_id", "last_used"])
    op.create_table(
        "vector_centroid_topic",
        sa.Column("centroid_id", _BIG_ID, sa.ForeignKey("vector_centroid.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("topic", sa.String(32), primary_key=True),
        sa.Column("label_sum", sa.Float, nullable=False),
        sa.Column("fp_reports", sa.Integer, nullable=False),
        sa.Column("tp_reports", sa.Integer, nullable=False),
    )
    op.create_table(
        "vector_tombstone",
        sa.Column("namespace_id", _BIG_ID, sa.ForeignKey("vector_namespace.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("centroid_id", sa.BigInteger, primary_key=True),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("deleted_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vector_tombstone")
    op.drop_table("vector_centroid_topic")
    op.drop_index("ix_vector_centroid_ns_used", table_name="vector_centroid")
    op.drop_index("ix_vector_centroid_ns_gen", table_name="vector_centroid")
    op.drop_table("vector_centroid")
    op.drop_table("vector_namespace")
