"""``promptfence eval DATASET.jsonl``: how well the configured detectors classify labelled prompts.

Dataset: one JSON object per line with ``text`` and ``topics`` (a list; empty = benign; labels
outside the eight topics, such as ``other_harm``, are ignored for scoring), optionally ``id``
and ``source``, ``lang`` (the prompt's language, ISO 639-1) and ``split`` (``--split test``
evaluates only the rows of that split). A topic counts as predicted when its confidence reaches ``--min-confidence``
(default medium: what the shipped policy blocks on). The prompts are never printed.

Figures that cannot flatter (issue 14):

- ``--loso``: leave-one-source-out. The intent head is retrained once per source, without it,
  and each prompt is scored by the head that never saw its source (:mod:`eval_loso`).
- a per-source table (``--per-source``; always in ``--json``): recall per topic and the benign
  false-positive rate of each source, so one easy source cannot hide a hard one.
- ``--obfuscate``: every prompt rewritten by each transform under several wrapper phrasings
  (:mod:`eval_transforms`), reported as the share of the plain prompt's detections kept, per
  transform and wrapper family, and the false-positive rate of the rewritten harmless prompts.
- ``--buried``: every prompt inside a long harmless document, at several positions and lengths.
- ``--by language`` (issue 15): recall per topic and the benign false-positive rate of each
  language (the ``lang`` field, else the language the Inspection names), and how often the
  Inspection named the labelled language.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import random
import re
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptfence.cli import add_config_option
from promptfence.cli.eval_transforms import (
    POSITIONS,
    TRANSFORMS,
    WRAPPER_FAMILIES,
    assign_families,
    bury,
    corpus_filler,
    generated_filler,
    obfuscate,
    variant_rng,
)
from promptfence.config import load_config
from promptfence.core import Confidence, Inspection, Topic
from promptfence.errors import ConfigError

BENIGN = "BENIGN"
DEFAULT_LENGTHS = (2000, 8000, 32000)


@dataclass(frozen=True)
class Example:
    text: str
    topics: frozenset[Topic]
    labels: frozenset[str]
    source: str = ""
    id: str = ""
    # The prompt's language as the dataset labels it (ISO 639-1, e.g. "de"); "" when unlabelled.
    lang: str = ""


def _names(value: str, known: Sequence[str], what: str) -> list[str]:
    names = list(known) if value == "all" else [n.strip() for n in value.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown {what} {', '.join(unknown) or value!r}; choose from: all, {', '.join(known)}"
        )
    return names


def _transforms(value: str) -> list[str]:
    return _names(value, list(TRANSFORMS), "transform")


def _positions(value: str) -> list[str]:
    return _names(value, list(POSITIONS), "position")


def _lengths(value: str) -> list[int]:
    try:
        lengths = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError("lengths are comma-separated character counts") from None
    if not lengths or any(n < 0 or n > 1_000_000 for n in lengths):
        raise argparse.ArgumentTypeError("lengths are between 0 and 1000000 characters")
    return lengths


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dataset", type=Path, help="JSON lines with text and topics")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    parser.add_argument(
        "--min-confidence",
        default="medium",
        choices=["low", "medium", "high"],
        help="confidence that counts as a prediction",
    )
    parser.add_argument("--limit", type=int, default=0, help="evaluate only the first N prompts")
    parser.add_argument(
        "--per-label",
        type=int,
        default=0,
        help="a stratified sample: at most N prompts per label set (seeded, reproducible)",
    )
    parser.add_argument("--seed", type=int, default=7, help="seed for --per-label, wrappers and fillers")
    parser.add_argument(
        "--with-memory", action="store_true", help="also use (and write to) the configured embedding memory"
    )
    parser.add_argument(
        "--obfuscate",
        nargs="?",
        const=list(TRANSFORMS),
        type=_transforms,
        metavar="NAMES",
        help=f"also inspect every prompt rewritten by these transforms (comma-separated; default all: {', '.join(TRANSFORMS)})",
    )
    parser.add_argument(
        "--wrappers",
        choices=["rotate", "all"],
        default="rotate",
        help="rotate: one wrapper family per prompt and transform, each family equally often; "
        "all: every family for every prompt (7x the work)",
    )
    parser.add_argument(
        "--buried", action="store_true", help="also inspect every prompt buried in a long harmless document"
    )
    parser.add_argument(
        "--buried-positions", type=_positions, default=list(POSITIONS), metavar="LIST", help="start,middle,end"
    )
    parser.add_argument(
        "--buried-lengths",
        type=_lengths,
        default=list(DEFAULT_LENGTHS),
        metavar="LIST",
        help="characters of filler around the prompt (default 2000,8000,32000)",
    )
    parser.add_argument(
        "--filler",
        choices=["generated", "benign"],
        default="generated",
        help="the harmless document: generated office prose, or the dataset's own benign prompts",
    )
    parser.add_argument("--per-source", action="store_true", help="print recall and benign FPR per source")
    parser.add_argument(
        "--by",
        choices=["language"],
        help="language: recall per topic and benign FPR per language (the dataset's lang field, "
        "else the language the inspection names)",
    )
    parser.add_argument("--split", default="", metavar="NAME", help="evaluate only rows whose split field is NAME")
    parser.add_argument(
        "--source-key",
        choices=["dataset", "exact"],
        default="dataset",
        help="dataset: files of one directory are one source (rules/*.yml); exact: the source field as is",
    )
    parser.add_argument(
        "--loso",
        action="store_true",
        help="leave-one-source-out: score each prompt with an intent head trained without its source",
    )
    parser.add_argument(
        "--loso-cache", type=Path, metavar="FILE", help="reuse the training embeddings from this .npz (never shipped)"
    )
    add_config_option(parser)


_LANG = re.compile(r"^[a-z]{2,3}(?:-[A-Za-z0-9]{2,8})?$")


def load_dataset(path: Path, limit: int = 0, split: str = "") -> list[Example]:
    """The rows of a dataset; with ``split``, only those whose ``split`` field is that."""
    examples: list[Example] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"cannot read dataset: {exc.strerror}", source=str(path)) from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            text, labels = row["text"], row.get("topics", [])
            if not isinstance(text, str) or not isinstance(labels, list):
                raise TypeError
        except (json.JSONDecodeError, KeyError, TypeError):
            raise ConfigError(
                "expected a JSON object with 'text' (string) and 'topics' (list)", source=str(path), line=number
            ) from None
        known = frozenset(Topic(t) for t in labels if t in Topic.__members__)
        source, ident = row.get("source", ""), row.get("id", "")
        language = row.get("lang", "")
        if not isinstance(language, str) or (language and not _LANG.match(language)):
            raise ConfigError("'lang' is an ISO 639 language code such as de", source=str(path), line=number)
        if split and row.get("split") != split:
            continue
        examples.append(
            Example(
                text,
                known,
                frozenset(str(t) for t in labels),
                source if isinstance(source, str) else "",
                str(ident) if isinstance(ident, str | int) and ident != "" else f"line-{number}",
                language,
            )
        )
        if limit and len(examples) >= limit:
            break
    return examples


def stratified(examples: list[Example], per_label: int, seed: int) -> list[Example]:
    """At most ``per_label`` examples of each label set, chosen with a fixed seed."""
    groups: dict[frozenset[str], list[Example]] = defaultdict(list)
    for example in examples:
        groups[example.labels].append(example)
    rng = random.Random(seed)
    picked: list[Example] = []
    for key in sorted(groups, key=sorted):
        members = groups[key]
        picked.extend(rng.sample(members, min(per_label, len(members))))
    return picked


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def score(examples: list[Example], inspections: list[Inspection], minimum: Confidence) -> dict[str, Any]:
    counts = {t: {"tp": 0, "fp": 0, "fn": 0} for t in Topic}
    confusion: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    benign = benign_flagged = 0
    latencies: dict[str, list[float]] = defaultdict(list)
    failures: dict[str, int] = defaultdict(int)
    for example, inspection in zip(examples, inspections, strict=True):
        predicted = set(inspection.detected(minimum))
        for topic in Topic:
            if topic in predicted and topic in example.topics:
                counts[topic]["tp"] += 1
            elif topic in predicted:
                counts[topic]["fp"] += 1
            elif topic in example.topics:
                counts[topic]["fn"] += 1
        rows = [t.value for t in example.topics] or ([BENIGN] if not example.labels else ["OTHER"])
        for row in rows:
            for column in [t.value for t in predicted] or ["NONE"]:
                confusion[row][column] += 1
        if not example.labels:
            benign += 1
            benign_flagged += bool(predicted)
        for run in inspection.runs:
            latencies[run.detector].append(run.elapsed_ms)
            if run.failed:
                failures[run.detector] += 1
        latencies["total"].append(inspection.elapsed_ms)
    topics: dict[str, dict[str, float | int]] = {}
    for topic, c in counts.items():
        support = c["tp"] + c["fn"]
        if support == 0 and c["fp"] == 0:
            continue
        precision = c["tp"] / (c["tp"] + c["fp"]) if c["tp"] + c["fp"] else 0.0
        recall = c["tp"] / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        topics[topic.value] = {
            "precision": round(precision, 4),
            "recall": round(recall, 4),
            "f1": round(f1, 4),
            "support": support,
            "false_positives": c["fp"],
        }
    return {
        "topics": topics,
        "benign_fpr": round(benign_flagged / benign, 4) if benign else 0.0,
        "n": len(examples),
        "n_benign": benign,
        "min_confidence": minimum.name.lower(),
        "latency_ms": {
            name: {q: round(_percentile(v, p), 2) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))}
            for name, v in sorted(latencies.items())
        },
        "detector_failures": dict(failures),
        "confusion": {row: dict(cols) for row, cols in sorted(confusion.items())},
    }


# --- sources ------------------------------------------------------------------------------


def source_keys(sources: Sequence[str], mode: str = "dataset") -> dict[str, str]:
    """Each ``source`` field mapped to the source it counts as.

    ``dataset``: the files of one directory that holds two or more of them are one source
    (``noseyparker:.../rules/*.yml``, ``donotanswer/*.jsonl``): they are slices of one dataset,
    and holding out one slice while training on its siblings would not be an unseen source.
    ``exact``: the field as it is."""
    keys = {s: s or "(no source)" for s in sources}
    if mode == "exact":
        return keys
    by_dir: dict[str, set[str]] = defaultdict(set)
    for source in sources:
        folder, name = _folder(source)
        if folder:
            by_dir[folder].add(name)
    for source in sources:
        folder, name = _folder(source)
        if folder and len(by_dir[folder]) >= 2:
            extension = name.rsplit(".", 1)[1] if "." in name else ""
            keys[source] = f"{folder}/*" + (f".{extension}" if extension else "")
    return keys


def _folder(source: str) -> tuple[str, str]:
    """``repo:dir/file`` as (``repo:dir``, ``file``); no folder for a file at a repo's root."""
    repo, colon, path = source.rpartition(":") if ":" in source else ("", "", source)
    folder, _, name = path.rpartition("/")
    return (f"{repo}{colon}{folder}" if folder else ""), name


def short_source(key: str) -> str:
    """``owner/repo:some/dir/file.json`` as ``repo:file.json`` (``repo:dir/*.yml`` for a glob)."""
    repo, _, path = key.partition(":")
    parts = path.split("/")
    name = "/".join(parts[-2:]) if parts[-1].startswith("*") else parts[-1]
    return f"{repo.rsplit('/', 1)[-1]}:{name}" if path else key


def per_source(
    examples: Sequence[Example], inspections: Sequence[Inspection], keys: dict[str, str], minimum: Confidence
) -> dict[str, dict[str, Any]]:
    """Per source: prompts, recall per labelled topic, the benign false-positive rate."""
    return per_group(examples, inspections, [keys.get(e.source, e.source) for e in examples], minimum)


def per_group(
    examples: Sequence[Example], inspections: Sequence[Inspection], group_of: Sequence[str], minimum: Confidence
) -> dict[str, dict[str, Any]]:
    """Per group (a source, a language): prompts, recall per labelled topic, benign FPR."""
    table: dict[str, dict[str, Any]] = {}
    groups: dict[str, list[int]] = defaultdict(list)
    for i, key in enumerate(group_of):
        groups[key].append(i)
    for key in sorted(groups):
        found: Counter[str] = Counter()
        support: Counter[str] = Counter()
        extra: Counter[str] = Counter()
        benign = flagged = 0
        for i in groups[key]:
            predicted = set(inspections[i].detected(minimum))
            for topic in examples[i].topics:
                support[topic.value] += 1
                found[topic.value] += topic in predicted
            for topic in predicted - examples[i].topics:
                extra[topic.value] += 1
            if not examples[i].labels:
                benign += 1
                flagged += bool(predicted)
        harmful = sum(support.values())
        table[key] = {
            "n": len(groups[key]),
            "recall": {t: {"recall": round(found[t] / n, 4), "support": n} for t, n in sorted(support.items())},
            "recall_all": round(sum(found.values()) / harmful, 4) if harmful else None,
            "n_benign": benign,
            "benign_fpr": round(flagged / benign, 4) if benign else None,
            "other_topics_predicted": dict(sorted(extra.items())),
        }
    return table


def language_groups(examples: Sequence[Example], inspections: Sequence[Inspection]) -> list[str]:
    """Each prompt's language: the dataset's ``lang`` label, else the first language its
    Inspection names (marked ``~``: identified, not labelled)."""
    return [e.lang or f"~{(i.languages or ('und',))[0]}" for e, i in zip(examples, inspections, strict=True)]


def per_language(
    examples: Sequence[Example], inspections: Sequence[Inspection], minimum: Confidence
) -> dict[str, dict[str, Any]]:
    """:func:`per_group` by language, plus how often the Inspection named the labelled language
    and how often it reported an uncovered (language, topic) pair."""
    groups = language_groups(examples, inspections)
    table = per_group(examples, inspections, groups, minimum)
    for key, row in table.items():
        members = [i for i, g in enumerate(groups) if g == key]
        labelled = [i for i in members if examples[i].lang]
        named = sum(examples[i].lang in inspections[i].languages for i in labelled)
        row["language_named"] = round(named / len(labelled), 4) if labelled else None
        row["with_uncovered_pairs"] = round(
            sum(bool(inspections[i].uncovered_languages) for i in members) / len(members), 4
        )
    return table


# --- retention under rewrites ---------------------------------------------------------------


@dataclass
class Tally:
    """Detections of the plain prompts kept after a rewrite, and false alarms on the rewritten
    harmless ones. A detection is a (prompt, labelled topic) pair found in the plain prompt."""

    base: Counter[str] = field(default_factory=Counter)
    kept: Counter[str] = field(default_factory=Counter)
    support: Counter[str] = field(default_factory=Counter)
    found: Counter[str] = field(default_factory=Counter)
    benign: int = 0
    benign_flagged: int = 0

    def add(self, example: Example, before: set[Topic], after: set[Topic]) -> None:
        for topic in example.topics:
            self.support[topic.value] += 1
            self.found[topic.value] += topic in after
            if topic in before:
                self.base[topic.value] += 1
                self.kept[topic.value] += topic in after
        if not example.labels:
            self.benign += 1
            self.benign_flagged += bool(after)

    def summary(self) -> dict[str, Any]:
        base, kept = sum(self.base.values()), sum(self.kept.values())
        return {
            "retention": round(kept / base, 4) if base else None,
            "detections": base,
            "kept": kept,
            "benign_fpr": round(self.benign_flagged / self.benign, 4) if self.benign else None,
            "n_benign": self.benign,
            "by_topic": {
                t: {
                    "retention": round(self.kept[t] / self.base[t], 4) if self.base[t] else None,
                    "recall": round(self.found[t] / n, 4),
                    "support": n,
                }
                for t, n in sorted(self.support.items())
            },
        }


def _fmt(value: float | None, percent: bool = False) -> str:
    if value is None:
        return "-"
    return f"{value:.1%}" if percent else f"{value:.2f}"


def _print_tables(report: dict[str, Any]) -> None:
    print(f"prompts: {report['n']}  benign: {report['n_benign']}  min confidence: {report['min_confidence']}")
    if report.get("loso"):
        loso = report["loso"]
        print(
            f"leave-one-source-out: {len(loso['held_out'])} sources held out in turn, the intent head retrained "
            f"without each ({loso['training_rows']} dataset rows + {loso['exemplar_rows']} exemplars in all)"
        )
    print(f"benign false-positive rate: {report['benign_fpr']:.2%}\n")
    print(f"{'TOPIC':16} {'PREC':>6} {'REC':>6} {'F1':>6} {'SUPPORT':>8} {'FP':>5}")
    for name, m in report["topics"].items():
        print(
            f"{name:16} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['support']:8d} {m['false_positives']:5d}"
        )
    columns = sorted({c for cols in report["confusion"].values() for c in cols})
    print("\nconfusion (rows: labelled, columns: predicted)")
    print(f"{'':16}" + "".join(f"{c[:10]:>11}" for c in columns))
    for row, cols in report["confusion"].items():
        print(f"{row:16}" + "".join(f"{cols.get(c, 0):11d}" for c in columns))
    print("\nlatency per detector (ms)")
    print(f"{'DETECTOR':16} {'P50':>8} {'P90':>8} {'P99':>8}")
    for name, q in report["latency_ms"].items():
        print(f"{name:16} {q['p50']:8.1f} {q['p90']:8.1f} {q['p99']:8.1f}")
    if report["detector_failures"]:
        print(f"\ndetector failures: {report['detector_failures']}")


def _print_per_language(table: dict[str, dict[str, Any]]) -> None:
    topics = sorted({t for row in table.values() for t in row["recall"]})
    print("\nper language: recall per labelled topic (support), benign false-positive rate")
    print("(~xx: no lang field, grouped by the language the inspection named)")
    header = f"{'LANG':6} {'N':>5}" + "".join(f" {t[:14]:>14}" for t in topics)
    print(header + f" {'ALL HARMFUL':>12} {'BENIGN FPR':>14} {'LANG NAMED':>10}")
    for key, row in table.items():
        cells = "".join(
            f" {_fmt(row['recall'][t]['recall']) + ' (' + str(row['recall'][t]['support']) + ')':>14}"
            if t in row["recall"]
            else f" {'':>14}"
            for t in topics
        )
        fpr = "" if row["benign_fpr"] is None else f"{_fmt(row['benign_fpr'], True)} of {row['n_benign']}"
        named = "" if row["language_named"] is None else _fmt(row["language_named"], True)
        print(f"{key[:6]:6} {row['n']:5d}{cells} {_fmt(row['recall_all'], True):>12} {fpr:>14} {named:>10}")


def _print_per_source(table: dict[str, dict[str, Any]]) -> None:
    topics = sorted({t for row in table.values() for t in row["recall"]})
    print("\nper source: recall per labelled topic (support), benign false-positive rate")
    print(f"{'SOURCE':44} {'N':>5}" + "".join(f" {t[:12]:>12}" for t in topics) + f" {'BENIGN FPR':>14}")
    for key, row in table.items():
        cells = "".join(
            f" {_fmt(row['recall'][t]['recall']) + ' (' + str(row['recall'][t]['support']) + ')':>12}"
            if t in row["recall"]
            else f" {'':>12}"
            for t in topics
        )
        fpr = "" if row["benign_fpr"] is None else f"{_fmt(row['benign_fpr'], True)} of {row['n_benign']}"
        print(f"{short_source(key)[:44]:44} {row['n']:5d}{cells} {fpr:>14}")


def _print_obfuscation(section: dict[str, Any]) -> None:
    families = section["families"]
    rows = section["transforms"]
    print(
        f"\nobfuscation (seed {section['seed']}, wrappers: {section['wrappers']}): detections kept vs the plain prompt"
    )
    print(f"{'TRANSFORM':12} {'ALL':>7}" + "".join(f" {f[:10]:>10}" for f in families))
    for name, row in rows.items():
        cells = "".join(f" {_fmt(row['by_wrapper'][f]['retention'], True):>10}" for f in families)
        print(f"{name:12} {_fmt(row['retention'], True):>7}{cells}")
    print("\nbenign false-positive rate of the rewritten harmless prompts")
    print(f"{'TRANSFORM':12} {'ALL':>7}" + "".join(f" {f[:10]:>10}" for f in families))
    for name, row in rows.items():
        cells = "".join(f" {_fmt(row['by_wrapper'][f]['benign_fpr'], True):>10}" for f in families)
        print(f"{name:12} {_fmt(row['benign_fpr'], True):>7}{cells}")
    topics = sorted({t for row in rows.values() for t in row["by_topic"]})
    print("\ndetections kept per topic")
    print(f"{'TRANSFORM':12}" + "".join(f" {t[:14]:>14}" for t in topics))
    for name, row in rows.items():
        print(f"{name:12}" + "".join(f" {_fmt(row['by_topic'].get(t, {}).get('retention')):>14}" for t in topics))


def _print_buried(section: dict[str, Any]) -> None:
    cells = section["cells"]
    topics = sorted({t for cell in cells for t in cell["by_topic"]})
    print(f"\nburied in {section['filler']} filler (seed {section['seed']}): detections kept vs the plain prompt")
    print(
        f"{'POSITION':9} {'LENGTH':>7} {'ALL':>7}" + "".join(f" {t[:14]:>14}" for t in topics) + f" {'BENIGN FPR':>11}"
    )
    for cell in cells:
        per_topic = "".join(f" {_fmt(cell['by_topic'].get(t, {}).get('retention')):>14}" for t in topics)
        print(
            f"{cell['position']:9} {cell['length']:7d} {_fmt(cell['retention'], True):>7}{per_topic}"
            f" {_fmt(cell['benign_fpr'], True):>11}"
        )


# --- running the detectors ------------------------------------------------------------------


class Session:
    """One engine for every pass (plain, rewritten, buried), and for ``--loso`` the intent head
    to use for each source key, swapped in before each of that source's prompts is inspected
    (prompts are inspected one at a time, so no inspection sees another's head)."""

    def __init__(self, engine: Any, heads: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.heads = heads or {}
        self.intent = next((d for d in engine.detectors if d.name == "intent"), None)
        self.shipped_head = getattr(self.intent, "head", None)

    async def inspect_all(self, texts: Sequence[str], keys: Sequence[str]) -> list[Inspection]:
        from promptfence.cli.progress import Progress

        results = []
        try:
            with Progress("inspecting examples", len(texts)) as progress:
                for text, key in zip(texts, keys, strict=True):
                    if self.intent is not None and self.heads:
                        self.intent.head = self.heads.get(key, self.shipped_head)
                    results.append(await self.engine.inspect(text))
                    progress.advance()
        finally:
            if self.intent is not None:
                self.intent.head = self.shipped_head
        return results


def _build_engine(config_arg: str | None, with_memory: bool) -> Any:
    from promptfence.cli.inspector_cmd import build_engine

    config = load_config(config_arg)
    if not with_memory:
        # Measure the detectors, reproducibly: no feedback learned elsewhere moves the figures,
        # and evaluating writes nothing into the organisation's memory.
        config = dataclasses.replace(config, memory=dataclasses.replace(config.memory, enabled=False))
    from promptfence.cli.progress import stage

    with stage("loading detectors"):
        return build_engine(config)


async def _obfuscation(
    session: Session,
    examples: Sequence[Example],
    keys: Sequence[str],
    plain: Sequence[set[Topic]],
    names: Sequence[str],
    wrappers: str,
    seed: int,
    minimum: Confidence,
) -> dict[str, Any]:
    families = list(WRAPPER_FAMILIES)
    section: dict[str, Any] = {
        "seed": seed,
        "wrappers": wrappers,
        "families": families,
        "phrasings": {f: len(p) for f, p in WRAPPER_FAMILIES.items()},
        "transforms": {},
    }
    for name in names:
        if wrappers == "all":
            variants = [(i, f) for i in range(len(examples)) for f in families]
        else:
            variants = list(enumerate(assign_families(len(examples), name, seed, families)))
        texts = [obfuscate(examples[i].text, name, f, variant_rng(seed, name, f, examples[i].id)) for i, f in variants]
        inspections = await session.inspect_all(texts, [keys[i] for i, _ in variants])
        overall, by_family = Tally(), {f: Tally() for f in families}
        for (i, f), inspection in zip(variants, inspections, strict=True):
            after = set(inspection.detected(minimum))
            overall.add(examples[i], plain[i], after)
            by_family[f].add(examples[i], plain[i], after)
        row = overall.summary()
        row["by_wrapper"] = {f: by_family[f].summary() for f in families}
        section["transforms"][name] = row
    return section


async def _buried(
    session: Session,
    examples: Sequence[Example],
    keys: Sequence[str],
    plain: Sequence[set[Topic]],
    positions: Sequence[str],
    lengths: Sequence[int],
    filler: str,
    seed: int,
    minimum: Confidence,
) -> dict[str, Any]:
    harmless = [e for e in examples if not e.labels]

    def document(example: Example, length: int) -> str:
        rng = variant_rng(seed, "filler", example.id, str(length))
        if filler == "generated":
            return generated_filler(length, rng)
        others = [e.text for e in harmless if e.id != example.id]
        if not others:
            raise ConfigError("--filler benign needs benign prompts in the evaluated set")
        return corpus_filler(length, rng, others)

    cells = []
    for position in positions:
        for length in lengths:
            texts = [bury(e.text, position, length, document(e, length))[0] for e in examples]
            inspections = await session.inspect_all(texts, keys)
            tally = Tally()
            for example, before, inspection in zip(examples, plain, inspections, strict=True):
                tally.add(example, before, set(inspection.detected(minimum)))
            cells.append({"position": position, "length": length, **tally.summary()})
    return {"seed": seed, "filler": filler, "cells": cells}


async def evaluate(args: argparse.Namespace, examples: list[Example]) -> dict[str, Any]:
    """Every pass the arguments ask for, on one engine; the report :func:`run` prints."""
    minimum = Confidence.parse(args.min_confidence)
    # Keys from the whole file, not the sample: a slice that the sample happens to hold alone
    # is still part of its dataset (and, under --loso, held out with its siblings).
    everything = {e.source for e in load_dataset(args.dataset)} | {e.source for e in examples}
    sources = source_keys(sorted(everything), args.source_key)
    keys = [sources[e.source] for e in examples]
    engine = _build_engine(args.config, args.with_memory)
    try:
        loso: dict[str, Any] | None = None
        heads: dict[str, Any] | None = None
        if args.loso:
            from promptfence.cli.eval_loso import train_heads

            intent = next((d for d in engine.detectors if d.name == "intent"), None)
            if intent is None:
                raise ConfigError("--loso retrains the intent head, and the intent detector is off")
            held = train_heads(
                args.dataset,
                lambda s: sources.get(s, s),
                set(keys),
                intent.embedder,
                intent.head.topics,
                args.loso_cache,
            )
            heads = held.heads
            loso = {
                "held_out": sorted(set(keys)),
                "removed_training_rows": held.removed_rows,
                "training_rows": held.training_rows,
                "exemplar_rows": held.exemplar_rows,
            }
        session = Session(engine, heads)
        inspections = await session.inspect_all([e.text for e in examples], keys)
        report = score(examples, inspections, minimum)
        report["per_source"] = per_source(examples, inspections, sources, minimum)
        report["per_language"] = per_language(examples, inspections, minimum)
        report["loso"] = loso
        plain = [set(i.detected(minimum)) for i in inspections]
        report["obfuscation"] = (
            await _obfuscation(session, examples, keys, plain, args.obfuscate, args.wrappers, args.seed, minimum)
            if args.obfuscate
            else None
        )
        report["buried"] = (
            await _buried(
                session,
                examples,
                keys,
                plain,
                args.buried_positions,
                args.buried_lengths,
                args.filler,
                args.seed,
                minimum,
            )
            if args.buried
            else None
        )
        return report
    finally:
        engine.close()


def run(args: argparse.Namespace) -> int:
    examples = load_dataset(args.dataset, args.limit, args.split)
    if args.per_label:
        examples = stratified(examples, args.per_label, args.seed)
    started = time.perf_counter()
    report = asyncio.run(evaluate(args, examples))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    if args.json:
        json.dump(report, sys.stdout)
        print()
        return 0
    _print_tables(report)
    if args.per_source or args.loso:
        _print_per_source(report["per_source"])
    if args.by == "language":
        _print_per_language(report["per_language"])
    if report["obfuscation"]:
        _print_obfuscation(report["obfuscation"])
    if report["buried"]:
        _print_buried(report["buried"])
    print(f"\nwall time: {report['wall_s']}s")
    return 0
