"""Leave-one-source-out for ``promptfence eval --loso``: one intent head per held-out source.

The shipped intent head was trained on the permissive rows of the development set, so the
plain ``eval`` figures for JAILBREAK, MALICIOUS_CODE and PII are partly in-sample. Here the head
is retrained once per source of the evaluated dataset, on everything the shipped head trains on
(``scripts/train_intent_head.py``: our exemplars plus the rows its licence filter admits;
JailbreakBench, Tensor Trust, XSTest, ProPILE and garak's generated stubs are refused there)
*except* that source, and each prompt is scored by the head that never saw its source. The
training code is the script's own (loaded from the source checkout), so the estimate follows
whatever the shipped head is trained with; hyper-parameters come from the shipped manifest.

What this does not hold out: the hand-written exemplars (ours, always in), the phrase cues and
the rule-based detectors (Presidio, secrets, code), which were tuned on this file but are not
retrained; their dev-set figures stay optimistic.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from promptfence.errors import ConfigError

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "train_intent_head.py"


def load_trainer(script: Path = SCRIPT) -> ModuleType:
    """The training script as a module (it is a script, not part of the installed package)."""
    if not script.is_file():
        raise ConfigError("--loso retrains the intent head and needs a source checkout", source=str(script))
    spec = importlib.util.spec_from_file_location("promptfence_train_intent_head", script)
    if spec is None or spec.loader is None:
        raise ConfigError("cannot load the training script", source=str(script))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
    spec.loader.exec_module(module)
    return module


@dataclass(frozen=True)
class HeldOut:
    """The heads for each held-out source key, and how many training rows each one left out."""

    heads: dict[str, Any]  # key -> classifiers.intent_detector.LinearHead
    removed_rows: dict[str, int]
    training_rows: int
    exemplar_rows: int


def train_heads(
    dataset: Path,
    key_of: Callable[[str], str],
    held_out: Iterable[str],
    embedder: Any,
    topics: tuple[Any, ...],
    cache: Path | None = None,
) -> HeldOut:
    """One head per key in ``held_out``, trained on the script's training set less every row
    whose source maps (``key_of``) to that key. ``topics`` are the shipped head's, in order."""
    from classifiers.intent_detector import MANIFEST_FILE, LinearHead, calibration_shifts

    trainer = load_trainer()
    data = trainer.load_training(dataset)
    exemplars = str(trainer.EXEMPLARS)
    groups = [g if g == exemplars else key_of(g) for g in data.groups]
    manifest = json.loads(MANIFEST_FILE.read_text())
    c = float(manifest.get("regularisation_C", 4.0))
    shifts = calibration_shifts(manifest, tuple(topics))
    exemplar_weight = float(manifest.get("exemplar_weight", 8.0))
    X = np.asarray(trainer.embed_texts(embedder, data.texts, cache), dtype=np.float32)
    weight = np.asarray(trainer.sample_weights(groups, exemplar_weight))
    group_arr = np.array(groups)
    heads: dict[str, Any] = {}
    removed: dict[str, int] = {}
    cached: dict[int, Any] = {}
    for key in sorted(set(held_out)):
        keep = group_arr != key
        removed[key] = int((~keep).sum())
        if removed[key] == 0 and 0 in cached:
            heads[key] = cached[0]  # nothing of it was trained on: the same head for all such keys
            continue
        rows, biases = [], []
        for topic in topics:
            y = np.array([topic.value in labels for labels in data.labels], dtype=int)[keep]
            if y.min() == y.max():
                # One class left (every positive came from the held-out source): predict never
                # (or always), which is what such a head would know.
                rows.append(np.zeros(X.shape[1], dtype=np.float32))
                biases.append(-20.0 if y.max() == 0 else 20.0)
                continue
            model = trainer.fit_topic(X[keep], y, weight[keep], c)
            rows.append(np.asarray(model.coef_[0], dtype=np.float32))
            biases.append(float(model.intercept_[0]))
        head = LinearHead(
            tuple(topics),
            np.stack(rows).astype(np.float32),
            np.array(biases, dtype=np.float32) + shifts,
            str(manifest.get("embedder", "")),
            f"{manifest.get('version', 'intent-head')}-loso",
        )
        heads[key] = head
        if removed[key] == 0:
            cached[0] = head
    return HeldOut(heads, removed, sum(1 for g in groups if g != exemplars), sum(1 for g in groups if g == exemplars))
