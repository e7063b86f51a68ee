"""``promptfence logs list|show|conversation|rescan|purge|replay``: read and maintain the prompt log.

Decryption happens here, locally, with the private key file given to ``--key``; nothing else
ever sees it. ``list`` prints clear metadata only (a table, or JSON lines for a SIEM);
``list --shadow-diff`` counts where the shadow policy set disagreed with the enforced one.
``rescan`` decrypts records in memory, has the inspector (the current detectors) inspect each
prompt again, re-decides with the current or a given policy and reports what would have
changed; it writes no plaintext anywhere (no temp files, nothing printed but metadata), and
with ``--store`` adds the result to each record as a marked ``rescan`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.core import Action, Confidence, OperationKind, Payload, Topic, is_topic_name
from promptfence.errors import KeyMaterialError, PromptFenceError

if TYPE_CHECKING:
    from logs.store import LogFilter, LogStore, StoredRecord

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhdw])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class NotFound(PromptFenceError):
    pass


def parse_time(text: str, *, now: float | None = None) -> float:
    """``7d``/``24h``/``90m`` ago, or an ISO 8601 date or date-time (local time unless it has an offset)."""
    text = text.strip()
    match = _DURATION.match(text)
    if match:
        return (time.time() if now is None else now) - float(match.group(1)) * _UNIT_S[match.group(2)]
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is neither a duration (30m, 24h, 7d) nor an ISO date/time (2026-11-01T09:00)"
        ) from None
    return parsed.timestamp()


def _topic(text: str) -> Topic:
    """A built-in topic (feedback: the memory learns built-in topics only)."""
    try:
        return Topic(text.strip().upper())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"unknown topic {text!r} (expected one of: {', '.join(t.value for t in Topic)})"
        ) from None


def _any_topic(text: str) -> str:
    """A built-in topic or a custom topic's name (a company's topic files), upper-cased."""
    name = text.strip().upper()
    if is_topic_name(name):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown topic {text!r} (expected one of: {', '.join(t.value for t in Topic)},"
        " or a custom topic's name: 2-64 upper-case letters, digits or '_', starting with a letter)"
    )


def _confidence(text: str) -> Confidence:
    try:
        return Confidence.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    lst = sub.add_parser("list", help="list records (clear metadata only), newest first")
    lst.add_argument("--since", type=parse_time, metavar="WHEN", help="from (7d, 24h, 30m ago, or ISO date/time)")
    lst.add_argument("--until", type=parse_time, metavar="WHEN", help="up to (same forms as --since)")
    lst.add_argument("--user")
    lst.add_argument("--group")
    lst.add_argument("--app", help="app name, e.g. chatgpt")
    lst.add_argument("--app-type", help="app type, e.g. genai_chat")
    lst.add_argument("--operation", choices=[k.value for k in OperationKind])
    lst.add_argument("--topic", type=_any_topic, help="records where this topic was detected")
    lst.add_argument("--min-confidence", type=_confidence, default=Confidence.LOW, help="for --topic: low|medium|high")
    lst.add_argument("--action", choices=[a.value for a in Action])
    dlp = lst.add_mutually_exclusive_group()
    dlp.add_argument("--dlp-match", dest="dlp_match", action="store_true", default=None, help="a detector matched")
    dlp.add_argument("--no-dlp-match", dest="dlp_match", action="store_false", help="no detector matched")
    cap = lst.add_mutually_exclusive_group()
    cap.add_argument(
        "--prompt-captured", dest="prompt_captured", action="store_true", default=None, help="a prompt was captured"
    )
    cap.add_argument("--no-prompt-captured", dest="prompt_captured", action="store_false")
    lst.add_argument("--conversation", metavar="ID", help="conversation id")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true", help="one JSON object per line (for a SIEM)")
    lst.add_argument(
        "--shadow-diff",
        action="store_true",
        help="where the shadow policy (policies.shadow) disagreed: counts per change, rule, app and group",
    )
    add_config_option(lst)

    rescan = sub.add_parser("rescan", help="re-inspect and re-decide records with today's detectors and policy")
    rescan.add_argument("--key", required=True, metavar="FILE", help="private key file (decryption stays in memory)")
    rescan.add_argument("--since", type=parse_time, metavar="WHEN", help="records from (default 30d)")
    rescan.add_argument("--until", type=parse_time, metavar="WHEN")
    rescan.add_argument("--user")
    rescan.add_argument("--app")
    rescan.add_argument(
        "--policy", action="append", type=Path, default=[], metavar="FILE", help="decide with these policy files"
    )
    rescan.add_argument("--inspector-url", metavar="URL", help="default: the configured inspector")
    rescan.add_argument("--limit", type=int, default=10000)
    rescan.add_argument("--all", action="store_true", help="list unchanged records too")
    rescan.add_argument(
        "--store", action="store_true", help="add the result to each record as a marked 'rescan' section"
    )
    rescan.add_argument("--json", action="store_true", help="one JSON object per record, then a summary object")
    add_config_option(rescan)

    show = sub.add_parser("show", help="decrypt one record locally with a private key")
    show.add_argument("record_id", metavar="ID", help="record id (or a unique prefix of 6+ characters)")
    show.add_argument("--key", required=True, metavar="FILE", help="private key file")
    show.add_argument("--json", action="store_true")
    add_config_option(show)

    conv = sub.add_parser("conversation", help="decrypt a whole conversation locally, first prompt to last answer")
    conv.add_argument(
        "conversation_id", metavar="ID", help="conversation id, or a record id (or unique prefix) of the conversation"
    )
    conv.add_argument("--key", required=True, metavar="FILE", help="private key file")
    conv.add_argument("--json", action="store_true")
    add_config_option(conv)

    purge = sub.add_parser("purge", help="delete records past the retention period (logs.retention_days)")
    purge.add_argument("--older-than-days", type=float, metavar="DAYS", help="override logs.retention_days")
    add_config_option(purge)

    replay = sub.add_parser("replay", help="store what the proxy spooled while the database was down")
    add_config_option(replay)

    migrate = sub.add_parser("migrate", help="create or upgrade the log database schema (Alembic)")
    add_config_option(migrate)


def open_store(config: Config) -> LogStore:
    from logs.store import LogStore

    # Reading needs no recipient keys: only the private key given to ``show``.
    return LogStore(config.database_url, recipients=())


def build_filter(args: argparse.Namespace) -> LogFilter:
    from logs.store import LogFilter

    return LogFilter(
        since=args.since,
        until=args.until,
        user=args.user,
        group=args.group,
        app=args.app,
        app_type=args.app_type,
        operation=args.operation,
        topic=args.topic,
        min_confidence=args.min_confidence,
        action=Action(args.action) if args.action else None,
        dlp_match=args.dlp_match,
        prompt_captured=args.prompt_captured,
        conversation_id=args.conversation,
    )


def _when(meta: dict[str, Any]) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(meta["timestamp"])))


def _topics(meta: dict[str, Any]) -> str:
    """Detected topics (low and above; a score under low is no detection), or why there are
    none: a record whose inspection failed as a whole says so instead of ``-``."""
    from logs.store import topic_scores

    topics = topic_scores(meta)
    shown = ",".join(f"{name}:{value['confidence']}" for name, value in topics.items() if value["confidence"] != "none")
    if shown:
        return shown
    failure = inspection_failure(meta)
    return f"inspection failed: {failure}" if failure else "-"


# The runs that stand for the whole inspection: when one of them failed, no detector ran.
WHOLE_INSPECTION_RUNS = ("inspector", "extractor")


def inspection_failure(meta: dict[str, Any]) -> str | None:
    """Why the inspection failed as a whole (``unavailable: unreachable: ...``), or None."""
    errors = meta.get("detector_errors") or {}
    for name in WHOLE_INSPECTION_RUNS:
        error = errors.get(name)
        if error:
            return f"{error.get('status', 'failed')}: {error.get('error') or name}"
    return None


def _kind(kind: str) -> str:
    """``pii.US_SSN`` -> ``US_SSN``, ``secret.aws_access_key`` -> ``aws_access_key``."""
    return kind.split(".", 1)[1] if "." in kind else kind


def evidence_lines(meta: dict[str, Any], prompt: str | None = None) -> list[str]:
    """What an analyst needs beside the text: findings (with the matched text when the prompt
    was decrypted here), detectors with latency or failure, rules, the user's message, the
    obfuscations undone, the neighbours that moved a score."""
    lines = []
    for finding in meta.get("findings") or []:
        span = finding.get("span")
        where = "(no location)"
        if span:
            where = f"[{span[0]}:{span[1]}]"
            if prompt is not None:
                where += f" {prompt[span[0] : span[1]]!r}"
        lines.append(
            f"finding:      {_kind(finding['kind'])} {finding['score']:.2f} {finding['topic']} "
            f"by {finding['detector']} {where}"
        )
    errors = meta.get("detector_errors") or {}
    for name, ms in (meta.get("detector_ms") or {}).items():
        error = errors.get(name)
        state = f"FAILED {error.get('status')}: {error.get('error') or '-'}" if error else "ok"
        lines.append(f"detector:     {name} {float(ms):.1f} ms {state}")
    decision = meta.get("decision") or {}
    if decision.get("message"):
        lines.append(f"user saw:     {decision['message']}")
    if decision.get("outcome"):
        lines.append(f"outcome:      {decision['outcome']}")
    undone = [
        o["kind"] if o.get("count", 1) == 1 else f"{o['kind']} x{o['count']}" for o in meta.get("obfuscation") or []
    ]
    if undone or meta.get("transforms"):
        lines.append(f"undone:       {', '.join(undone or meta['transforms'])}")
    for note in meta.get("inspection_notes") or []:
        lines.append(f"note:         {note}")
    for n in meta.get("neighbours") or []:
        lines.append(
            f"neighbour:    centroid {n['id']} similarity {n['similarity']:.2f} moved {n['topic']} "
            f"by {n['delta']:+.2f} ({n['reason']})"
        )
    return lines


def _answer(meta: dict[str, Any]) -> str:
    """A record's answer status; records from before the field existed were written complete."""
    status = meta.get("answer_status")
    if status:
        return str(status)
    return "none" if meta["decision"]["action"] == "block" else "complete"


