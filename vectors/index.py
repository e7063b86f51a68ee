"""The FAISS side of the memory: exact search while small, approximate above a size, CPU or GPU.

:class:`VectorIndex` maps centroid ids to vectors and answers top-k inner-product queries on
L2-normalised vectors (so scores are cosine similarities). Below ``approximate_above`` vectors
the main index is exact (``IndexFlatIP``); above it, HNSW (``IndexHNSWFlat``) or IVF
(``IndexIVFFlat``). Centroids move (running means) and expire, and HNSW cannot remove vectors,
so changes go to a small exact *overlay* and the stale rows of the main index are masked; once
the overlay is large the main index is rebuilt. Results are always the merge of both, so a change
is visible to the next query.

The same code runs on faiss-gpu: with ``device`` ``gpu`` (or ``auto`` and a GPU present) the flat
and IVF indexes are moved with ``index_cpu_to_gpu``; HNSW has no GPU implementation in FAISS, so
on a GPU the approximate index is IVF.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import numpy.typing as npt

from promptfence.errors import ConfigError

Vector = npt.NDArray[np.float32]
APPROXIMATE_KINDS = ("hnsw", "ivf")


def gpu_count() -> int:
    getter = getattr(faiss, "get_num_gpus", None)
    return int(getter()) if getter is not None else 0


def resolve_device(device: str) -> str:
    """``cpu`` | ``gpu`` | ``auto`` -> ``cpu`` or ``gpu``; a GPU asked for and missing is a start-up error."""
    if device not in ("cpu", "gpu", "auto"):
        raise ConfigError("expected cpu, gpu or auto", field="memory.device")
    if device == "cpu":
        return "cpu"
    if gpu_count() > 0:
        return "gpu"
    if device == "gpu":
        raise ConfigError("memory.device is gpu but FAISS sees no GPU (install faiss-gpu)", field="memory.device")
    return "cpu"


@dataclass(frozen=True)
class IndexSpec:
    dimension: int
    approximate_above: int = 20000
    approximate: str = "hnsw"  # hnsw | ivf
    device: str = "cpu"  # cpu | gpu | auto
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80
    hnsw_ef_search: int = 128
    ivf_nprobe: int = 32
    # The overlay is merged into a rebuilt main index past this fraction of the main index.
    overlay_fraction: float = 0.05
    overlay_min: int = 2048


class VectorIndex:
    """Top-k cosine search over centroid ids; thread-safe (one lock, FAISS releases the GIL)."""

    def __init__(self, spec: IndexSpec) -> None:
        if spec.approximate not in APPROXIMATE_KINDS:
            raise ConfigError(f"expected one of {', '.join(APPROXIMATE_KINDS)}", field="memory.approximate")
        self.spec = spec
        self.device = resolve_device(spec.device)
        self._lock = threading.RLock()
        self._gpu_resources: Any = None
        self._vectors: dict[int, Vector] = {}
        self._main: Any = None
        self._main_ids = np.zeros(0, dtype=np.int64)
        self._main_kind = "flat"
        self._stale: set[int] = set()  # ids whose main-index row is outdated or deleted
        self._overlay: dict[int, Vector] = {}

    # -- state ------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._vectors)

    @property
    def kind(self) -> str:
        """What the main index is: ``flat`` (exact), ``hnsw`` or ``ivf``."""
        return self._main_kind

    def ids(self) -> list[int]:
        with self._lock:
            return sorted(self._vectors)

    def vector(self, centroid_id: int) -> Vector | None:
        return self._vectors.get(centroid_id)

    # -- changes ----------------------------------------------------------------------------
    def rebuild(self, items: Iterable[tuple[int, Vector]]) -> None:
        """Replace everything with ``items`` and build a fresh main index."""
        with self._lock:
            self._vectors = {int(i): np.asarray(v, dtype=np.float32) for i, v in items}
            self._build_main()

    def upsert(self, centroid_id: int, vector: Vector) -> None:
        with self._lock:
            self._vectors[centroid_id] = np.asarray(vector, dtype=np.float32)
            self._stale.add(centroid_id)
            self._overlay[centroid_id] = self._vectors[centroid_id]
            self._maybe_compact()

    def remove(self, centroid_id: int) -> None:
        with self._lock:
            if self._vectors.pop(centroid_id, None) is not None:
                self._stale.add(centroid_id)
                self._overlay.pop(centroid_id, None)
                self._maybe_compact()

    def _maybe_compact(self) -> None:
        limit = max(self.spec.overlay_min, int(self.spec.overlay_fraction * len(self._main_ids)))
        if len(self._overlay) + len(self._stale) > limit:
            self._build_main()

    def _build_main(self) -> None:
        ids = np.fromiter(self._vectors.keys(), dtype=np.int64, count=len(self._vectors))
        matrix = (
            np.stack([self._vectors[int(i)] for i in ids]).astype(np.float32)
            if len(ids)
            else np.zeros((0, self.spec.dimension), dtype=np.float32)
        )
        self._main = self._new_index(len(ids), matrix)
        if len(ids):
            self._main.add(matrix)
        self._main_ids = ids
        self._stale = set()
        self._overlay = {}

    def _new_index(self, size: int, sample: Vector) -> Any:
        d = self.spec.dimension
        kind = "flat"
        if size > self.spec.approximate_above:
            kind = "ivf" if self.device == "gpu" else self.spec.approximate
        index: Any
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, self.spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.spec.hnsw_ef_construction
            index.hnsw.efSearch = self.spec.hnsw_ef_search
        else:
            nlist = max(1, min(size // 39, int(4 * math.sqrt(size))))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            train = sample
            if len(sample) > 64 * nlist:
                pick = np.random.default_rng(0).choice(len(sample), 64 * nlist, replace=False)
                train = sample[np.sort(pick)]
            index.train(np.ascontiguousarray(train))
            index.nprobe = self.spec.ivf_nprobe
        self._main_kind = kind
        if self.device == "gpu" and kind in ("flat", "ivf"):
            if self._gpu_resources is None:
                self._gpu_resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            if kind == "ivf":
                faiss.GpuParameterSpace().set_index_parameter(index, "nprobe", self.spec.ivf_nprobe)
        return index

    # -- search -----------------------------------------------------------------------------
    def search(self, queries: Vector, k: int) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]:
        """Top-k (similarities, ids) per query row; missing places are (-inf, -1)."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        n = q.shape[0]
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        ids = np.full((n, k), -1, dtype=np.int64)
        with self._lock:
            candidates: list[tuple[npt.NDArray[np.float32], npt.NDArray[np.int64]]] = []
            if self._main is not None and len(self._main_ids):
                want = min(len(self._main_ids), k + len(self._stale))
                d, rows = self._main.search(q, want)
                mapped = np.where(rows >= 0, self._main_ids[np.clip(rows, 0, None)], -1)
                if self._stale:
                    stale = np.isin(mapped, np.fromiter(self._stale, dtype=np.int64))
                    d = np.where(stale, -np.inf, d)
                    mapped = np.where(stale, -1, mapped)
                candidates.append((d.astype(np.float32), mapped.astype(np.int64)))
            if self._overlay:
                oids = np.fromiter(self._overlay.keys(), dtype=np.int64, count=len(self._overlay))
                omat = np.stack(list(self._overlay.values()))
                od = q @ omat.T
                candidates.append((od.astype(np.float32), np.broadcast_to(oids, od.shape).copy()))
        if not candidates:
            return sims, ids
        all_d = np.concatenate([c[0] for c in candidates], axis=1)
        all_i = np.concatenate([c[1] for c in candidates], axis=1)
        all_d = np.where(all_i < 0, -np.inf, all_d)
        take = min(k, all_d.shape[1])
        order = np.argsort(-all_d, axis=1, kind="stable")[:, :take]
        sims[:, :take] = np.take_along_axis(all_d, order, axis=1)
        ids[:, :take] = np.take_along_axis(all_i, order, axis=1)
        ids[~np.isfinite(sims)] = -1
        return sims, ids

    # -- snapshots --------------------------------------------------------------------------
    def write(self, path: str) -> None:
        """Write the main index (CPU form) for a faster start; the overlay is folded in first."""
        with self._lock:
            if self._overlay or self._stale:
                self._build_main()
            index = self._main
            if self.device == "gpu" and index is not None:
                index = faiss.index_gpu_to_cpu(index)
            if index is not None:
                faiss.write_index(index, path)
                np.save(path + ".ids.npy", self._main_ids)

    def load(self, path: str, items: Iterable[tuple[int, Vector]]) -> bool:
        """Use a snapshot written by :meth:`write` for ``items`` (from the database); False: rebuilt.

        The caller only offers a snapshot written at the database's current generation; the ids
        are checked again here, and any mismatch or unreadable file means a rebuild.
        """
        with self._lock:
            self._vectors = {int(i): np.asarray(v, dtype=np.float32) for i, v in items}
            try:
                index = faiss.read_index(path)
                ids = np.load(path + ".ids.npy")
            except (RuntimeError, OSError, ValueError):
                self._build_main()
                return False
            if index.d != self.spec.dimension or set(ids.tolist()) != set(self._vectors) or len(ids) != index.ntotal:
                self._build_main()
                return False
            kind = "flat"
            if isinstance(index, faiss.IndexHNSWFlat):
                kind = "hnsw"
                index.hnsw.efSearch = self.spec.hnsw_ef_search
            elif isinstance(index, faiss.IndexIVFFlat):
                kind = "ivf"
                index.nprobe = self.spec.ivf_nprobe
            if self.device == "gpu" and kind in ("flat", "ivf"):
                if self._gpu_resources is None:
                    self._gpu_resources = faiss.StandardGpuResources()
                index = faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
            self._main, self._main_ids, self._main_kind = index, ids.astype(np.int64), kind
            self._stale, self._overlay = set(), {}
            return True
