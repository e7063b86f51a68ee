"""``promptfence``: the command line, and the one place where the steps are wired together.

Subcommands import their modules lazily so ``promptfence proxy`` never loads the inspector's
model code (torch, transformers, Presidio) and ``promptfence logs`` starts instantly.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from promptfence.errors import PromptFenceError


def _add_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="config file (default: $PROMPTFENCE_CONFIG, else ./promptfence.yaml if present, else embedded defaults)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="promptfence", description="Self-hosted AI prompt protection.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    up = sub.add_parser("up", help="start the inspector and the proxy together (Ctrl-C stops both)")
    _add_config(up)

    proxy = sub.add_parser("proxy", help="run the intercepting proxy (mitmproxy + PromptFence addon)")
    _add_config(proxy)

    inspector = sub.add_parser("inspector", help="run the inspection service (POST /v1/inspect)")
    _add_config(inspector)

    keys = sub.add_parser("keys", help="manage the admin key pairs that logs are sealed to")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    gen = keys_sub.add_parser("generate", help="create an X25519 key pair (private file mode 0600)")
    gen.add_argument("--private", metavar="FILE", help="private key file (default: <data_dir>/keys/admin.key)")
    gen.add_argument("--public", metavar="FILE", help="public key file (default: next to the private one, .pub)")
    _add_config(gen)

    logs = sub.add_parser("logs", help="read the prompt log")
    logs_sub = logs.add_subparsers(dest="logs_command", required=True, metavar="ACTION")
    lst = logs_sub.add_parser("list", help="list records (clear metadata only)")
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--app")
    lst.add_argument("--action", choices=["allow", "log", "redact", "warn", "block"])
    lst.add_argument("--user")
    lst.add_argument("--conversation", metavar="ID")
    lst.add_argument("--json", action="store_true", help="one JSON object per line (for a SIEM)")
    _add_config(lst)
    show = logs_sub.add_parser("show", help="decrypt one record locally with a private key")
    show.add_argument("record_id", metavar="ID")
    show.add_argument("--key", required=True, metavar="FILE", help="private key file")
    show.add_argument("--json", action="store_true")
    _add_config(show)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "proxy":
        # mitmproxy's own terminal log handler prints the proxy's records; a second one would double them.
        logging.getLogger().setLevel(logging.INFO)
    else:
        logging.basicConfig(
            level=logging.INFO if args.command in ("up", "inspector") else logging.WARNING,
            format="%(asctime)s %(levelname)s %(name)s: %(message)s",
            stream=sys.stderr,
        )
    try:
        if args.command == "up":
            from promptfence.cli.up_cmd import run_up

            return run_up(args)
        if args.command == "proxy":
            from promptfence.cli.proxy_cmd import run_proxy

            return run_proxy(args)
        if args.command == "inspector":
            from promptfence.cli.inspector_cmd import run_inspector

            return run_inspector(args)
        if args.command == "keys":
            from promptfence.cli.keys_cmd import run_keys

            return run_keys(args)
        if args.command == "logs":
            from promptfence.cli.logs_cmd import run_logs

            return run_logs(args)
    except PromptFenceError as exc:
        print(f"promptfence: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