def _row(record: StoredRecord) -> list[str]:
    meta = record.metadata
    return [
        record.record_id[:8],
        _when(meta),
        str(meta["user"]),
        str(meta["app"]),
        str(meta["operation"]),
        str(meta["decision"]["action"]),
        _answer(meta),
        _topics(meta),
        str(meta.get("conversation_id") or "-"),
    ]


def _print_table(records: list[StoredRecord]) -> None:
    header = ["ID", "TIME", "USER", "APP", "OPERATION", "ACTION", "ANSWER", "TOPICS", "CONVERSATION"]
    rows = [header] + [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())


def _siem_line(record: StoredRecord) -> str:
    return json.dumps({**record.metadata, "key_ids": record.key_ids}, sort_keys=True)


def _print_record(record: StoredRecord, payload: Payload) -> None:
    meta = record.metadata
    decision = meta["decision"]
    print(f"record:       {record.record_id}")
    print(f"time:         {_when(meta)}")
    print(f"user:         {meta['user']}  groups: {','.join(meta['groups']) or '-'}")
    print(f"app:          {meta['app']} ({meta['app_type']})  operation: {meta['operation_id']}")
    print(f"conversation: {meta.get('conversation_id') or '-'}")
    print(f"topics:       {_topics(meta)}")
    print(f"decision:     {decision['action']}  rules: {','.join(decision['rule_ids']) or '-'}  ({decision['reason']})")
    if meta.get("detectors_failed"):
        print(f"failed:       {','.join(meta['detectors_failed'])}")
    print(f"answer:       {_answer(meta)}")
    if meta.get("spooled"):
        print(f"spooled:      {meta['spooled'].get('reason', '-')}")
    for line in evidence_lines(meta, payload.prompt):
        print(line)
    if meta.get("operation") == OperationKind.SHARE.value:
        print(f"--- shared conversation {meta.get('conversation_id') or '(id not in the request)'} ---")
    if meta.get("shadow"):
        shadow = meta["shadow"]
        print(f"shadow:       {shadow.get('action') or 'error'}  rules: {','.join(shadow.get('rules') or []) or '-'}")
    if meta.get("rescan"):
        rescan = meta["rescan"]
        print(
            f"re-scan:      {rescan.get('action')}  rules: {','.join(rescan.get('rules') or []) or '-'}  ({rescan.get('marked')})"
        )
    print("--- prompt ---")
    print(payload.prompt)
    if payload.justification is not None:
        print(f"justification: {payload.justification}")
    if payload.attachments:
        print("--- attachments ---")
        print("\n".join(payload.attachments))
    print("--- response ---")
    print(payload.response if payload.response is not None else _missing_answer(meta))


