"""Build the inspector's one sentence encoder from ``inspector.embedder`` (issue 17).

One encoder serves the intent head and the neighbour memory, wrapped in
:class:`~inference.batching.SharedEmbedder` so that a text both ask for is embedded once and
concurrent inspections share batches. The runtime under it is configuration:

- ``backend: auto`` (default): ``onnx`` when ``device`` is ``cpu``, else ``torch``.
- ``backend: onnx``: ONNX Runtime on the CPU, ``onnx_variant`` int8 or fp32,
  exported from the local weights into ``<data_dir>/models`` (inference/onnx_embedder.py).
- ``backend: torch``: sentence-transformers, the reference path and the one for GPUs.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from inference.batching import SharedEmbedder
from inference.embedder import Embedder, EmbedderSpec, ModelUnavailableError, SentenceTransformerEmbedder

if TYPE_CHECKING:
    from promptfence.config import EmbedderConfig

BACKENDS = ("auto", "onnx", "torch")


MODEL_CACHE_ENV = "PROMPTFENCE_MODEL_CACHE"


def model_cache_dir(config: EmbedderConfig, data_dir: Path) -> Path:
    """``cache_dir``, else ``$PROMPTFENCE_MODEL_CACHE`` (one export shared by the inspectors of a
    host, or by a test run), else ``<data_dir>/models``."""
    if config.cache_dir is not None:
        return config.cache_dir
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else data_dir / "models"


def build_base_embedder(config: EmbedderConfig, data_dir: Path) -> Embedder:
    """The configured runtime alone (no sharing, no batching): what ``bench`` and ``eval`` compare."""
    from inference.embedder import default_minilm_path

    spec = EmbedderSpec(config.path or default_minilm_path(), device=config.device, batch_size=config.batch_size)
    backend = config.backend
    if backend == "auto":  # ONNX Runtime on the CPU; a GPU (or "auto" device) keeps torch
        backend = "onnx" if config.device == "cpu" else "torch"
    if backend == "torch":
        return SentenceTransformerEmbedder(spec)
    if backend == "onnx":
        from inference.onnx_embedder import OnnxEmbedder, OnnxSpec

        return OnnxEmbedder(spec, OnnxSpec(model_cache_dir(config, data_dir), config.onnx_variant, config.threads))
    raise ModelUnavailableError(
        f"unknown inspector.embedder.backend {config.backend!r} (expected {', '.join(BACKENDS)})"
    )


def build_embedder(config: EmbedderConfig, data_dir: Path) -> SharedEmbedder:
    """The inspector's encoder: the configured runtime behind the shared, batching front."""
    return SharedEmbedder(
        build_base_embedder(config, data_dir),
        max_batch=config.batch_max,
        max_wait_s=config.batch_wait_ms / 1000.0,
        cache_entries=config.cache_entries,
    )
