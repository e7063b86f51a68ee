"""``promptfence bench proxy``: end to end through real processes, as ``promptfence up`` runs them.

Started on one box, each as its own process: the stand-in app (:mod:`proxy.bench_app`, HTTPS,
pinned as chatgpt.com), ``promptfence inspector`` (the configured detectors, embedded defaults
without a config file), ``promptfence proxy`` (real TLS interception with a fresh CA), and for the
non-GenAI comparison a plain ``mitmdump`` with no addon. The client (this process, aiohttp through
the proxy) measures, per concurrency level, for a fixed duration each:

- ``inspected``: ChatGPT-shaped prompts ``POST``ed to the send-prompt path (extracted, inspected,
  decided, recorded, the SSE answer decoded);
- ``catch-all``: ``GET`` on the app's catch-all path (no prompt: forwarded, not inspected);
- ``non-genai``: a plain page on a host outside the catalogue, through ``promptfence proxy`` and
  through plain ``mitmdump``, in three pairs of half-phase slices in alternating order; the ratio
  is the median of the pairs' ratios.

Reported: prompts (requests) per second, p50/p90/p99 latency, the added latency of inspection
(inspected minus catch-all at the same concurrency), the non-GenAI throughput ratio, the CPU
seconds each process tree used per phase (other load on the machine does not inflate those), and
the load average. Everything lives in a scratch directory that is removed afterwards: the log
database, the keys, the embedding memory; prompts are never printed.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptfence.runtimes import INSPECTOR, PROXY, interpreter

STARTUP_S = 300.0
APP_HOST = "chatgpt.com"
SEND_PATH = "/backend-api/conversation"
CATCH_ALL_PATH = "/backend-api/bench-catch-all"
NON_GENAI_ROUNDS = 3  # pairs of (plain mitmdump, promptfence proxy) slices of half a phase each
NON_GENAI_SETTLE_S = 3.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def chatgpt_body(text: str) -> bytes:
    return json.dumps(
        {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [text]},
                }
            ],
            "parent_message_id": "client-created-root",
            "model": "auto",
            "supported_encodings": ["v1"],
        }
    ).encode()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))] if ordered else 0.0


def tree_cpu_s(root: int) -> float:
    """User + system CPU seconds of ``root`` and all its descendants (live ones)."""
    from promptfence.cli.bench_cmd import process_tree_cpu_s

    return process_tree_cpu_s(root)


@dataclass
class Procs:
    """The bench's child processes, by role."""

    children: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def cpu(self) -> dict[str, float]:
        out = {name: tree_cpu_s(p.pid) for name, p in self.children.items() if p.poll() is None}
        out["client"] = _self_cpu()
        return out

    def stop(self) -> None:
        for child in reversed(list(self.children.values())):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in self.children.values():
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


def _self_cpu() -> float:
    times = os.times()
    return times.user + times.system


