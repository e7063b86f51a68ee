"""``promptfence capture --mitm FILE --har FILE``: run the proxy and record GenAI flows for replay.

It is ``promptfence proxy`` (same addon, inspection, policy and log) plus a recorder of the
flows of catalogue hosts only, answers included, to a mitmproxy flow file and/or a HAR file
(written on Ctrl-C / SIGTERM). Capture files hold prompts and answers in clear (mode 0600):
use it in test set-ups, then ``promptfence replay`` the files. Plain ``mitmdump -w FILE`` also
works, but a streamed answer is not kept in its flows.

Without an inspector every prompt would be recorded as a fail-closed block, so capture checks
first: an inspector that answers at ``inspector.url`` is used; otherwise, for a local inspector
(no ``inspector.url``), capture starts one (``promptfence inspector`` on its own environment's
Python, as ``up`` does) and stops it on the way out; ``--no-start-inspector`` (or a remote
``inspector.url`` that does not answer) is an error that says what to start. A proxy port that
is taken is an error that names ``--port`` before anything starts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.errors import ConfigError, PromptFenceError


class CaptureError(PromptFenceError):
    pass


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--mitm", metavar="FILE", help="write a mitmproxy flow file (as flows finish)")
    parser.add_argument("--har", metavar="FILE", help="write a HAR file (when the proxy stops)")
    parser.add_argument("--port", type=int, metavar="N", help="proxy port (default: proxy.listen_port, 8080)")
    parser.add_argument(
        "--no-start-inspector",
        dest="start_inspector",
        action="store_false",
        help="require a running inspector (promptfence inspector / up) instead of starting one",
    )
    add_config_option(parser)


def inspector_answers(base_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base_url}/healthz", timeout=timeout_s) as resp:
            return bool(resp.status == 200)
    except (urllib.error.URLError, OSError, ValueError):
        return False


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def start_inspector(config: Config, config_path: str | None) -> subprocess.Popen[bytes]:
    """``promptfence inspector`` as a child, once its /healthz answers (the detectors are loaded)."""
    from promptfence.cli.up_cmd import _child, _stop, _wait_http
    from promptfence.runtimes import INSPECTOR, interpreter

    python = interpreter(INSPECTOR)
    print(f"capture: starting the inspector at {config.inspector.base_url} (loading detectors)...", flush=True)
    child = _child(python, "inspector", config_path)
    try:
        _wait_http(f"{config.inspector.base_url}/healthz", child, "inspector")
    except BaseException:
        _stop([child])
        raise
    return child


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
        metrics_at=(config.proxy.metrics_host, config.proxy.metrics_port),
    )


def _banner(config: Config, mitm: Path | None, har: Path | None, inspector: str) -> str:
    from proxy.catalogue import load_catalogue

    hosts = sorted(load_catalogue().hosts)
    files = [f"{mitm} (mitmproxy flows, written as flows finish)"] if mitm else []
    files += [f"{har} (HAR, written when capture stops)"] if har else []
    return "\n".join(
        [
            "PromptFence capture is running.",
            f"  proxy:      http://{config.proxy.listen_host}:{config.proxy.listen_port}"
            "   (the browser's HTTP and HTTPS proxy)",
            f"  CA cert:    {config.ca_cert_path}",
            f"  inspector:  {config.inspector.base_url} ({inspector})",
            f"  recording:  {'; '.join(files)}",
            f"  of hosts:   {', '.join(hosts)} (nothing else is recorded)",
            "  the files hold prompts and answers in clear (mode 0600): test set-ups and consenting users only",
            "  log:        every operation is also inspected, decided and logged as by `promptfence proxy`",
            "Press Ctrl-C to stop (the HAR file is written then).",
        ]
    )


def run(args: argparse.Namespace) -> int:
    from promptfence.cli.up_cmd import _stop
    from promptfence.runtimes import PROXY, require

    if not args.mitm and not args.har:
        raise ConfigError("capture needs --mitm FILE and/or --har FILE")
    require(PROXY)
    config = load_config(args.config)
    if args.port is not None:
        if not 0 < args.port < 65536:
            raise CaptureError(f"--port {args.port} is not a TCP port")
        config = dataclasses.replace(config, proxy=dataclasses.replace(config.proxy, listen_port=args.port))
    host, port = config.proxy.listen_host, config.proxy.listen_port
    if not port_free(host, port):
        raise CaptureError(
            f"port {port} on {host} is already in use (another proxy, or `promptfence up`?); "
            "pass --port N to capture on another port"
        )
    children: list[subprocess.Popen[bytes]] = []
    if inspector_answers(config.inspector.base_url):
        inspector = "already running"
    elif not args.start_inspector or config.inspector.url is not None:
        raise CaptureError(
            f"no inspector answers at {config.inspector.base_url}: start one (`promptfence inspector`, or "
            "`promptfence up`), or leave out --no-start-inspector (with no inspector.url) to let capture start it; "
            "without one every prompt would be recorded as a fail-closed block"
        )
    else:
        children.append(start_inspector(config, args.config or config.source))
        inspector = "started by capture, stopped with it"
    mitm, har = Path(args.mitm) if args.mitm else None, Path(args.har) if args.har else None
    try:
        print(_banner(config, mitm, har, inspector), flush=True)
        asyncio.run(_serve(config, mitm, har))
    finally:
        _stop(children)
        print("capture: stopped", file=sys.stderr, flush=True)
    return 0
