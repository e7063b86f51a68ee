"""A real PromptFence proxy process over real TLS in front of the local HTTPS stand-in.

``start_proxy`` starts ``tests.support.standin`` (upstream for every pinned host, plus a
stand-in inspector) and then one ``promptfence`` proxy command (``proxy`` or ``capture``)
with a config that pins the given hosts to the stand-in, trusts the stand-in's test CA and
loads the given policy files. Clients (curl, or Python through :meth:`ProxyDeployment.tunnel`)
trust the CA the proxy generated. ``stop`` shuts both down cleanly (SIGTERM: HAR files are
written on the way out). One deployment per test module keeps suites fast.
"""

from __future__ import annotations

import http.client
import json
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.procs import child_env, free_port, port_open, proxy_python, repo_root, stop, wait_for
from tests.support.tls import ServerCert, make_server_cert

GENAI_HOSTS = ["chatgpt.com", "chat.openai.com", "claude.ai", "gemini.google.com", "www.perplexity.ai"]


@dataclass
class CurlResult:
    status: int
    headers: str
    body: str


@dataclass
class Standin:
    """The ``tests.support.standin`` process: HTTPS upstream (and, with a port, the inspector)."""

    process: subprocess.Popen[bytes]
    port: int
    certs: ServerCert
    received: Path
    inspector_port: int | None = None

    def wait(self, what: str = "stand-in upstream") -> None:
        def listening() -> bool:
            return port_open(self.port) and (self.inspector_port is None or port_open(self.inspector_port))

        wait_for(listening, 30, what, self.process)


def start_standin(
    root: Path, cert_hosts: list[str], env: dict[str, str], received: Path, *, inspector_port: int | None = None
) -> Standin:
    """Start the stand-in with a fresh test CA and a server certificate for ``cert_hosts``; every
    request it receives is appended to ``received``. It does not wait: call :meth:`Standin.wait`."""
    certs = make_server_cert(root / "upstream-tls", cert_hosts)
    received.touch()
    port = free_port()
    argv = [sys.executable, "-m", "tests.support.standin", str(port), str(certs.cert), str(certs.key), str(received)]
    if inspector_port is not None:
        argv.append(str(inspector_port))
    process = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return Standin(process, port, certs, received, inspector_port)


def proxy_config(
    home: Path, proxy_port: int, standin: Standin, resolve_hosts: list[str], inspector: str, extra: str = ""
) -> str:
    """A ``promptfence.yaml`` text: listen on ``proxy_port``, pin ``resolve_hosts`` to the stand-in
    and trust its CA; ``inspector`` is the one line under ``inspector:`` (``port: N`` or ``url: U``);
    ``extra`` is appended (further top-level sections)."""
    resolve = "".join(f"\n    {h}: 127.0.0.1:{standin.port}" for h in resolve_hosts)
    return f"""
data_dir: {home}
proxy:
  listen_port: {proxy_port}
  upstream_ca: {standin.certs.ca_cert}
  resolve:{resolve}
inspector:
  {inspector}
{extra}"""