def _missing_answer(meta: dict[str, Any]) -> str:
    status = _answer(meta)
    if status == "pending":
        return "(pending: recorded when the prompt was sent; the answer was never recorded)"
    if status == "upstream_error":
        return "(the app answered with an error)"
    return "(not captured)"


def _print_conversation(conversation_id: str, opened: list[tuple[StoredRecord, Payload]]) -> None:
    first, last = opened[0][0].metadata, opened[-1][0].metadata
    users = sorted({str(r.metadata["user"]) for r, _ in opened})
    print(f"conversation {conversation_id}: {len(opened)} record(s), {_when(first)} to {_when(last)}")
    print(f"app: {first['app']}  user(s): {', '.join(users)}")
    for number, (record, payload) in enumerate(opened, 1):
        meta = record.metadata
        print()
        print(
            f"[{number}] {_when(meta)}  {meta['user']}  {meta['operation']}  "
            f"action={meta['decision']['action']}  topics={_topics(meta)}  record={record.record_id}"
        )
        if meta["operation"] == OperationKind.SHARE.value:
            print(f"user shared conversation {meta.get('conversation_id') or '(id not in the request)'}")
        if payload.prompt.strip() or meta["operation"] != OperationKind.SHARE.value:
            print("user:")
            print(_indent(payload.prompt))
        for name in payload.attachments:
            print(f"  [attachment] {name}")
        if meta["decision"]["action"] == "block":
            print("promptfence: blocked (the prompt did not reach the app)")
        elif payload.response is not None:
            print("assistant:")
            print(_indent(payload.response))
        else:
            print(f"assistant: {_missing_answer(meta)}")