def _wait(predicate: Any, what: str, child: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if child.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log.is_file() else ""
            raise RuntimeError(f"{what} exited with status {child.returncode} during start-up:\n{tail}")
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not start within {STARTUP_S:.0f}s")


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _port_open(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        return True


@dataclass(frozen=True)
class Target:
    """What one phase requests: method, URL, body maker."""

    name: str
    method: str
    url: str
    prompts: tuple[str, ...] = ()


async def drive(proxy_port: int, ca: Path, target: Target, concurrency: int, duration: float) -> dict[str, Any]:
    """``concurrency`` clients, each with its own keep-alive connection, for ``duration`` seconds."""
    import aiohttp

    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    counter = 0
    deadline = time.perf_counter() + duration
    proxy = f"http://127.0.0.1:{proxy_port}"

    async def worker() -> None:
        nonlocal errors, counter
        connector = aiohttp.TCPConnector(limit=1, ssl=context)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
            while time.perf_counter() < deadline:
                data = None
                if target.prompts:
                    # Unique per request, as real prompts are: a repeated text would be answered
                    # from the encoder's cache and flatter the figures.
                    text = target.prompts[counter % len(target.prompts)]
                    data = chatgpt_body(f"{text} (request {counter})")
                counter += 1
                started = time.perf_counter()
                try:
                    async with session.request(
                        target.method,
                        target.url,
                        data=data,
                        proxy=proxy,
                        headers={"Content-Type": "application/json"} if data else None,
                    ) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    continue
                latencies.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - started
    return {
        "phase": target.name,
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "per_s": round(len(latencies) / wall, 2),
        "wall_s": round(wall, 2),
        "latency_ms": {q: round(percentile(latencies, p), 1) for q, p in (("p50", 50), ("p90", 90), ("p99", 99))},
    }


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen(argv, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)


def run_bench(
    *,
    concurrency: list[int],
    duration: float,
    warmup: float,
    prompts: list[str],
    config_path: Path | None,
    non_genai_concurrency: int,
    keep: bool = False,
    progress: Any = None,
) -> dict[str, Any]:
    say = progress or (lambda _line: None)
    scratch = Path(tempfile.mkdtemp(prefix="promptfence-bench-proxy-"))
    procs = Procs()
    try:
        return asyncio.run(
            _run(scratch, procs, concurrency, duration, warmup, prompts, config_path, non_genai_concurrency, say)
        )
    finally:
        procs.stop()
        if not keep:
            shutil.rmtree(scratch, ignore_errors=True)


async def _run(
    scratch: Path,
    procs: Procs,
    levels: list[int],
    duration: float,
    warmup: float,
    prompts: list[str],
    config_path: Path | None,
    non_genai_concurrency: int,
    say: Any,
) -> dict[str, Any]:
    from proxy.bench_app import make_certs  # type: ignore[import-not-found,unused-ignore]

    proxy_python, inspector_python = interpreter(PROXY), interpreter(INSPECTOR)
    mitmdump = str(Path(proxy_python).parent / "mitmdump")
    home = scratch / "home"
    certs = make_certs(scratch / "tls", [APP_HOST])
    app_port, proxy_port, inspector_port, plain_port = free_port(), free_port(), free_port(), free_port()
    import yaml

    settings: dict[str, Any] = {}
    if config_path is not None:  # the detectors and models to bench; addresses are the bench's
        loaded = yaml.safe_load(config_path.read_text())
        settings = loaded if isinstance(loaded, dict) else {}
    settings["data_dir"] = str(home)
    proxy_section = dict(settings.get("proxy") or {})
    proxy_section.update(
        listen_host="127.0.0.1",
        listen_port=proxy_port,
        metrics_port=0,
        upstream_ca=str(certs.ca_cert),
        resolve={APP_HOST: f"127.0.0.1:{app_port}"},
    )
    settings["proxy"] = proxy_section
    inspector_section = dict(settings.get("inspector") or {})
    inspector_section.update(host="127.0.0.1", port=inspector_port)
    inspector_section.pop("url", None)
    inspector_section.pop("urls", None)
    settings["inspector"] = inspector_section
    for section in ("logs", "memory"):  # scratch databases: bench prompts stay out of real ones
        (settings.get(section) or {}).pop("database_url", None)
    config = scratch / "promptfence.yaml"
    config.write_text(yaml.safe_dump(settings))
    env = dict(os.environ)
    env["PROMPTFENCE_HOME"] = str(home)
    repo = Path(__file__).resolve().parents[2]
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(repo), env.get("PYTHONPATH", "")) if p)
    for var in (
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "http_proxy",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "PROMPTFENCE_CONFIG",
    ):
        env.pop(var, None)
    logs = scratch / "logs"
    logs.mkdir()
    keys = subprocess.run(
        [proxy_python, "-m", "promptfence", "keys", "generate", "--config", str(config)],
        env=env,
        capture_output=True,
        timeout=120,
    )
    if keys.returncode != 0:
        raise RuntimeError(f"keys generate failed: {keys.stderr.decode(errors='replace')[-500:]}")
    say("starting the stand-in app, the inspector (loads models) and the proxy")
    procs.children["app"] = _start(
        [proxy_python, "-m", "proxy.bench_app", str(app_port), str(certs.cert), str(certs.key)], env, logs / "app.log"
    )
    procs.children["inspector"] = _start(
        [inspector_python, "-m", "promptfence", "inspector", "--config", str(config)], env, logs / "inspector.log"
    )
    procs.children["proxy"] = _start(
        [proxy_python, "-m", "promptfence", "proxy", "--config", str(config)], env, logs / "proxy.log"
    )
    confdir = home / "mitmproxy"
    procs.children["mitmdump"] = _start(
        [
            mitmdump,
            "--quiet",
            "--listen-host",
            "127.0.0.1",
            "--listen-port",
            str(plain_port),
            "--set",
            f"confdir={confdir}",
            "--set",
            f"ssl_verify_upstream_trusted_ca={certs.ca_cert}",
        ],
        env,
        logs / "mitmdump.log",
    )
    _wait(lambda: _port_open(app_port), "stand-in app", procs.children["app"], logs / "app.log")
    _wait(
        lambda: _http_ok(f"http://127.0.0.1:{inspector_port}/healthz"),
        "inspector",
        procs.children["inspector"],
        logs / "inspector.log",
    )
    ca = confdir / "mitmproxy-ca-cert.pem"
    _wait(lambda: _port_open(proxy_port) and ca.is_file(), "proxy", procs.children["proxy"], logs / "proxy.log")
    _wait(lambda: _port_open(plain_port), "mitmdump", procs.children["mitmdump"], logs / "mitmdump.log")

    inspected = Target("inspected", "POST", f"https://{APP_HOST}{SEND_PATH}", tuple(prompts))
    catch_all = Target("catch-all", "GET", f"https://{APP_HOST}{CATCH_ALL_PATH}")
    page = Target("non-genai", "GET", f"https://127.0.0.1:{app_port}/static")
    say(f"warming up ({warmup:g}s)")
    await drive(proxy_port, ca, inspected, max(levels), warmup)
    await drive(proxy_port, ca, catch_all, 1, min(warmup, 2.0))

    phases: list[dict[str, Any]] = []

    async def measured(
        name: str, port: int, target: Target, concurrency: int, seconds: float = duration
    ) -> dict[str, Any]:
        load = os.getloadavg()[0]
        before = procs.cpu()
        row = await drive(port, ca, target, concurrency, seconds)
        after = procs.cpu()
        row["via"] = name
        row["load_average"] = round(load, 2)
        row["cpu_s"] = {k: round(after.get(k, 0.0) - before.get(k, 0.0), 2) for k in after}
        # CPU milliseconds per request, by process tree: what the machine's other load does not
        # change, and what sizing divides the cores by.
        done = max(1, row["requests"])
        row["cpu_ms_per_request"] = {k: round(v * 1000 / done, 1) for k, v in row["cpu_s"].items()}
        say(
            f"{target.name:<10} via {name:<12} c={concurrency:<3} {row['per_s']:>7.1f}/s"
            f"  p50 {row['latency_ms']['p50']:.0f} ms  p90 {row['latency_ms']['p90']:.0f} ms  load {load:.2f}"
        )
        phases.append(row)
        return row

    added: list[dict[str, Any]] = []
    for concurrency in levels:
        base_row = await measured("promptfence", proxy_port, catch_all, concurrency)
        row = await measured("promptfence", proxy_port, inspected, concurrency)
        added.append(
            {
                "concurrency": concurrency,
                "inspected_per_s": row["per_s"],
                "added_p50_ms": round(row["latency_ms"]["p50"] - base_row["latency_ms"]["p50"], 1),
                "added_p90_ms": round(row["latency_ms"]["p90"] - base_row["latency_ms"]["p90"], 1),
            }
        )
    # The non-GenAI comparison runs in NON_GENAI_ROUNDS short pairs in alternating order (plain
    # first, then ours first, ...) after a pause for the inspected phases' background work
    # (log completions, memory writes) to drain: on a shared machine, load that moves between
    # two long phases run one after the other decided the ratio more than the proxies did.
    await asyncio.sleep(NON_GENAI_SETTLE_S)
    rounds: list[dict[str, Any]] = []
    slice_s = max(duration / 2, 1.0)
    for i in range(NON_GENAI_ROUNDS):
        order = [("mitmdump", plain_port), ("promptfence", proxy_port)]
        pair = {}
        for name, port in order if i % 2 == 0 else order[::-1]:
            pair[name] = await measured(name, port, page, non_genai_concurrency, slice_s)
        rounds.append(pair)
    ratios = sorted(
        p["promptfence"]["per_s"] / p["mitmdump"]["per_s"] for p in rounds if p["mitmdump"]["per_s"] > 0
    )
    plain_total = sum(p["mitmdump"]["requests"] for p in rounds)
    ours_total = sum(p["promptfence"]["requests"] for p in rounds)
    detectors = _detectors(inspector_port)
    return {
        "bench": "proxy",
        "cpus": os.cpu_count(),
        "duration_s": duration,
        "prompts": len(prompts),
        "detectors": detectors,
        "phases": phases,
        "inspection": added,
        "non_genai": {
            "concurrency": non_genai_concurrency,
            "rounds": len(rounds),
            "mitmdump_per_s": round(plain_total / (slice_s * len(rounds)), 1),
            "promptfence_per_s": round(ours_total / (slice_s * len(rounds)), 1),
            # The median of the rounds' ratios: one round that load hit does not decide it.
            "ratio": round(ratios[len(ratios) // 2], 3) if ratios else None,
            "round_ratios": [round(r, 3) for r in ratios],
        },
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
    }


def _detectors(port: int) -> list[str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return [str(d["name"]) for d in json.loads(resp.read())["detectors"]]
    except (OSError, ValueError, KeyError):
        return []


def print_report(report: dict[str, Any]) -> None:
    print(
        f"bench proxy: {report['cpus']} CPUs, {report['duration_s']:g}s per phase, {report['prompts']} distinct prompts;"
        f" detectors: {', '.join(report['detectors']) or '?'}"
    )
    print(
        f"{'PHASE':<10} {'VIA':<12} {'CONC':>4} {'REQ/S':>8} {'P50 ms':>8} {'P90 ms':>8} {'P99 ms':>8}"
        f" {'ERR':>4} {'LOAD':>5}  CPU ms/request: inspector / proxy / app / client"
    )
    for row in report["phases"]:
        q = row["latency_ms"]
        cpu = row["cpu_ms_per_request"]
        proxy_cpu = cpu.get("proxy", 0) if row["via"] == "promptfence" else cpu.get("mitmdump", 0)
        print(
            f"{row['phase']:<10} {row['via']:<12} {row['concurrency']:>4} {row['per_s']:>8.1f} {q['p50']:>8.1f}"
            f" {q['p90']:>8.1f} {q['p99']:>8.1f} {row['errors']:>4} {row['load_average']:>5.2f}"
            f"  {cpu.get('inspector', 0):.1f} / {proxy_cpu:.1f} / {cpu.get('app', 0):.1f} / {cpu.get('client', 0):.1f}"
        )
    print(f"{'CONC':>4} {'INSPECTED/S':>12} {'ADDED P50 ms':>13} {'ADDED P90 ms':>13}")
    for row in report["inspection"]:
        print(
            f"{row['concurrency']:>4} {row['inspected_per_s']:>12.1f} {row['added_p50_ms']:>13.1f} {row['added_p90_ms']:>13.1f}"
        )
    ng = report["non_genai"]
    print(
        f"non-GenAI at c={ng['concurrency']}: promptfence proxy {ng['promptfence_per_s']:.1f}/s,"
        f" plain mitmdump {ng['mitmdump_per_s']:.1f}/s, ratio {ng['ratio']}"
        f" (median of {ng['rounds']} alternating rounds: {', '.join(str(r) for r in ng['round_ratios'])})"
    )
    print(f"load average at the end: {' '.join(str(x) for x in report['load_average_end'])}")


if __name__ == "__main__":  # pragma: no cover - `promptfence bench proxy` is the entry point
    sys.exit(0)
