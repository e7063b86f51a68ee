"""``promptfence policy lint|test|explain``: the policy author's toolkit.

- ``lint FILES``: schema and semantic problems (unknown topic, group never defined in the
  directory, unknown app, rule shadowed by an earlier one), one ``file:line:column`` line each;
  exit 1 when there is an error.
- ``test FILES``: run YAML policy unit tests (see :mod:`policies.testing`); exit 1 when a test
  fails, 2 when a file is broken: made for CI pipelines.
- ``explain``: for a prompt (``--prompt-file``, ``-`` = stdin), declared ``--topics``, or a log
  record (``--record ID``), and a user: the inspection, every rule considered with every
  selector's result, and the decision. The prompt itself is never printed.

Prompts come from files or stdin, never from the command line (shell history, ``ps``).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.errors import ConfigError, PromptFenceError

if TYPE_CHECKING:
    from policies.lint import LintContext
    from policies.policy import Explanation, PolicySet, Rule
    from promptfence.core import DetectorRun, Inspection
    from proxy.catalogue import Catalogue
    from proxy.identity import Directory


def configure(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="policy_command", required=True, metavar="ACTION")
    lint = sub.add_parser("lint", help="check policy files (schema and semantics) with file:line:column")
    lint.add_argument("files", nargs="*", type=Path, metavar="FILE", help="default: policies.files of the config")
    lint.add_argument("--directory", type=Path, metavar="FILE", help="groups directory (default: identity.directory)")
    add_config_option(lint)

    test = sub.add_parser("test", help="run YAML policy unit tests (non-zero exit on failure)")
    test.add_argument("files", nargs="+", type=Path, metavar="FILE", help="policy test files (*.test.yaml)")
    test.add_argument(
        "--policy",
        action="append",
        type=Path,
        default=[],
        metavar="FILE",
        help="test these policies instead of the ones each test file names",
    )
    test.add_argument(
        "--directory",
        type=Path,
        metavar="FILE",
        help="groups directory (default: the test file's, else identity.directory)",
    )
    test.add_argument(
        "--inspector-url",
        metavar="URL",
        help="inspect prompts with a running inspector instead of in-process detectors",
    )
    test.add_argument("--verbose", "-v", action="store_true", help="also list passing tests")
    add_config_option(test)

    explain = sub.add_parser("explain", help="show the inspection, every rule considered, and the decision")
    source = explain.add_mutually_exclusive_group(required=True)
    source.add_argument("--prompt-file", metavar="FILE", help="the prompt to inspect ('-' reads stdin)")
    source.add_argument("--record", metavar="ID", help="a log record id: its inspection, re-evaluated")
    source.add_argument("--topics", nargs="+", metavar="TOPIC=LEVEL", help="declared topics, e.g. PII_REQUEST=high")
    explain.add_argument("--user", help="who sends it (default: the record's user, else test-user)")
    explain.add_argument("--groups", help="comma-separated groups (default: from the directory)")
    explain.add_argument("--app", default=None, help="app id (default: the record's, else chatgpt)")
    explain.add_argument("--operation", default=None, help="SendPrompt, Share, UploadFile, Other")
    explain.add_argument(
        "--policy", action="append", type=Path, default=[], metavar="FILE", help="default: policies.files of the config"
    )
    explain.add_argument("--directory", type=Path, metavar="FILE")
    explain.add_argument("--inspector-url", metavar="URL")
    explain.add_argument("--json", action="store_true")
    add_config_option(explain)


# -- shared wiring ---------------------------------------------------------------------------


def _catalogue() -> Catalogue:
    from proxy.catalogue import load_catalogue

    return load_catalogue()


def _directory(path: Path | None) -> Directory | None:
    from proxy.identity import load_directory

    return load_directory(path) if path is not None else None


def _groups_of(directory: Directory | None, default_group: str | None) -> Callable[[str], tuple[str, ...]]:
    def groups_of(user: str) -> tuple[str, ...]:
        groups = directory.groups_for(user) if directory is not None else None
        if groups is None:
            return (default_group,) if default_group else ()
        return groups

    return groups_of


def _app_type_of(catalogue: Catalogue) -> Callable[[str], str | None]:
    types = {app.app: app.app_type for app in catalogue.apps}
    return types.get


def _inspector(config: Config, url: str | None) -> Callable[[str], Inspection]:
    """A synchronous prompt -> Inspection: a running inspector, else the detectors in-process."""
    import asyncio

    if url:
        from classifiers.client import InspectorClient
        from promptfence.core import Identity, Operation, OperationKind

        def remote(prompt: str) -> Inspection:
            async def go() -> Inspection:
                client = InspectorClient.for_config(config, base_url=url)
                try:
                    op = Operation(
                        "cli", "genai_chat", "cli.explain", OperationKind.SEND_PROMPT, Identity("cli"), prompt
                    )
                    return await client.inspect(op)
                finally:
                    await client.close()

            return asyncio.run(go())

        return remote
    from promptfence.cli.inspector_cmd import build_engine
    from promptfence.cli.progress import stage

    with stage("loading detectors"):
        engine = build_engine(config)

    def local(prompt: str) -> Inspection:
        return asyncio.run(engine.inspect(prompt))

    return local


# -- lint ------------------------------------------------------------------------------------


def _unredactable(catalogue: Catalogue) -> Callable[[Rule], list[str]]:
    from proxy.redaction import can_redact

    def check(rule: Rule) -> list[str]:
        out = []
        for app in catalogue.apps:
            if rule.apps is not None and app.app not in rule.apps:
                continue
            if rule.app_types is not None and app.app_type not in rule.app_types:
                continue
            for op in app.operations:
                if not op.inspect or (rule.operations is not None and op.kind not in rule.operations):
                    continue
                if op.extractor is not None and not can_redact(op.extractor):
                    out.append(op.operation_id)
        return out

    return check


def custom_topics(config: Config) -> frozenset[str]:
    """The custom topic names of the configured topic files (policies may select them)."""
    from classifiers.custom_topics import configured_topic_names

    return configured_topic_names(config.topics.files, config.topics.builtin)


def lint_context(
    directory: Directory | None, catalogue: Catalogue, topics: frozenset[str] = frozenset()
) -> LintContext:
    from policies.lint import LintContext

    return LintContext(
        custom_topics=topics,
        groups=None if directory is None else frozenset(g.casefold() for g in directory.groups),
        apps=frozenset(app.app for app in catalogue.apps),
        app_types=frozenset(app.app_type for app in catalogue.apps),
        unredactable=_unredactable(catalogue),
    )


def run_lint(args: argparse.Namespace, config: Config) -> int:
    from policies.lint import lint_files
    from policies.policy import expand_policy_paths

    paths = expand_policy_paths(list(args.files) or list(config.policies.files))
    directory = _directory(args.directory or config.identity.directory)
    problems = lint_files(paths, lint_context(directory, _catalogue(), custom_topics(config)))
    for problem in problems:
        print(problem)
    errors = sum(1 for p in problems if p.severity == "error")
    warnings = len(problems) - errors
    note = "" if directory is not None else " (no directory given: group names not checked)"
    print(f"{len(paths)} file(s): {errors} error(s), {warnings} warning(s){note}", file=sys.stderr)
    return 1 if errors else 0


# -- test ------------------------------------------------------------------------------------


def run_test(args: argparse.Namespace, config: Config) -> int:
    from policies.policy import load_policies
    from policies.testing import load_test_file, needs_inspector, run_file

    files = [load_test_file(p) for p in args.files]
    catalogue = _catalogue()
    inspect = _inspector(config, args.inspector_url) if needs_inspector(files) else None
    passed = failed = 0
    for test_file in files:
        policy_paths = list(args.policy) or list(test_file.policies) or list(config.policies.files)
        policies = load_policies(policy_paths, custom_topics(config))
        directory = _directory(args.directory or test_file.directory or config.identity.directory)
        default_group = test_file.default_group or config.identity.default_group
        results = run_file(
            test_file,
            policies,
            groups_of=_groups_of(directory, default_group),
            app_type_of=_app_type_of(catalogue),
            inspect=inspect,
        )
        for result in results:
            decision = result.decision
            got = "" if decision is None else f" -> {decision.action.value} [{', '.join(decision.rule_ids)}]"
            if result.passed:
                passed += 1
                if args.verbose:
                    print(f"ok    {result.case.where}  {result.case.name}{got}")
            else:
                failed += 1
                print(f"FAIL  {result.case.where}  {result.case.name}: {'; '.join(result.problems)}{got}")
                if decision is not None and decision.reason:
                    print(f"      reason: {decision.reason}")
    print(f"{passed} passed, {failed} failed", file=sys.stderr)
    return 1 if failed else 0


# -- explain ---------------------------------------------------------------------------------


def _parse_topics(items: list[str], custom: frozenset[str] = frozenset()) -> tuple[dict[Any, float], dict[str, float]]:
    """Declared ``TOPIC=level`` pairs: built-in topics, and the configured custom topics."""
    from policies.testing import LEVEL_SCORES
    from promptfence.core import Confidence, Topic

    topics: dict[Any, float] = {}
    customs: dict[str, float] = {}
    for item in items:
        name, _, level = item.partition("=")
        topic: Any = name.strip()
        if topic not in custom:
            try:
                topic = Topic(name.strip())
            except ValueError:
                known = [t.value for t in Topic] + sorted(custom)
                raise ConfigError(f"unknown topic {name!r} (expected one of: {', '.join(known)})") from None
        try:
            score = float(level)
        except ValueError:
            try:
                score = LEVEL_SCORES[Confidence.parse(level or "high")]
            except (ValueError, KeyError):
                raise ConfigError(f"{item!r}: expected TOPIC=low|medium|high or TOPIC=score") from None
        if isinstance(topic, Topic):
            topics[topic] = score
        else:
            customs[topic] = score
    return topics, customs


def _read_prompt(spec: str) -> str:
    if spec == "-":
        return sys.stdin.read()
    try:
        return Path(spec).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read prompt file: {type(exc).__name__}", source=spec) from None


def _record_inputs(config: Config, record_id: str) -> dict[str, Any]:
    from logs.store import LogStore

    store = LogStore(config.database_url, recipients=())
    try:
        found = store.get(record_id)
    finally:
        store.close()
    if found is None:
        raise PromptFenceError(f"no log record with id {record_id!r}")
    return found.metadata


def runs_of_record(meta: dict[str, Any]) -> tuple[DetectorRun, ...]:
    """The detector runs a record's metadata lists: each with its status, time and error."""
    from promptfence.core import DetectorRun, DetectorStatus

    errors = meta.get("detector_errors") or {}
    failed = set(meta.get("detectors_failed") or [])
    times = meta.get("detector_ms") or {}
    names = list(dict.fromkeys([*(meta.get("detectors_run") or []), *failed]))
    runs = []
    for name in names:
        error = errors.get(name) or {}
        try:
            status = DetectorStatus(error.get("status") or ("failed" if name in failed else "ok"))
        except ValueError:
            status = DetectorStatus.FAILED
        runs.append(DetectorRun(str(name), status, float(times.get(name) or 0.0), error.get("error")))
    return tuple(runs)