def find_conversation(store: LogStore, given: str) -> tuple[str, list[StoredRecord]]:
    """A conversation by its id, else the conversation of the record with this id (or unique
    prefix); a record without a conversation is a conversation of one."""
    records = store.conversation(given)
    if records:
        return given, records
    found = store.get(given)
    if found is None:
        raise NotFound(f"no log records for conversation {given!r}, and no record with that id (or prefix)")
    conversation_id = found.metadata.get("conversation_id")
    if not conversation_id:
        return f"(none: record {found.record_id})", [found]
    return str(conversation_id), store.conversation(str(conversation_id))


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in (text.splitlines() or [""]))


def _open_all(records: list[StoredRecord], key: Path) -> list[tuple[StoredRecord, Payload]]:
    return [(record, record.open(key)) for record in records]


def run(args: argparse.Namespace) -> int:
    from logs.store import StoreUnavailable

    config = load_config(args.config)
    if args.logs_command == "replay":
        return _replay(config)
    store = open_store(config)
    try:
        return _run(args, config, store)
    except StoreUnavailable as exc:
        print(f"promptfence: error: {exc} ({_safe_url(config.database_url)})", file=sys.stderr)
        return 3
    finally:
        store.close()


def _run(args: argparse.Namespace, config: Config, store: LogStore) -> int:
    command = args.logs_command
    if command == "list" and args.shadow_diff:
        return _shadow_diff(args, store)
    if command == "rescan":
        import asyncio

        return asyncio.run(_rescan(args, config, store))
    if command == "list":
        records = store.find(build_filter(args), limit=args.limit)
        if args.json:
            for record in records:
                print(_siem_line(record))
        else:
            _print_table(records)
        return 0
    if command == "show":
        found = store.get(args.record_id)
        if found is None:
            raise NotFound(f"no log record with id {args.record_id!r}")
        payload = found.open(Path(args.key))
        if args.json:
            print(json.dumps({"metadata": found.metadata, "payload": payload.to_dict()}, ensure_ascii=False))
        else:
            _print_record(found, payload)
        return 0
    if command == "conversation":
        conversation_id, records = find_conversation(store, args.conversation_id)
        opened = _open_all(records, Path(args.key))
        if args.json:
            for record, payload in opened:
                print(json.dumps({"metadata": record.metadata, "payload": payload.to_dict()}, ensure_ascii=False))
        else:
            _print_conversation(conversation_id, opened)
        return 0
    if command == "purge":
        days = config.logs.retention_days if args.older_than_days is None else args.older_than_days
        if not days:
            print("retention is off (logs.retention_days: 0): nothing deleted")
            return 0
        deleted = store.purge(time.time() - days * 86400.0)
        print(f"deleted {deleted} record(s) older than {days:g} days")
        return 0
    if command == "migrate":
        store.migrate()
        print(f"log database at revision {store.schema_revision()} ({_safe_url(config.database_url)})")
        return 0
    raise KeyMaterialError(f"unknown logs action {command!r}")  # argparse prevents this


