"""SQLAlchemy 2 models of the embedding memory; the schema is owned by ``vectors/migrations``.

The database is the source of truth: every centroid's vector (float32 bytes, never text), its
counters and its labels live here, and each inspector process rebuilds its FAISS index from it.
Nothing in these tables is derived from text other than through the embedding of a *redacted*
prompt: there is no text column at all.

``vector_namespace`` is one (tenant, embedding model) memory. Its ``generation`` goes up by one
in every transaction that changes the namespace; each changed centroid carries the generation
that last changed it (``changed_gen``), and deleted centroids leave a tombstone, so a process can
catch up with another process's writes by reading only what changed since its own generation.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, ForeignKey, Index, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from vectors.database import BIG_ID


class Base(DeclarativeBase):
    pass


class NamespaceRow(Base):
    """One tenant's memory for one embedding model (vectors of different models never mix)."""

    __tablename__ = "vector_namespace"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    tenant: Mapped[str] = mapped_column(String(128))
    model: Mapped[str] = mapped_column(String(256))
    dimension: Mapped[int] = mapped_column(Integer)
    generation: Mapped[int] = mapped_column(BigInteger, default=0)
    # Tombstones of generations below this were pruned: a reader that old must rebuild fully.
    tombstones_from: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[float] = mapped_column(Float)

    __table_args__ = (UniqueConstraint("tenant", "model", name="uq_vector_namespace_tenant_model"),)


class CentroidRow(Base):
    """A cluster of similar redacted prompts: its running-mean vector and its counters."""

    __tablename__ = "vector_centroid"

    id: Mapped[int] = mapped_column(BIG_ID, primary_key=True, autoincrement=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("vector_namespace.id", ondelete="CASCADE"))
    vector: Mapped[bytes] = mapped_column(LargeBinary)  # float32, L2-normalised
    members: Mapped[int] = mapped_column(Integer)  # observations folded into the mean
    hits: Mapped[int] = mapped_column(Integer)  # inspections assigned to it, and lookups it served
    fp_reports: Mapped[int] = mapped_column(Integer, default=0)
    tp_reports: Mapped[int] = mapped_column(Integer, default=0)
    label_n: Mapped[int] = mapped_column(Integer, default=0)  # observations that carried LLM labels
    created_at: Mapped[float] = mapped_column(Float)
    last_used: Mapped[float] = mapped_column(Float)
    changed_gen: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_vector_centroid_ns_gen", "namespace_id", "changed_gen"),
        Index("ix_vector_centroid_ns_used", "namespace_id", "last_used"),
    )


class CentroidTopicRow(Base):
    """Per topic: the summed LLM label scores, and the admins' false / true positive reports."""

    __tablename__ = "vector_centroid_topic"

    centroid_id: Mapped[int] = mapped_column(ForeignKey("vector_centroid.id", ondelete="CASCADE"), primary_key=True)
    topic: Mapped[str] = mapped_column(String(32), primary_key=True)
    label_sum: Mapped[float] = mapped_column(Float, default=0.0)
    fp_reports: Mapped[int] = mapped_column(Integer, default=0)
    tp_reports: Mapped[int] = mapped_column(Integer, default=0)


class TombstoneRow(Base):
    """A centroid deleted (expired) at a generation, so other processes drop it from their index."""

    __tablename__ = "vector_tombstone"

    namespace_id: Mapped[int] = mapped_column(ForeignKey("vector_namespace.id", ondelete="CASCADE"), primary_key=True)
    centroid_id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    generation: Mapped[int] = mapped_column(BigInteger)
    deleted_at: Mapped[float] = mapped_column(Float)
