"""``promptfence viewer``: serve the prompt-log web viewer (decryption happens in the browser)."""

from __future__ import annotations

import argparse
import logging

from promptfence.cli import add_config_option
from promptfence.config import load_config

log = logging.getLogger("promptfence.viewer")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: viewer.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: viewer.port, 8733)")
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from logs.store import LogStore
    from logs.viewer import build_app

    config = load_config(args.config)
    host = args.host or config.viewer.host
    port = args.port or config.viewer.port
    store = LogStore(config.database_url, recipients=())
    try:
        print(
            f"PromptFence log viewer on http://{host}:{port}/ : load your private key file in the page;"
            " it is used in the browser only and never sent to this server.",
            flush=True,
        )
        web.run_app(build_app(store), host=host, port=port, print=None, access_log=None, handle_signals=True)
    finally:
        store.close()
    return 0
