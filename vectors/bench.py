"""``promptfence bench vectors``: embedding throughput and FAISS query latency, exact vs approximate.

Index sizes use synthetic vectors of the embedding model's dimension: a mixture of tight clusters
on the unit sphere (real sentence embeddings cluster by topic; uniformly random vectors are the
worst case for any approximate index and say little about real recall). Queries are stored
vectors with a little noise added. Recall@k is measured against the exact (``IndexFlatIP``)
answer for the same queries. No text is involved apart from the throughput phase, which embeds
built-in synthetic prompts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from vectors.index import IndexSpec, Vector, VectorIndex, gpu_count


def clustered_vectors(n: int, dimension: int, *, clusters: int = 1000, spread: float = 0.6, seed: int = 0) -> Vector:
    """``n`` unit vectors around ``clusters`` random centres (generated in chunks, float32)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    out = np.empty((n, dimension), dtype=np.float32)
    step = 65536
    for start in range(0, n, step):
        m = min(step, n - start)
        pick = rng.integers(0, clusters, m)
        noise = rng.standard_normal((m, dimension)).astype(np.float32) * (spread / np.sqrt(dimension))
        block = centres[pick] + noise
        out[start : start + m] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def noisy_queries(base: Vector, count: int, *, noise: float = 0.3, seed: int = 1) -> Vector:
    rng = np.random.default_rng(seed)
    picks = base[rng.integers(0, len(base), count)]
    q = picks + rng.standard_normal(picks.shape).astype(np.float32) * (noise / np.sqrt(base.shape[1]))
    return np.asarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)


def recall_at_k(truth: np.ndarray[Any, Any], found: np.ndarray[Any, Any]) -> float:
    hits = sum(len(set(t.tolist()) & set(f.tolist()) - {-1}) for t, f in zip(truth, found, strict=True))
    return hits / max(1, truth.size)


def _percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else 0.0


def time_queries(index: VectorIndex, queries: Vector, k: int) -> tuple[list[float], np.ndarray[Any, Any]]:
    """One query at a time (as an inspection asks), latency of each in ms, and the ids found."""
    latencies = []
    found = np.empty((len(queries), k), dtype=np.int64)
    for i, q in enumerate(queries):
        started = time.perf_counter()
        _, ids = index.search(q[None, :], k)
        latencies.append((time.perf_counter() - started) * 1000)
        found[i] = ids[0]
    return latencies, found


def bench_index(
    sizes: Sequence[int],
    dimension: int,
    *,
    k: int = 10,
    queries: int = 200,
    approximate: Sequence[str] = ("hnsw", "ivf"),
    device: str = "cpu",
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    """Per size: build time, p50/p90 single-query latency and recall@k of each index kind."""
    rows: list[dict[str, Any]] = []
    for size in sizes:
        base = clustered_vectors(size, dimension)
        qs = noisy_queries(base, queries)
        items = list(zip(range(1, size + 1), base, strict=True))
        truth: np.ndarray[Any, Any] | None = None
        for kind in ("flat", *approximate):
            if kind == "hnsw" and device == "gpu":
                continue
            spec = IndexSpec(
                dimension=dimension,
                approximate_above=size + 1 if kind == "flat" else 0,
                approximate=kind if kind != "flat" else "hnsw",
                device=device,
            )
            index = VectorIndex(spec)
            started = time.perf_counter()
            index.rebuild(items)
            build_s = time.perf_counter() - started
            time_queries(index, qs[: min(20, queries)], k)  # warm-up
            latencies, found = time_queries(index, qs, k)
            if truth is None:
                truth = found
            row = {
                "size": size,
                "index": index.kind,
                "device": index.device,
                "build_s": round(build_s, 2),
                "p50_ms": round(_percentile(latencies, 50), 3),
                "p90_ms": round(_percentile(latencies, 90), 3),
                f"recall@{k}": round(recall_at_k(truth, found), 4),
            }
            rows.append(row)
            if progress is not None:
                progress(str(row))
            del index
        del base, items
    return rows


def bench_embedding(
    embed: Callable[[list[str]], Vector], texts: Sequence[str], batch_sizes: Sequence[int], *, total: int = 512
) -> list[dict[str, Any]]:
    """Texts per second when ``embed`` gets batches of each size (``total`` texts per size)."""
    rows = []
    pool = [texts[i % len(texts)] for i in range(total)]
    embed(pool[:8])  # warm-up
    for batch in batch_sizes:
        started = time.perf_counter()
        for start in range(0, total, batch):
            embed(pool[start : start + batch])
        wall = time.perf_counter() - started
        rows.append({"batch_size": batch, "texts": total, "texts_per_s": round(total / wall, 1)})
    return rows


def environment() -> dict[str, Any]:
    import faiss

    return {"faiss": getattr(faiss, "__version__", "?"), "gpus": gpu_count()}
