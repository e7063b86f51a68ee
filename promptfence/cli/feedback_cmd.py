"""``promptfence feedback LOG_ID --false-positive PII``: tell PromptFence a detection was wrong (or right).

Reports are stored next to the record (``log_feedback``); the learning loop reads them through
:meth:`logs.store.LogStore.feedback_reports`. ``--list`` prints the reports.

A report also teaches the embedding memory (vectors/) at once: the record's clear metadata names
the memory centroids its redacted prompt was assigned to, and the verdict is counted on them, so
later prompts in a similar context get a lower (false positive) or higher (true positive) score.
Nothing is decrypted for that.
"""

from __future__ import annotations

import argparse
import getpass
import json
import sys
from typing import Any

from promptfence.cli import add_config_option
from promptfence.cli.logs_cmd import NotFound, _topic
from promptfence.config import Config, load_config
from promptfence.core import Topic


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("record_id", metavar="LOG_ID", nargs="?", help="record id (or a unique 6+ character prefix)")
    parser.add_argument(
        "--false-positive", action="append", type=_topic, default=[], metavar="TOPIC", help="this topic was wrong"
    )
    parser.add_argument(
        "--true-positive", action="append", type=_topic, default=[], metavar="TOPIC", help="this topic was right"
    )
    parser.add_argument("--note", default="", help="a short note for whoever reviews the reports")
    parser.add_argument("--by", metavar="NAME", help="reporter (default: the login name)")
    parser.add_argument("--list", action="store_true", help="print stored reports (of LOG_ID, or all)")
    parser.add_argument("--json", action="store_true", help="with --list: JSON lines")
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    from logs.store import LogStore, StoreUnavailable

    config = load_config(args.config)
    store = LogStore(config.database_url, recipients=())
    try:
        record_id = None
        found = None
        if args.record_id:
            found = store.get(args.record_id)
            if found is None:
                raise NotFound(f"no log record with id {args.record_id!r}")
            record_id = found.record_id
        if args.list:
            for report in store.feedback_reports(record_id=record_id):
                if args.json:
                    print(json.dumps(report.to_dict(), sort_keys=True))
                else:
                    print(
                        f"{report.id}  {report.record_id}  {report.topic.value}  {report.verdict}  "
                        f"by {report.reporter} ({report.source})  {report.note}".rstrip()
                    )
            return 0
        if record_id is None:
            print("promptfence: error: give a LOG_ID (or --list)", file=sys.stderr)
            return 2
        verdicts = [(t, "false_positive") for t in args.false_positive] + [
            (t, "true_positive") for t in args.true_positive
        ]
        if not verdicts:
            print("promptfence: error: give --false-positive TOPIC and/or --true-positive TOPIC", file=sys.stderr)
            return 2
        reporter = args.by or getpass.getuser()
        for topic, verdict in verdicts:
            report = store.add_feedback(record_id, topic, verdict, reporter=reporter, source="cli", note=args.note)
            print(f"recorded {verdict.replace('_', ' ')} for {topic.value} on record {record_id} (report {report.id})")
        return _teach_memory(config, found.metadata if found is not None else {}, verdicts)
    except StoreUnavailable as exc:
        print(f"promptfence: error: {exc}", file=sys.stderr)
        return 3
    finally:
        store.close()


def _teach_memory(config: Config, metadata: dict[str, Any], verdicts: list[tuple[Topic, str]]) -> int:
    """Count the verdicts on the memory centroids the record names (the inspector's tenant)."""
    memory = metadata.get("memory") or {}
    centroids = [int(c) for c in memory.get("centroids") or ()]
    if not centroids:
        print("the record names no memory context (memory off, or nothing to learn): kept for review only")
        return 0
    from vectors.store import MemoryUnavailable, VectorStore

    tenant = str(memory.get("tenant") or config.memory.tenant)
    vectors = VectorStore(config.memory_database_url)
    try:
        for topic, verdict in verdicts:
            counted = vectors.report(tenant, centroids, topic, verdict)
            if counted:
                ids = ", ".join(str(c) for c in counted)
                print(f"memory ({tenant}): {verdict.replace('_', ' ')} for {topic.value} counted on centroid {ids}")
            else:
                print(f"memory ({tenant}): the record's centroids have expired; nothing to teach")
    except MemoryUnavailable as exc:
        print(f"promptfence: error: {exc}", file=sys.stderr)
        return 3
    finally:
        vectors.close()
    return 0
