"""``promptfence logs list|show``: read the prompt log; decryption happens here, locally."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfence.cli import add_config_option
from promptfence.config import load_config
from promptfence.core import Action
from promptfence.errors import KeyMaterialError

if TYPE_CHECKING:
    from logs.store import LogStore, StoredRecord


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="list records (clear metadata only)")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--app")
    lst.add_argument("--action", choices=[a.value for a in Action])
    lst.add_argument("--user")
    lst.add_argument("--conversation", metavar="ID")
    lst.add_argument("--json", action="store_true", help="one JSON object per line (for a SIEM)")
    add_config_option(lst)
    show = sub.add_parser("show", help="decrypt one record locally with a private key")
    show.add_argument("record_id", metavar="ID")
    show.add_argument("--key", required=True, metavar="FILE", help="private key file")
    show.add_argument("--json", action="store_true")
    add_config_option(show)


def open_store(config_arg: str | None) -> LogStore:
    from logs.store import LogStore

    # Reading needs no recipient keys: only the private key given to ``show``.
    return LogStore(load_config(config_arg).database_url, recipients=())


def _topics(meta: dict[str, Any]) -> str:
    topics = meta.get("topics") or {}
    return ",".join(f"{name}:{value['confidence']}" for name, value in topics.items()) or "-"


def _row(record: StoredRecord) -> list[str]:
    meta = record.metadata
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(meta["timestamp"]))
    return [
        record.record_id[:8],
        when,
        str(meta["user"]),
        str(meta["app"]),
        str(meta["operation"]),
        str(meta["decision"]["action"]),
        _topics(meta),
        str(meta.get("conversation_id") or "-"),
    ]


def _print_table(records: list[StoredRecord]) -> None:
    header = ["ID", "TIME", "USER", "APP", "OPERATION", "ACTION", "TOPICS", "CONVERSATION"]
    rows = [header] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def run(args: argparse.Namespace) -> int:
    store = open_store(args.config)
    try:
        if args.logs_command == "list":
            records = store.list(
                limit=args.limit,
                app=args.app,
                action=Action(args.action) if args.action else None,
                user=args.user,
                conversation_id=args.conversation,
            )
            if args.json:
                for record in records:
                    print(json.dumps(record.metadata, sort_keys=True))
            else:
                _print_table(records)
            return 0
        found = store.get(args.record_id)
        if found is None:
            raise KeyMaterialError(f"no log record with id {args.record_id!r}")
        record = found
        payload = record.open(Path(args.key))
        if args.json:
            print(json.dumps({"metadata": record.metadata, "payload": payload.to_dict()}, ensure_ascii=False))
            return 0
        meta = record.metadata
        print(f"record:       {record.record_id}")
        print(f"time:         {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(meta['timestamp']))}")
        print(f"user:         {meta['user']}  groups: {','.join(meta['groups']) or '-'}")
        print(f"app:          {meta['app']} ({meta['app_type']})  operation: {meta['operation_id']}")
        print(f"conversation: {meta.get('conversation_id') or '-'}")
        print(f"topics:       {_topics(meta)}")
        decision = meta["decision"]
        print(
            f"decision:     {decision['action']}  rules: {','.join(decision['rule_ids']) or '-'}  ({decision['reason']})"
        )
        if meta.get("detectors_failed"):
            print(f"failed:       {','.join(meta['detectors_failed'])}")
        print("--- prompt ---")
        print(payload.prompt)
        if payload.attachments:
            print("--- attachments ---")
            print("\n".join(payload.attachments))
        print("--- response ---")
        print(payload.response if payload.response is not None else "(not captured)")
        return 0
    finally:
        store.close()
