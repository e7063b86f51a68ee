"""``promptfence capture --mitm FILE --har FILE``: run the proxy and record GenAI flows for replay.

It is ``promptfence proxy`` (same addon, inspection, policy and log) plus a recorder of the
flows of catalogue hosts only, answers included, to a mitmproxy flow file and/or a HAR file
(written on Ctrl-C / SIGTERM). Capture files hold prompts and answers in clear (mode 0600):
use it in test set-ups, then ``promptfence replay`` the files. Plain ``mitmdump -w FILE`` also
works, but a streamed answer is not kept in its flows.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.errors import ConfigError


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mitm", metavar="FILE", help="write a mitmproxy flow file (as flows finish)")
    parser.add_argument("--har", metavar="FILE", help="write a HAR file (when the proxy stops)")
    add_config_option(parser)


async def _serve(config: Config, mitm: Path | None, har: Path | None) -> None:
    from promptfence.cli.proxy_cmd import build_master, run_master
    from proxy.capture import CaptureAddon
    from proxy.catalogue import load_catalogue

    master, recorder, client = build_master(config)
    master.addons.add(CaptureAddon(load_catalogue(), mitm, har))
    master.options.update(promptfence_capture_bodies=config.proxy.max_body_bytes)
    await run_master(
        master,
        recorder,
        client,
        "capturing proxy listening on %s:%d, CA certificate %s; recording to %s",
        config.proxy.listen_host,
        config.proxy.listen_port,
        config.ca_cert_path,
        ", ".join(str(p) for p in (mitm, har) if p),
    )


def run(args: argparse.Namespace) -> int:
    if not args.mitm and not args.har:
        raise ConfigError("capture needs --mitm FILE and/or --har FILE")
    config = load_config(args.config)
    asyncio.run(_serve(config, Path(args.mitm) if args.mitm else None, Path(args.har) if args.har else None))
    return 0
