"""``promptfence apps``: the app catalogue, and how well the proxy still reads each app.

``apps status`` prints, per app operation of the catalogue, what the running proxy counted
since it started (seen, extracted, decoded, unknown event shapes, last seen) and whether the
drift alarm is raised (exit status 1 while an alarm is raised, for monitoring). The proxy rewrites ``<data_dir>/drift-state.json`` atomically every few
seconds (see :mod:`proxy.drift`); this command only reads that file, so it needs no connection to
the proxy and works on a stopped one (its last counters). No prompt or answer text is involved.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict

from promptfence.cli import add_config_option
from promptfence.config import load_config


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="apps_command", required=True, metavar="SUBCOMMAND")
    status = sub.add_parser("status", help="per operation: seen, extracted, decoded, unknown shapes, last seen, alarm")
    status.add_argument("--json", action="store_true", help="one JSON object per operation")
    add_config_option(status)


def _ago(when: float | None, now: float) -> str:
    if when is None:
        return "never"
    seconds = max(0, int(now - when))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def run(args: argparse.Namespace) -> int:
    from proxy.catalogue import load_catalogue
    from proxy.drift import OperationDrift, by_operation, read_state

    config = load_config(args.config)
    path = config.drift_state_path
    try:
        snapshot = read_state(path)
    except ValueError as exc:
        print(f"promptfence: error: {path}: {exc}")
        return 2
    counted = by_operation(snapshot)
    rows: list[OperationDrift] = []
    listed: set[str] = set()
    for app in load_catalogue().apps:
        for op in app.operations:
            if op.operation_id not in listed:
                listed.add(op.operation_id)
                rows.append(counted.get(op.operation_id) or OperationDrift(app=app.app, operation=op.operation_id))
    rows.extend(op for name, op in counted.items() if name not in listed)  # e.g. <app>.websocket_answer
    if args.json:
        for row in rows:
            print(json.dumps({**asdict(row), "recent_rate": row.recent_rate}, sort_keys=True))
        return 1 if snapshot is not None and snapshot.alarms else 0
    now = time.time()
    if snapshot is None:
        print(f"no drift state at {path}: the proxy has not run with this data directory yet")
    else:
        s = snapshot.settings
        print(
            f"drift state of {_ago(snapshot.taken_at, now)}; alarm at {s.alarm_rate:.0%} of the last {s.window} "
            f"requests/answers (at least {s.min_observations})"
        )
    header = ("operation", "seen", "extracted", "decoded", "unknown shapes", "last seen", "alarm")
    table = [header]
    for row in rows:
        extracted = f"{row.extracted}" + (f" ({row.extraction_failed} failed)" if row.extraction_failed else "")
        if row.unmapped_text:
            extracted = f"{row.unmapped_text} unmapped with text"
        decoded = f"{row.decoded}" + (f" ({row.decode_errors} errors)" if row.decode_errors else "")
        alarm = f"ALARM ({row.recent_problems}/{row.recent_observations})" if row.alarm else "-"
        table.append(
            (row.operation, str(row.seen), extracted, decoded, str(row.unknown_shapes), _ago(row.last_seen, now), alarm)
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 1 if snapshot is not None and snapshot.alarms else 0