def run_cli(config: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``promptfence ARGS --config CONFIG`` as a child process; its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "promptfence", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def curl(
    proxy_port: int,
    ca_cert: Path,
    env: dict[str, str],
    url: str,
    *,
    data: bytes | str | None = None,
    headers: dict[str, str] | None = None,
    method: str | None = None,
    max_time: int = 60,
) -> CurlResult:
    """curl through the proxy at ``proxy_port``, trusting only ``ca_cert`` (the proxy's CA)."""
    argv = ["curl", "--silent", "--show-error", "--max-time", str(max_time)]
    argv += ["--proxy", f"http://127.0.0.1:{proxy_port}", "--cacert", str(ca_cert), "--dump-header", "-"]
    for key, value in (headers or {}).items():
        argv += ["-H", f"{key}: {value}"]
    if method:
        argv += ["-X", method]
    if data is not None:
        argv += ["--data-binary", "@-"]
    argv.append(url)
    raw = data.encode() if isinstance(data, str) else data
    result = subprocess.run(argv, input=raw, capture_output=True, timeout=max_time + 30, env=env)
    assert result.returncode == 0, f"curl failed: {result.stderr.decode(errors='replace')}"
    output = result.stdout.decode("utf-8", "replace")
    if "connection established" in output.split("\n", 1)[0].lower():  # the CONNECT answer comes first
        output = output.partition("\r\n\r\n")[2]
    head, _, body = output.partition("\r\n\r\n")
    assert head.startswith("HTTP/"), head[:300]
    return CurlResult(int(head.split()[1]), head, body)


@dataclass
class ProxyDeployment:
    root: Path
    home: Path
    config: Path
    proxy_port: int
    ca_cert: Path
    received: Path
    proxy: subprocess.Popen[bytes]
    proxy_log: Path
    standin: subprocess.Popen[bytes]
    env: dict[str, str]
    extra: dict[str, Path] = field(default_factory=dict)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, self.env, *args)

    def received_requests(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.received.read_text().splitlines()]

    def curl(
        self,
        url: str,
        *,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        method: str | None = None,
    ) -> CurlResult:
        return curl(self.proxy_port, self.ca_cert, self.env, url, data=data, headers=headers, method=method)

    def tunnel(self, host: str, timeout: float = 30) -> http.client.HTTPSConnection:
        """An HTTPS connection to ``host`` through the proxy (CONNECT), trusting the proxy's CA."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        conn = http.client.HTTPSConnection("127.0.0.1", self.proxy_port, timeout=timeout, context=context)
        conn.set_tunnel(host, 443)
        return conn

    def stop(self) -> int:
        code = stop(self.proxy, signal.SIGTERM)
        stop(self.standin)
        return code


def start_proxy(
    root: Path,
    *,
    command: list[str],
    policies: dict[str, str],
    hosts: list[str],
    extra_config: str = "",
    with_default_policy: bool = True,
) -> ProxyDeployment:
    """Start the stand-in and ``promptfence <command...>``; policies maps file names to YAML,
    loaded together with the shipped default policy unless ``with_default_policy`` is false;
    ``extra_config`` is appended to the config (further top-level sections, e.g. ``identity:``)."""
    home = root / "home"
    env = child_env(home)
    inspector_port, proxy_port = free_port(), free_port()
    standin = start_standin(root, hosts, env, root / "standin-received.jsonl", inspector_port=inspector_port)
    policy_files = [str(repo_root() / "policies" / "builtin" / "default.yaml")] if with_default_policy else []
    for name, text in policies.items():
        (root / name).write_text(text)
        policy_files.append(str(root / name))
    config = root / "promptfence.yaml"
    config.write_text(
        proxy_config(
            home,
            proxy_port,
            standin,
            hosts,
            f"url: http://127.0.0.1:{inspector_port}",
            f"policies:\n  files: [{', '.join(policy_files)}]\n{extra_config}",
        )
    )
    init = subprocess.run(
        [sys.executable, "-m", "promptfence", "keys", "generate", "--config", str(config)],
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert init.returncode == 0, init.stderr.decode(errors="replace")
    proxy_log = root / "proxy.log"
    with proxy_log.open("wb") as log:
        proxy = subprocess.Popen(
            [proxy_python(), "-m", "promptfence", *command, "--config", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    dep = ProxyDeployment(
        root,
        home,
        config,
        proxy_port,
        home / "mitmproxy" / "mitmproxy-ca-cert.pem",
        standin.received,
        proxy,
        proxy_log,
        standin.process,
        env,
    )
    try:
        standin.wait()
        wait_for(lambda: port_open(proxy_port) and dep.ca_cert.is_file(), 60, "proxy listening", proxy)
    except BaseException:
        dep.stop()
        raise
    return dep