def _shadow_diff(args: argparse.Namespace, store: LogStore) -> int:
    from logs.rollout import shadow_diff

    limit = args.limit if args.limit != 50 else 100000  # the diff counts a period, not a page
    records = store.find(build_filter(args), limit=limit)
    diff = shadow_diff((r.record_id, r.metadata) for r in records)
    if args.json:
        print(json.dumps(diff.to_dict(), sort_keys=True))
        return 0
    print(
        f"{diff.records} record(s), {diff.with_shadow} with a shadow decision, "
        f"{diff.disagreements} disagreement(s)" + (f", {diff.errors} shadow error(s)" if diff.errors else "")
    )
    for title, counts in (
        ("change", diff.by_change),
        ("rule", diff.by_rule),
        ("app", diff.by_app),
        ("group", diff.by_group),
    ):
        if counts:
            print(f"by {title}:")
            for name, count in counts.most_common():
                print(f"  {count:>6}  {name}")
    return 0


async def _rescan(args: argparse.Namespace, config: Config, store: LogStore) -> int:
    """Decrypt, re-inspect, re-decide, compare; the prompt lives only in this process's memory
    (and in the request to the inspector, as for the proxy)."""
    from classifiers.client import InspectorClient
    from classifiers.custom_topics import configured_topic_names
    from logs.rollout import RescanResult, before_of, detected
    from logs.store import LogFilter
    from policies.policy import load_policies
    from promptfence.core import Identity, Operation

    key = Path(args.key)
    names = configured_topic_names(config.topics.files, config.topics.builtin)
    policies = load_policies(list(args.policy) or list(config.policies.files), names)
    client = InspectorClient.for_config(config, base_url=args.inspector_url)
    since = args.since if args.since is not None else time.time() - 30 * 86400.0
    records = store.find(LogFilter(since=since, until=args.until, user=args.user, app=args.app), limit=args.limit)
    results: list[RescanResult] = []
    try:
        for record in reversed(records):  # oldest first
            meta = record.metadata
            before_action, before_rules, before_topics = before_of(meta)
            base = RescanResult(
                record_id=record.record_id,
                app=str(meta.get("app", "-")),
                user=str(meta.get("user", "-")),
                before_action=before_action,
                before_rules=before_rules,
                before_topics=before_topics,
                after_action="-",
                after_rules=(),
                after_topics={},
                after_policy="-",
            )
            if not meta.get("prompt_chars"):
                continue  # nothing was captured: nothing to re-inspect
            try:
                payload = record.open(key)
                operation = Operation(
                    app=str(meta["app"]),
                    app_type=str(meta.get("app_type") or "genai_chat"),
                    operation_id=str(meta.get("operation_id") or ""),
                    kind=OperationKind(meta["operation"]),
                    identity=Identity(str(meta["user"]), tuple(str(g) for g in meta.get("groups") or ())),
                    prompt=payload.prompt,
                    conversation_id=meta.get("conversation_id"),
                    attachments=payload.attachments,
                )
                del payload
                inspection = await client.inspect(operation)
                decision = policies.decide(operation, inspection)
            except (KeyMaterialError, PromptFenceError, TimeoutError, ValueError) as exc:
                # The message names a key id, a field or a status, never the prompt.
                error = f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyMaterialError) else type(exc).__name__
                results.append(dataclasses.replace(base, error=error))
                continue
            wire = inspection.to_dict()
            result = dataclasses.replace(
                base,
                after_action=decision.action.value,
                after_rules=decision.rule_ids,
                after_topics={**detected(wire["topics"]), **detected(wire["custom_topics"])},
                after_policy=decision.policy,
            )
            results.append(result)
            if args.store:
                store.annotate(
                    record.record_id,
                    "rescan",
                    {
                        "marked": "re-scan result, not what happened at the time",
                        "at": time.time(),
                        "action": result.after_action,
                        "rules": list(result.after_rules),
                        "policy": result.after_policy,
                        "topics": wire["topics"],
                        "custom_topics": wire["custom_topics"],
                        "detectors_run": list(inspection.detectors_run),
                        "detectors_failed": list(inspection.failed_detectors),
                    },
                )
    finally:
        await client.close()
    _print_rescan(results, args.json, args.all)
    return 0


