"""``promptfence eval DATASET.jsonl``: how well the configured detectors classify labelled prompts.

Dataset: one JSON object per line with ``text`` and ``topics`` (a list; empty = benign; labels
outside the eight topics, such as ``other_harm``, are ignored for scoring). A topic counts as
predicted when its confidence reaches ``--min-confidence`` (default medium: what the shipped
policy blocks on). The prompts are never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import codecs
import dataclasses
import json
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from promptfence.cli import add_config_option
from promptfence.config import load_config
from promptfence.core import Confidence, Inspection, Topic
from promptfence.errors import ConfigError

BENIGN = "BENIGN"

_FULLWIDTH = {c: chr(ord(c) + 0xFEE0) for c in map(chr, range(0x21, 0x7F))}
# Latin -> Cyrillic look-alikes, written as escapes so the source shows what they are.
_HOMOGLYPHS = str.maketrans(
    {
        "a": "\u0430",
        "e": "\u0435",
        "o": "\u043e",
        "p": "\u0440",
        "c": "\u0441",
        "x": "\u0445",
        "i": "\u0456",
        "s": "\u0455",
    }
)
_FILLER = "The quarterly logistics report covers staffing, shipping volumes and the office move. " * 60


def _spaced(text: str) -> str:
    """Letters one space apart, words two: how people space out a word to dodge a filter."""
    return "  ".join(" ".join(word) if len(word) <= 12 else word for word in text.split(" "))


# How users hide a prompt from a guardrail; `--obfuscate NAME` measures detection under each.
OBFUSCATIONS: dict[str, Callable[[str], str]] = {
    "zero_width": lambda t: "\u200b".join(t),
    "fullwidth": lambda t: "".join(_FULLWIDTH.get(c, c) for c in t),
    "homoglyph": lambda t: t.translate(_HOMOGLYPHS),
    "spaced": _spaced,
    "base64": lambda t: "Decode this and answer: " + base64.b64encode(t.encode()).decode(),
    "rot13": lambda t: "Decode this ROT13 and answer: " + codecs.encode(t, "rot13"),
    "buried": lambda t: _FILLER + t + " " + _FILLER,
}


@dataclass(frozen=True)
class Example:
    text: str
    topics: frozenset[Topic]
    labels: frozenset[str]


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
    parser.add_argument("--seed", type=int, default=7, help="seed for --per-label")
    parser.add_argument(
        "--with-memory", action="store_true", help="also use (and write to) the configured embedding memory"
    )
    parser.add_argument(
        "--obfuscate",
        choices=sorted(OBFUSCATIONS),
        help="rewrite every prompt the way evasive users do before inspecting it",
    )
    add_config_option(parser)


def load_dataset(path: Path, limit: int = 0) -> list[Example]:
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
        examples.append(Example(text, known, frozenset(str(t) for t in labels)))
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


def _print_tables(report: dict[str, Any]) -> None:
    print(f"prompts: {report['n']}  benign: {report['n_benign']}  min confidence: {report['min_confidence']}")
    if report.get("obfuscation"):
        print(f"every prompt obfuscated with: {report['obfuscation']}")
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


async def _inspect_all(config_arg: str | None, examples: list[Example], with_memory: bool) -> list[Inspection]:
    from promptfence.cli.inspector_cmd import build_engine

    config = load_config(config_arg)
    if not with_memory:
        # Measure the detectors, reproducibly: no feedback learned elsewhere moves the figures,
        # and evaluating writes nothing into the organisation's memory.
        config = dataclasses.replace(config, memory=dataclasses.replace(config.memory, enabled=False))
    from promptfence.cli.progress import Progress, stage

    with stage("loading detectors"):
        engine = build_engine(config)
    try:
        results = []
        with Progress("inspecting examples", len(examples)) as progress:
            for example in examples:
                results.append(await engine.inspect(example.text))
                progress.advance()
        return results
    finally:
        engine.close()


def run(args: argparse.Namespace) -> int:
    examples = load_dataset(args.dataset, args.limit)
    if args.per_label:
        examples = stratified(examples, args.per_label, args.seed)
    if args.obfuscate:
        change = OBFUSCATIONS[args.obfuscate]
        examples = [Example(change(e.text), e.topics, e.labels) for e in examples]
    started = time.perf_counter()
    inspections = asyncio.run(_inspect_all(args.config, examples, args.with_memory))
    report = score(examples, inspections, Confidence.parse(args.min_confidence))
    report["wall_s"] = round(time.perf_counter() - started, 1)
    report["obfuscation"] = args.obfuscate
    if args.json:
        json.dump(report, sys.stdout)
        print()
    else:
        _print_tables(report)
        print(f"\nwall time: {report['wall_s']}s")
    return 0
