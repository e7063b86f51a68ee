"""``promptfence replay FILE...``: captured traffic through mapping, extraction, answer
reconstruction, inspection and policy, offline.

Reads mitmproxy flow files (``promptfence capture``, ``mitmdump -w``) and HAR exports from a
browser's developer tools. Inspection runs in this process with the same detectors the
inspector builds (:func:`promptfence.cli.inspector_cmd.build_engine`); the policy is the
configured one, and ``--policy OTHER.yaml`` shows what a changed policy would decide
differently. Output is a table per flow or JSON lines; it never contains prompt or answer
text, only their sizes and digests, topics and decisions.

Reading flows needs mitmproxy (the proxy's environment), the detectors need the inspector's: run
where only one is installed, replay hands the prompts to the other environment's Python
(:mod:`promptfence.runtimes`) over a pipe, one JSON line per prompt each way.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.core import Decision, DetectorStatus, Inspection
from promptfence.errors import PromptFenceError

if TYPE_CHECKING:
    from proxy.replay import ReplayedFlow


@dataclass(frozen=True)
class Row:
    source: str
    flow: ReplayedFlow
    inspection: Inspection
    decision: Decision
    other: Decision | None

    @property
    def changed(self) -> bool:
        return self.other is not None and self.other.action is not self.decision.action


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="mitmproxy .mitm flow file or HAR export")
    parser.add_argument(
        "--policy",
        action="append",
        metavar="OTHER.yaml",
        help="also decide with this policy file (repeatable) and mark the flows it decides differently",
    )
    parser.add_argument("--json", action="store_true", help="one JSON object per flow")
    add_config_option(parser)


def _topics(inspection: Inspection) -> str:
    return ",".join(f"{t.value}:{c.name.lower()}" for t, c in sorted(inspection.detected().items())) or "-"


def _decision(decision: Decision | None) -> str:
    if decision is None:
        return "-"
    return f"{decision.action.value}" + (f" ({','.join(decision.rule_ids)})" if decision.rule_ids else "")


def _answer(flow: ReplayedFlow) -> str:
    answer = flow.answer
    if answer is None:
        return "-"
    if answer.text is None:
        return "not decoded"
    return f"{len(answer.text)} chars" + ("" if answer.error is None else " (partial)")


def _json(row: Row) -> dict[str, Any]:
    op = row.flow.operation
    answer = row.flow.answer
    out: dict[str, Any] = {
        "file": row.source,
        "flow": row.flow.index,
        "app": op.app,
        "operation_id": op.operation_id,
        "operation": op.kind.value,
        "user": op.identity.user,
        "host": op.host,
        "conversation_id": op.conversation_id,
        "model": op.model,
        "status_code": row.flow.status_code,
        "prompt_chars": len(op.prompt),
        "attachments": len(op.attachments),
        "extract_error": row.flow.extract_error,
        "topics": row.inspection.to_dict()["topics"],
        "detectors_failed": list(row.inspection.failed_detectors),
        "decision": {"action": row.decision.action.value, "rule_ids": list(row.decision.rule_ids)},
        "answer_chars": None if answer is None or answer.text is None else len(answer.text),
        "response_decode_error": None if answer is None else answer.error,
    }
    if row.other is not None:
        out["other_decision"] = {"action": row.other.action.value, "rule_ids": list(row.other.rule_ids)}
        out["changed"] = row.changed
    return out


def _table(rows: list[Row], with_other: bool) -> None:
    header = ["FILE", "FLOW", "APP", "OPERATION", "USER", "TOPICS", "DECISION", "ANSWER"]
    if with_other:
        header += ["OTHER POLICY", "CHANGED"]
    table = [header]
    for row in rows:
        op = row.flow.operation
        cells = [
            Path(row.source).name,
            str(row.flow.index),
            op.app,
            op.operation_id,
            op.identity.user,
            _topics(row.inspection)
            + (
                " (failed: " + ",".join(row.inspection.failed_detectors) + ")"
                if row.inspection.failed_detectors
                else ""
            ),
            _decision(row.decision),
            _answer(row.flow),
        ]
        if with_other:
            cells += [_decision(row.other), "yes" if row.changed else ""]
        table.append(cells)
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    for cells in table:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(cells)).rstrip())


async def _inspect_all(config: Config, flows: list[ReplayedFlow]) -> list[Inspection]:
    needs_engine = any(f.extract_error is None and f.operation.has_prompt for f in flows)
    prompts = [f.operation.prompt for f in flows if f.extract_error is None and f.operation.has_prompt]
    inspected: list[Inspection] = []
    if needs_engine:
        inspected = await _inspect_prompts(config, prompts)
    found = iter(inspected)
    out: list[Inspection] = []
    for flow in flows:
        if flow.extract_error is not None:
            out.append(Inspection.failure("extractor", DetectorStatus.INVALID_OUTPUT, flow.extract_error))
        elif flow.operation.has_prompt:
            out.append(next(found))
        else:
            out.append(Inspection(findings=(), topics={}, runs=()))
    return out


async def _inspect_prompts(config: Config, prompts: list[str]) -> list[Inspection]:
    """Each prompt inspected by the inspector's detectors: here, or in the inspector's environment."""
    from promptfence.runtimes import INSPECTOR, interpreter

    python = interpreter(INSPECTOR)
    if python != sys.executable:
        return _inspect_in(python, config, prompts)
    from promptfence.cli.inspector_cmd import build_engine
    from promptfence.cli.progress import Progress, stage

    with stage("loading detectors"):
        engine = build_engine(config)
    try:
        results = []
        with Progress("inspecting prompts", len(prompts)) as progress:
            for prompt in prompts:
                results.append(await engine.inspect(prompt))
                progress.advance()
        return results
    finally:
        engine.close()


def _inspect_in(python: str, config: Config, prompts: list[str]) -> list[Inspection]:
    argv = [python, "-m", "promptfence.cli.replay_cmd"]
    if config.source:
        argv += ["--config", str(Path(config.source).resolve())]
    from promptfence.cli.progress import Progress

    lines = "".join(json.dumps({"prompt": p}, ensure_ascii=True) + "\n" for p in prompts)
    with subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as child:
        assert child.stdin is not None and child.stdout is not None and child.stderr is not None
        stdin, stderr_pipe = child.stdin, child.stderr
        errors: list[bytes] = []

        def feed() -> None:  # a writer thread: the child answers while it still reads
            try:
                stdin.write(lines.encode("ascii"))
            except BrokenPipeError:
                pass
            finally:
                stdin.close()

        writer = threading.Thread(target=feed, daemon=True)
        reader = threading.Thread(target=lambda: errors.append(stderr_pipe.read()), daemon=True)
        writer.start()
        reader.start()
        out: list[str] = []
        # The bar starts at 0 while the child loads its detectors, and moves with each answer.
        with Progress("loading detectors, inspecting prompts", len(prompts)) as progress:
            for raw in child.stdout:
                out.append(raw.decode("ascii", "replace"))
                progress.advance()
        returncode = child.wait()
        writer.join()
        reader.join()
    if returncode != 0:
        raise PromptFenceError(
            f"inspection in the inspector's environment ({python}) failed with status {returncode}:"
            f" {b''.join(errors).decode('utf-8', 'replace').strip().splitlines()[-1:]}"
        )
    answers = [Inspection.from_dict(json.loads(line)) for line in out if line.startswith("{")]
    if len(answers) != len(prompts):
        raise PromptFenceError(f"the inspector's environment answered {len(answers)} of {len(prompts)} prompts")
    return answers


async def _serve_pipe(config: Config) -> None:
    """The other end of :func:`_inspect_in`: prompts in on stdin, inspections out on stdout."""
    from promptfence.cli.inspector_cmd import build_engine

    engine = build_engine(config)
    try:
        for line in sys.stdin:
            if line.strip():
                inspection = await engine.inspect(json.loads(line)["prompt"])
                sys.stdout.write(json.dumps(inspection.to_dict(), ensure_ascii=True) + "\n")
    finally:
        engine.close()
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    from policies.policy import load_policies
    from proxy.catalogue import load_catalogue
    from proxy.replay import read_flows, replay_flows

    config = load_config(args.config)
    catalogue = load_catalogue()
    from classifiers.custom_topics import configured_topic_names

    names = configured_topic_names(config.topics.files, config.topics.builtin)
    policy = load_policies(config.policies.files, names)
    other = load_policies([Path(p) for p in args.policy], names) if args.policy else None
    replayed: list[tuple[str, ReplayedFlow]] = []
    skipped = 0
    for name in args.files:
        for item in replay_flows(catalogue, read_flows(Path(name)), max_body=config.proxy.max_body_bytes):
            if item is None:
                skipped += 1
            else:
                replayed.append((name, item))
    inspections = asyncio.run(_inspect_all(config, [f for _, f in replayed]))
    rows = [
        Row(
            source,
            flow,
            inspection,
            policy.decide(flow.operation, inspection),
            None if other is None else other.decide(flow.operation, inspection),
        )
        for (source, flow), inspection in zip(replayed, inspections, strict=True)
    ]
    if args.json:
        for row in rows:
            print(json.dumps(_json(row), sort_keys=True))
    else:
        _table(rows, other is not None)
        changed = sum(r.changed for r in rows)
        summary = f"{len(rows)} inspected operations, {skipped} other flows passed through uninspected"
        if other is not None:
            summary += f"; {changed} decided differently by {', '.join(args.policy)}"
        print(summary, file=sys.stderr)
    return 0


if __name__ == "__main__":  # the inspector-side end of the pipe (see _inspect_in)
    _pipe = argparse.ArgumentParser(prog="promptfence.cli.replay_cmd")
    add_config_option(_pipe)
    asyncio.run(_serve_pipe(load_config(_pipe.parse_args().config)))
