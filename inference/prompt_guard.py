"""Prompt Guard 2 (and any sequence classifier of its kind) in-process through transformers.

``meta-llama/Llama-Prompt-Guard-2-86M`` and ``-22M`` are DeBERTa-v3 sequence classifiers with two
labels (``LABEL_0`` benign, ``LABEL_1`` malicious). This adapter loads one from a configured local
directory only (``local_files_only``; a missing directory is a start-up error naming the path,
never a download), splits prompts longer than the model's 512 tokens into overlapping windows,
scores windows in batches on the CPU or a CUDA device, and reports, per prompt, the highest
window's probability of the malicious label(s) as a :attr:`Topic.JAILBREAK` score. That label to
topic mapping happens here and nowhere else.

One instance may be shared by every detector thread: a lock serialises tokenisation (the fast
tokenizer's truncation settings are mutable state) and the forward passes.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from inference.errors import ModelNotFoundError
from inference.ports import TextClassification, TextClassifier
from promptfence.core import Span, Topic
from promptfence.errors import ConfigError

__all__ = [
    "PromptGuardSettings",
    "TextClassification",
    "TextClassifier",
    "TransformersSequenceClassifier",
    "resolve_device",
]

log = logging.getLogger("promptfence.inference")

# Label names that mean "this text is an attack" in the Prompt Guard family (v1 had INJECTION and
# JAILBREAK beside BENIGN; v2 has LABEL_0/LABEL_1 or BENIGN/MALICIOUS).
_MALICIOUS_NAMES = frozenset({"MALICIOUS", "INJECTION", "JAILBREAK", "UNSAFE"})
_BENIGN_NAMES = frozenset({"BENIGN", "SAFE"})
_DTYPES: Mapping[str, torch.dtype] = {
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}


@dataclass(frozen=True)
class PromptGuardSettings:
    """How to run the model; mirrors ``inspector.prompt_guard`` in the config file.

    ``malicious_label`` is the output index whose probability is the jailbreak score; ``None``
    reads it from the model's ``id2label`` (a label named MALICIOUS / INJECTION / JAILBREAK, every
    label but BENIGN, or index 1 of a two-label model).
    """

    path: Path
    device: str = "auto"
    batch_size: int = 16
    max_length: int = 512
    window_overlap: int = 64
    malicious_label: int | None = None
    dtype: str = "auto"
    topic: Topic = Topic.JAILBREAK
    config_field: str = "inspector.prompt_guard"


def resolve_device(device: str, *, config_field: str = "inspector.prompt_guard.device") -> torch.device:
    """``auto`` is CUDA when torch sees one, else the CPU; asking for CUDA without one is an error."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} requested but torch sees no CUDA device", field=config_field)
        return torch.device(name)
    raise ConfigError(f"unknown device {device!r} (expected auto, cpu, cuda or cuda:N)", field=config_field)


def _resolve_dtype(dtype: str, device: torch.device, config_field: str) -> torch.dtype:
    name = dtype.strip().lower()
    if name == "auto":
        return torch.float32
    if name not in _DTYPES:
        choices = ", ".join(["auto", *_DTYPES])
        raise ConfigError(f"unknown dtype {dtype!r} (expected one of: {choices})", field=config_field)
    if device.type == "cpu" and name == "float16":
        raise ConfigError("float16 is not supported on the CPU; use float32 or bfloat16", field=config_field)
    return _DTYPES[name]


def _check_model_dir(path: Path, config_field: str) -> None:
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model directory {path} does not exist; copy the model there (nothing is downloaded)",
            field=config_field,
        )
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(
            f"model directory {path} has no config.json; it must hold a saved transformers model and tokenizer",
            field=config_field,
        )


def malicious_label_indices(
    id2label: Mapping[int, str], configured: int | None, *, config_field: str
) -> tuple[int, ...]:
    """Which output indices add up to the malicious probability (see :class:`PromptGuardSettings`)."""
    n = len(id2label)
    if configured is not None:
        if not 0 <= configured < n:
            raise ConfigError(
                f"malicious_label {configured} is not a label of this {n}-label model", field=config_field
            )
        return (configured,)
    names = {int(i): str(label).strip().upper() for i, label in id2label.items()}
    named = tuple(sorted(i for i, label in names.items() if label in _MALICIOUS_NAMES))
    if named:
        return named
    if any(label in _BENIGN_NAMES for label in names.values()):
        return tuple(sorted(i for i, label in names.items() if label not in _BENIGN_NAMES))
    if n == 2:
        return (1,)
    raise ConfigError(
        f"cannot tell which of the {n} labels means malicious; set malicious_label",
        field=config_field,
    )


