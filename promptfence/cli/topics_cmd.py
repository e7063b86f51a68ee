"""``promptfence topics test|list``: how well a custom topic's examples describe it.

``test FILE...`` embeds each topic's examples and counter-examples with the inspector's
sentence encoder (MiniLM by default, ``inspector.embedder.path`` otherwise) and scores every
one of them with a detector calibrated *without* it (leave-one-out): the precision and recall a
new prompt like the examples can expect at ``--min-confidence`` (default medium, what a
``{TOPIC: medium}`` rule selects). Missed examples and false alarms are named by number, never
quoted. Exit 1 when a topic is under ``--min-precision`` / ``--min-recall`` (for CI).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from promptfence.cli import add_config_option
from promptfence.config import load_config
from promptfence.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="topics_command", required=True, metavar="ACTION")
    test = sub.add_parser("test", help="leave-one-out precision/recall of topic files")
    test.add_argument("files", nargs="*", type=Path, metavar="FILE", help="topic files (default: the configured ones)")
    test.add_argument("--min-confidence", default="medium", choices=["low", "medium", "high"])
    test.add_argument("--min-precision", type=float, default=0.0)
    test.add_argument("--min-recall", type=float, default=0.0)
    test.add_argument("--json", action="store_true", help="one JSON object per topic")
    add_config_option(test)
    listing = sub.add_parser("list", help="the topics the configuration loads, with their files")
    add_config_option(listing)


def run(args: argparse.Namespace) -> int:
    from classifiers.custom_topics import load_topic_file, load_topic_files

    config = load_config(args.config)
    try:
        if args.topics_command == "list":
            for topic in load_topic_files(config.topics.files, builtin=config.topics.builtin):
                kind = "built-in topic" if topic.builtin is not None else "custom topic"
                print(
                    f"{topic.name}\t{kind}\t{len(topic.examples)} examples\t{len(topic.counter_examples)} counter\t{topic.source}"
                )
            return 0
        topics = (
            [load_topic_file(p) for p in args.files]
            if args.files
            else load_topic_files(config.topics.files, builtin=config.topics.builtin)
        )
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    from classifiers.custom_topics import leave_one_out
    from inference.embedder import EmbedderSpec, SentenceTransformerEmbedder, default_minilm_path
    from promptfence.core import Confidence

    spec = config.inspector.embedder
    embedder = SentenceTransformerEmbedder(
        EmbedderSpec(spec.path or default_minilm_path(), device=spec.device, batch_size=spec.batch_size)
    )
    minimum = Confidence.parse(args.min_confidence)
    failed = False
    if not args.json:
        print(
            f"{'TOPIC':<24} {'EXAMPLES':>8} {'COUNTER':>7} {'THRESHOLD':>9} {'PRECISION':>9} {'RECALL':>6}  MISSED / FALSE ALARMS"
        )
    for topic in topics:
        report = leave_one_out(topic, embedder, minimum)
        bad = report.precision < args.min_precision or report.recall < args.min_recall
        failed = failed or bad
        if args.json:
            print(json.dumps({**report.to_dict(), "file": topic.source, "ok": not bad}))
            continue
        missed = ",".join(map(str, report.missed)) or "-"
        alarms = ",".join(map(str, report.false_alarms)) or "-"
        print(
            f"{report.name:<24} {report.examples:>8} {report.counter_examples:>7} {report.threshold:>9.3f} "
            f"{report.precision:>9.2f} {report.recall:>6.2f}  examples {missed} / counter-examples {alarms}"
            + ("  BELOW TARGET" if bad else "")
        )
    return 1 if failed else 0