def explanation_dict(explanation: Explanation, inspection: Inspection, identity: dict[str, Any]) -> dict[str, Any]:
    return {
        "identity": identity,
        "inspection": inspection.to_dict(),
        "policies": [
            {
                "policy": trace.policy.name,
                "source": trace.policy.source,
                "default": trace.policy.default.value,
                "on_error": trace.policy.on_error.value,
                "uncovered_failures": list(trace.uncovered_failures),
                "rules": [
                    {
                        "id": r.rule.rule_id,
                        "where": r.rule.where,
                        "action": r.rule.action.value,
                        "matched": r.matched,
                        "checks": [{"selector": c.selector, "ok": c.ok, "detail": c.detail} for c in r.checks],
                    }
                    for r in trace.results
                ],
            }
            for trace in explanation.traces
        ],
        "candidates": [
            {"action": c.action.value, "rule": c.rule_id, "policy": c.policy, "reason": c.reason}
            for c in explanation.candidates
        ],
        "decision": explanation.decision.to_dict(),
    }


def _print_explanation(explanation: Explanation, inspection: Inspection, identity: dict[str, Any]) -> None:
    from promptfence.core import Confidence

    print(f"identity:   {identity['user']}  groups: {', '.join(identity['groups']) or '-'}  ({identity['source']})")
    print(f"operation:  {identity['app']} ({identity['app_type']}) {identity['operation']}")
    topics = ", ".join(
        [f"{t.value} {Confidence.of(s).name.lower()} ({s:.2f})" for t, s in sorted(inspection.topics.items())]
        + [f"{n} {Confidence.of(s).name.lower()} ({s:.2f})" for n, s in sorted(inspection.custom_topics.items())]
    )
    print(f"inspection: topics: {topics or '-'}")
    if not inspection.runs:
        print("            detectors: - (none ran: topics given on the command line)")
    for r in inspection.runs:
        why = f": {r.error}" if r.error else ""
        print(f"            detector: {r.detector} {r.status.value} {r.elapsed_ms:.1f} ms{why}")
    for f in inspection.findings:
        span = f"[{f.span.start}:{f.span.end}]" if f.span else "[no location]"
        print(f"            finding: {f.detector} {f.kind} {f.topic.value} {f.score:.2f} {span} {f.explanation}")
    for trace in explanation.traces:
        policy = trace.policy
        print(
            f"\npolicy {policy.name} ({policy.source}): default {policy.default.value}, on_error {policy.on_error.value}"
        )
        if not trace.results:
            print("  (no rules)")
        for result in trace.results:
            verdict = f"MATCH -> {result.rule.action.value}" if result.matched else "no match"
            print(f"  rule {result.rule.rule_id} ({result.rule.where}): {verdict}")
            if not result.checks:
                print("      (no selectors: matches everything)")
            for check in result.checks:
                print(f"      {'yes' if check.ok else 'no ':3} {check.selector}: {check.detail}")
        if trace.uncovered_failures:
            print(f"  on_error {policy.on_error.value}: {', '.join(trace.uncovered_failures)} failed")
        elif not any(r.matched for r in trace.results):
            print(f"  no rule matched: default {policy.default.value}")
    decision = explanation.decision
    print("\ncandidates (most restrictive wins):")
    for c in explanation.candidates:
        print(f"  {c.action.value:6} {c.rule_id}  ({c.reason})")
    print(f"\ndecision:   {decision.action.value}  rules: {', '.join(decision.rule_ids) or '-'}")
    print(f"reason:     {decision.reason}")
    if decision.redactions:
        counts = ", ".join(f"{k} x{v}" for k, v in decision.redacted_counts().items())
        print(f"redacts:    {counts}")