class TransformersSequenceClassifier:
    """A :class:`TextClassifier` backed by a local transformers sequence-classification model."""

    def __init__(self, settings: PromptGuardSettings) -> None:
        field_prefix = settings.config_field
        if settings.batch_size < 1:
            raise ConfigError("batch_size must be at least 1", field=f"{field_prefix}.batch_size")
        if settings.max_length < 8:
            raise ConfigError("max_length must be at least 8", field=f"{field_prefix}.max_length")
        if not 0 <= settings.window_overlap <= settings.max_length // 2:
            raise ConfigError(
                "window_overlap must be between 0 and half of max_length", field=f"{field_prefix}.window_overlap"
            )
        path = Path(settings.path).expanduser()
        _check_model_dir(path, f"{field_prefix}.path")
        self.settings = settings
        self.device = resolve_device(settings.device, config_field=f"{field_prefix}.device")
        dtype = _resolve_dtype(settings.dtype, self.device, f"{field_prefix}.dtype")
        try:
            self._tokenizer: Any = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
            model: Any = AutoModelForSequenceClassification.from_pretrained(
                str(path), local_files_only=True, dtype=dtype
            )
        except OSError as exc:  # incomplete directory: missing weights or tokenizer files
            raise ModelNotFoundError(
                f"cannot load a model and tokenizer from {path}: {type(exc).__name__}", field=f"{field_prefix}.path"
            ) from None
        if not getattr(self._tokenizer, "is_fast", False):
            raise ModelNotFoundError(
                f"{path} has no fast tokenizer (tokenizer.json); windowing long prompts needs one",
                field=f"{field_prefix}.path",
            )
        model.eval()
        self._model: Any = model.to(self.device)
        id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
        self.labels = id2label
        self.malicious = malicious_label_indices(
            id2label, settings.malicious_label, config_field=f"{field_prefix}.malicious_label"
        )
        limit = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        self.max_length = min(settings.max_length, limit) if limit > 0 else settings.max_length
        self._model_id = path.name
        self._lock = threading.Lock()
        log.info(
            "loaded %s on %s (%s): labels=%s malicious=%s max_length=%d batch=%d",
            self._model_id,
            self.device,
            str(dtype).removeprefix("torch."),
            ",".join(id2label[i] for i in sorted(id2label)),
            ",".join(str(i) for i in self.malicious),
            self.max_length,
            settings.batch_size,
        )

    @property
    def model_id(self) -> str:
        return self._model_id

    @property
    def topics(self) -> frozenset[Topic]:
        return frozenset({self.settings.topic})

    def classify(self, texts: Sequence[str]) -> list[TextClassification]:
        """Score each text: the maximum over its windows of the malicious probability."""
        if not texts:
            return []
        with self._lock, torch.inference_mode():
            return self._classify_locked(list(texts))

    def _classify_locked(self, texts: list[str]) -> list[TextClassification]:
        encoded = self._tokenizer(
            texts,
            truncation=True,
            max_length=self.max_length,
            stride=self.settings.window_overlap,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            padding=False,
        )
        ids: list[list[int]] = encoded["input_ids"]
        masks: list[list[int]] = encoded["attention_mask"]
        offsets: list[list[tuple[int, int]]] = encoded["offset_mapping"]
        owner: list[int] = encoded["overflow_to_sample_mapping"]
        # Longest windows first so each batch pads little.
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]), reverse=True)
        scores = [0.0] * len(ids)
        size = self.settings.batch_size
        for start in range(0, len(order), size):
            chunk = order[start : start + size]
            batch = self._tokenizer.pad(
                {"input_ids": [ids[i] for i in chunk], "attention_mask": [masks[i] for i in chunk]},
                return_tensors="pt",
            )
            logits = self._model(
                input_ids=batch["input_ids"].to(self.device),
                attention_mask=batch["attention_mask"].to(self.device),
            ).logits
            probs = torch.softmax(logits.float(), dim=-1)[:, list(self.malicious)].sum(dim=-1)
            for i, p in zip(chunk, probs.cpu().tolist(), strict=True):
                scores[i] = min(max(float(p), 0.0), 1.0)
        best: dict[int, int] = {}
        counts: dict[int, int] = {}
        for window, sample in enumerate(owner):
            counts[sample] = counts.get(sample, 0) + 1
            if sample not in best or scores[window] > scores[best[sample]]:
                best[sample] = window
        results: list[TextClassification] = []
        for sample in range(len(texts)):
            window = best[sample]
            n = counts[sample]
            span = _window_span(offsets[window]) if n > 1 else None
            results.append(TextClassification({self.settings.topic: scores[window]}, span=span, windows=n))
        return results


def _window_span(offsets: Sequence[tuple[int, int]]) -> Span | None:
    real = [(s, e) for s, e in offsets if e > s]
    if not real:
        return None
    return Span(real[0][0], real[-1][1])
