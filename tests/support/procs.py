"""Helpers for tests that start real processes: free ports, waiting, clean shutdown."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited ({proc.returncode}) while waiting for {what}")
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 20) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]


def child_env(home: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PROMPTFENCE_HOME"] = str(home)
    env["PYTHONPATH"] = str(repo_root())
    env.pop("PROMPTFENCE_CONFIG", None)
    env.pop("NO_PROXY", None)
    env.pop("no_proxy", None)
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(var, None)
    return env


def proxy_python() -> str:
    """The Python that runs ``promptfence proxy`` (its own environment, mitmproxy 12)."""
    from promptfence.runtimes import PROXY, interpreter

    return interpreter(PROXY)


def inspector_python() -> str:
    """The Python that runs ``promptfence inspector`` (the environment with torch and Presidio)."""
    from promptfence.runtimes import INSPECTOR, interpreter

    return interpreter(INSPECTOR)