def run_explain(args: argparse.Namespace, config: Config) -> int:
    from policies.policy import load_policies
    from promptfence.core import Identity, Inspection, Operation, OperationKind

    names = custom_topics(config)
    policies: PolicySet = load_policies(list(args.policy) or list(config.policies.files), names)
    catalogue = _catalogue()
    directory = _directory(args.directory or config.identity.directory)
    meta: dict[str, Any] = {}
    prompt = ""
    if args.record:
        meta = _record_inputs(config, args.record)
        inspection = Inspection.from_dict(
            {
                "topics": meta.get("topics") or {},
                "findings": meta.get("findings") or [],
                "runs": [],
                "custom_topics": meta.get("custom_topics") or {},
            }
        )
        inspection = Inspection(
            inspection.findings, inspection.topics, runs_of_record(meta), custom_topics=inspection.custom_topics
        )
    elif args.prompt_file:
        prompt = _read_prompt(args.prompt_file)
        inspection = _inspector(config, args.inspector_url)(prompt)
    else:
        declared, declared_custom = _parse_topics(args.topics, names)
        inspection = Inspection(findings=(), topics=declared, runs=(), custom_topics=declared_custom)
    user = args.user or meta.get("user") or "test-user"
    if args.groups is not None:
        groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
        source = "explain --groups"
    elif args.user or not meta:
        groups = _groups_of(directory, config.identity.default_group)(user)
        source = "directory" if directory is not None else "no directory"
    else:
        groups = tuple(meta.get("groups") or ())
        source = f"log record ({meta.get('identity_source', '?')})"
    app = args.app or meta.get("app") or "chatgpt"
    app_type = _app_type_of(catalogue)(app) or meta.get("app_type") or "genai_chat"
    try:
        kind = OperationKind(args.operation or meta.get("operation") or OperationKind.SEND_PROMPT.value)
    except ValueError:
        raise ConfigError(f"unknown operation {args.operation!r}") from None
    operation = Operation(
        app=app,
        app_type=app_type,
        operation_id=str(meta.get("operation_id") or f"{app}.explain"),
        kind=kind,
        identity=Identity(user=user, groups=groups, source=source),
        prompt=prompt,
    )
    explanation = policies.explain(operation, inspection)
    ident = {
        "user": user,
        "groups": list(groups),
        "source": source,
        "app": app,
        "app_type": app_type,
        "operation": kind.value,
    }
    if args.json:
        print(json.dumps(explanation_dict(explanation, inspection, ident), indent=2))
    else:
        _print_explanation(explanation, inspection, ident)
    return 0


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if args.policy_command == "lint":
        return run_lint(args, config)
    if args.policy_command == "test":
        return run_test(args, config)
    return run_explain(args, config)
