"""``promptfence``: the command line, and the one place where the steps are wired together.

Subcommands import their modules lazily so ``promptfence proxy`` never loads the inspector's
model code (torch, transformers, Presidio) and ``promptfence logs`` starts instantly.

A running service prints its start-up lines, one line per inspected operation (the proxy's
decision line, no text), warnings and errors; ``promptfence --verbose ...`` adds the rest
(mitmproxy's connection lines, Alembic, every stored log write and answer). What is quieted is data:
:data:`QUIET_LOGGERS` and :data:`CHATTER`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
from collections.abc import Sequence
from types import ModuleType

from promptfence.errors import PromptFenceError

# Each subcommand is one module ``promptfence.cli.<name>_cmd`` with ``configure(parser)`` and
# ``run(args) -> int``; module-level imports there stay light (heavy ones go inside ``run``).
# Adding a command is one new module plus one line here.
COMMANDS: dict[str, str] = {
    "up": "start the inspector and the proxy together (Ctrl-C stops both)",
    "proxy": "run the intercepting proxy (mitmproxy + PromptFence addon)",
    "inspector": "run the inspection service (POST /v1/inspect)",
    "keys": "manage the admin key pairs that logs are sealed to",
    "logs": "read the prompt log",
    "replay": "run captured flows (.mitm, HAR) through mapping, inspection and policy offline",
    "capture": "run the proxy and record GenAI flows to .mitm / HAR files for replay",
    "policy": "lint, test and explain guardrail policies (the policy author's toolkit)",
    "identity": "hash proxy passwords and check who is in which group",
    "eval": "measure detection quality on a labelled JSON-lines dataset",
    "bench": "measure speed (bench inspect: inspector throughput and latency)",
    "viewer": "serve the prompt-log web viewer (decryption happens in the browser)",
    "feedback": "mark a log record's topic as a false or true positive",
    "apps": "the app catalogue and the wire-format drift alarm (apps status)",
    "topics": "custom topics: leave-one-out precision/recall of topic files (topics test)",
}


# Libraries whose INFO lines are noise in a running service: Alembic (its migration context,
# even when there is nothing to migrate), faiss (which CPU build it loaded, with the
# ModuleNotFoundError of the one it did not), Presidio (each recognizer it loads).
QUIET_LOGGERS: dict[str, int] = {
    "alembic": logging.WARNING,
    "faiss": logging.WARNING,
    "presidio-analyzer": logging.WARNING,
    "sentence_transformers": logging.WARNING,
}
# INFO lines that repeat for every request, per logger, by their rendered message: mitmproxy's
# connection lifecycle (4-5 lines per request), mitmproxy's own listening line (we print ours),
# the log write of each stored record, the answer's size. What is unusual stays visible (a
# client dropping mid-request, a TLS failure, a spooled or lost record). Shown with --verbose.
CHATTER: dict[str, tuple[re.Pattern[str], ...]] = {
    "mitmproxy.proxy.server": (
        re.compile(r"^(?:client|server) (?:connect|disconnect)\b|^client kill connection"),
        re.compile(r"^Streaming (?:request|response) (?:from|to) "),
    ),
    "mitmproxy.addons.proxyserver": (re.compile(r"proxy listening at"),),
    "promptfence.logs": (re.compile(r"^record \S+ \S+ stored \("),),
    "promptfence.proxy": (re.compile(r"^flow=\S+ op=\S+ answer_chars="),),
}


class ChatterFilter(logging.Filter):
    """Drops INFO (and DEBUG) records matching :data:`CHATTER` (a logger filter: it runs before
    any handler, so before the redacting filter rewrites the message)."""

    def __init__(self, patterns: tuple[re.Pattern[str], ...]) -> None:
        super().__init__()
        self.patterns = patterns

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a record that cannot render is not ours to judge
            return True
        return not any(p.search(message) for p in self.patterns)


def configure_quiet(verbose: bool) -> None:
    """Apply :data:`QUIET_LOGGERS` and :data:`CHATTER` unless ``verbose``."""
    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(logging.NOTSET if verbose else level)
    for name, patterns in CHATTER.items():
        logger = logging.getLogger(name)
        for existing in [f for f in logger.filters if isinstance(f, ChatterFilter)]:
            logger.removeFilter(existing)
        if not verbose:
            logger.addFilter(ChatterFilter(patterns))


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $PROMPTFENCE_CONFIG, else ./promptfence.yaml if present, else embedded defaults)",
    )


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"promptfence.cli.{name}_cmd")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptfence", description="Self-hosted AI prompt protection.")
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also print library INFO lines (mitmproxy connections, Alembic) and every log write",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        command = sub.add_parser(name, help=help_text, description=help_text)
        _module(name).configure(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("proxy", "capture"):
        # mitmproxy's own terminal log handler prints the proxy's records; a second one would double them.
        logging.getLogger().setLevel(logging.INFO)
    else:
        logging.basicConfig(
            level=logging.INFO if args.command in ("up", "inspector") else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    configure_quiet(args.verbose)
    try:
        result: int = _module(args.command).run(args)
        return result
    except PromptFenceError as exc:
        print(f"promptfence: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