def _topic_list(topics: dict[str, str]) -> str:
    return ",".join(f"{k}:{v}" for k, v in sorted(topics.items())) or "-"


def _print_rescan(results: list[Any], as_json: bool, show_all: bool) -> None:
    changed = [r for r in results if r.changes]
    summary: dict[str, Any] = {
        "summary": True,
        "rescanned": len(results),
        "changed": len(changed),
        "errors": sum(1 for r in results if r.error),
        "action_changes": {},
    }
    for r in changed:
        if r.error is None and r.before_action != r.after_action:
            pair = f"{r.before_action} -> {r.after_action}"
            summary["action_changes"][pair] = summary["action_changes"].get(pair, 0) + 1
    shown = results if show_all else changed
    if as_json:
        for r in shown:
            print(json.dumps(r.to_dict(), sort_keys=True))
        print(json.dumps(summary, sort_keys=True))
        return
    header = ["ID", "APP", "USER", "BEFORE", "AFTER", "RULES NOW", "TOPICS BEFORE", "TOPICS NOW", "CHANGED"]
    rows = [header]
    for r in shown:
        rows.append(
            [
                r.record_id[:8],
                r.app,
                r.user,
                r.before_action,
                r.after_action if r.error is None else f"error ({r.error})",
                ",".join(r.after_rules) or "-",
                _topic_list(r.before_topics),
                _topic_list(r.after_topics),
                ",".join(r.changes) or "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
    changes = ", ".join(f"{k}: {v}" for k, v in summary["action_changes"].items()) or "none"
    print(
        f"{summary['rescanned']} re-scanned, {summary['changed']} changed, {summary['errors']} error(s); action changes: {changes}"
    )


def _replay(config: Config) -> int:
    from logs.spool import Spool, spool_size
    from logs.store import LogStore, StoreUnavailable

    spool = Spool(config.spool_path)
    waiting = spool_size(config.spool_path)
    store = LogStore(config.database_url, recipients=())
    try:
        replayed, added = spool.drain(store.insert_many)
    except StoreUnavailable as exc:
        print(f"promptfence: error: {exc}; {waiting} record(s) stay spooled in {config.spool_path}", file=sys.stderr)
        return 3
    finally:
        store.close()
    print(
        f"replayed {replayed} spooled record(s) from {config.spool_path}: {added} new or completed,"
        f" {replayed - added} already stored"
    )
    return 0


def _safe_url(url: str) -> str:
    """The database URL without its password."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
