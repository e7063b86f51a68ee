"""``promptfence up``: start the inspector, then the proxy, print how to use them, stop both on Ctrl-C.

The two run as child processes (the same ``promptfence`` entry point) because they are two
processes in production too: the proxy must stay small, the inspector holds the models. Each
runs on its own environment's Python (:mod:`promptfence.runtimes`): the proxy on a current
Python with mitmproxy 12, the inspector on the Python its torch wheel needs.
"""

from __future__ import annotations

import argparse
import ctypes
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from promptfence.cli import add_config_option
from promptfence.cli.keys_cmd import ensure_default_recipient
from promptfence.config import Config, load_config
from promptfence.errors import PromptFenceError
from promptfence.runtimes import INSPECTOR, PROXY, interpreter

STARTUP_TIMEOUT_S = 180.0
PR_SET_PDEATHSIG = 1


class StartupFailed(PromptFenceError):
    pass


def _child(python: str, command: str, config_path: str | None, *, verbose: bool = False) -> subprocess.Popen[bytes]:
    argv = [python, "-m", "promptfence", *(["--verbose"] if verbose else []), command]
    if config_path:
        argv += ["--config", str(Path(config_path).resolve())]
    # Own session: Ctrl-C reaches only this parent, which then stops the children in order.
    return subprocess.Popen(argv, start_new_session=True, preexec_fn=_die_with_parent)


def _die_with_parent() -> None:
    """Linux: the child gets SIGTERM if ``up`` dies (even by SIGKILL), so no orphan holds the ports."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


def _wait_http(url: str, child: subprocess.Popen[bytes], name: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise StartupFailed(
                f"{name} exited with status {child.returncode} during start-up (see its messages above)"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.3)
    raise StartupFailed(f"{name} did not become ready within {STARTUP_TIMEOUT_S:.0f}s")


def _wait_port(host: str, port: int, ca: Path, child: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            raise StartupFailed(f"proxy exited with status {child.returncode} during start-up (see its messages above)")
        try:
            with socket.create_connection((host, port), timeout=1):
                if ca.is_file():
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise StartupFailed(f"proxy did not start listening on {host}:{port} within {STARTUP_TIMEOUT_S:.0f}s")


def _stop(children: list[subprocess.Popen[bytes]]) -> None:
    for child in reversed(children):  # proxy first, so no prompt arrives at a stopped inspector
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=15)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _banner(config: Config, new_key: str | None) -> str:
    proxy = f"{config.proxy.listen_host}:{config.proxy.listen_port}"
    lines = [
        "",
        "PromptFence is running.",
        f"  proxy:      http://{proxy}   (set this as the browser's HTTP and HTTPS proxy)",
        f"  inspector:  {config.inspector.base_url}",
        f"  metrics:    {_metrics_line(config)}",
        f"  CA cert:    {config.ca_cert_path}",
        "  trust it:   Firefox: Settings > Privacy & Security > Certificates > Import;",
        "              Chromium/Chrome on Linux: certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n PromptFence -i <CA cert>;",
        "              system-wide (Debian): copy to /usr/local/share/ca-certificates/promptfence.crt, run update-ca-certificates;",
        f"              curl: curl --proxy http://{proxy} --cacert <CA cert> https://chatgpt.com/",
        f"  log store:  {config.database_url}",
        f"  sealed to:  {', '.join(str(p) for p in config.recipient_keys)}",
    ]
    if new_key:
        lines.append(
            f"  new key:    generated admin key pair {new_key}; the private key is {config.default_private_key}:"
            " move it to the security team and delete it here"
        )
    lines += ["Press Ctrl-C to stop.", ""]
    return "\n".join(lines)


def _metrics_line(config: Config) -> str:
    proxy = config.proxy
    ours = f"http://{proxy.metrics_host}:{proxy.metrics_port}/metrics (proxy), " if proxy.metrics_port else ""
    return f"{ours}{config.inspector.base_url}/metrics (inspector); /healthz and /readyz beside each"


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    config_path = args.config or config.source
    # Both environments are found before anything starts: a missing one is a clear error.
    inspector_python, proxy_python = interpreter(INSPECTOR), interpreter(PROXY)
    config.ensure_data_dir()
    new_key = ensure_default_recipient(config)
    children: list[subprocess.Popen[bytes]] = []

    def _on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _on_signal)
    try:
        verbose = bool(getattr(args, "verbose", False))
        inspector = _child(inspector_python, "inspector", config_path, verbose=verbose)
        children.append(inspector)
        _wait_http(f"{config.inspector.base_url}/healthz", inspector, "inspector")
        proxy = _child(proxy_python, "proxy", config_path, verbose=verbose)
        children.append(proxy)
        _wait_port(config.proxy.listen_host, config.proxy.listen_port, config.ca_cert_path, proxy)
        print(_banner(config, new_key), flush=True)
        while True:
            for child, name in ((inspector, "inspector"), (proxy, "proxy")):
                if child.poll() is not None:
                    print(f"promptfence: {name} exited with status {child.returncode}; stopping", file=sys.stderr)
                    return 1
            time.sleep(0.5)
    except KeyboardInterrupt:
        print("\npromptfence: stopping proxy and inspector", file=sys.stderr, flush=True)
        return 0
    finally:
        _stop(children)
