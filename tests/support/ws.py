"""A WebSocket stand-in upstream over real TLS, a proxy deployment pinned to it, and a client.

``python -m tests.support.ws PORT CERT KEY RECEIVED_FILE`` serves HTTPS where any path upgrades
to a WebSocket. Every message a client sends is appended to ``RECEIVED_FILE`` (JSON lines: path,
host, type, data) *before* it is acknowledged, so a test can tell whether a frame reached
"upstream". To each client message it answers ``ack:<n>`` and then :data:`SERVER_PUSH`: text a
guard inspecting server messages would stop, which must reach the client untouched.

:func:`start_ws_proxy` starts the stand-in inspector (tests.support.standin), this upstream and
a real ``promptfence proxy`` that pins the given hosts to it; :func:`exchange` talks to a
WebSocket through the proxy (CONNECT, TLS trusting the proxy's CA) and reports what came back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import ssl
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from aiohttp import web

from tests.support.deployment import Standin, proxy_config, run_cli, start_standin
from tests.support.procs import child_env, free_port, port_open, proxy_python, repo_root, stop, wait_for

SERVER_PUSH = "Server push: SSN 219-09-9999 [[topic:PII=0.95]]"


def build_ws_app(received: Path) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            return web.json_response({"ok": True, "path": request.path})
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        count = 0
        async for msg in ws:
            if msg.type not in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                break
            count += 1
            data = msg.data if isinstance(msg.data, str) else msg.data.decode("utf-8", "replace")
            with received.open("a", encoding="utf-8") as fh:
                fh.write(
                    json.dumps(
                        {"path": request.path, "host": request.headers.get("Host"), "type": msg.type.name, "data": data}
                    )
                    + "\n"
                )
            await ws.send_str(f"ack:{count}")
            await ws.send_str(SERVER_PUSH)
        return ws

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app


@dataclass
class WsExchange:
    """What one WebSocket conversation through the proxy came to."""

    upgraded: bool
    received: list[str] = field(default_factory=list)  # text messages from the server, in order
    close_code: int | None = None
    close_reason: str = ""


async def _exchange(
    proxy_port: int,
    ca_cert: Path,
    url: str,
    messages: list[str | bytes],
    expect_replies: int,
    replies_each: int,
    timeout: float,
) -> WsExchange:
    context = ssl.create_default_context(cafile=str(ca_cert))
    result = WsExchange(upgraded=False)
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(
            url,
            proxy=f"http://127.0.0.1:{proxy_port}",
            ssl=context,
            timeout=aiohttp.ClientWSTimeout(ws_receive=timeout, ws_close=timeout),
        ) as ws,
    ):
        result.upgraded = True

        async def read_until(count: int) -> bool:
            """Read server messages until ``count`` arrived in all; False once the socket closed."""
            while len(result.received) < count:
                msg = await ws.receive(timeout=timeout)
                if msg.type is aiohttp.WSMsgType.TEXT:
                    result.received.append(msg.data)
                    continue
                if msg.type is aiohttp.WSMsgType.CLOSE:
                    result.close_code, result.close_reason = msg.data, msg.extra or ""
                else:
                    result.close_code = ws.close_code
                return False
            return True

        for index, message in enumerate(messages, start=1):
            if isinstance(message, bytes):
                await ws.send_bytes(message)
            else:
                await ws.send_str(message)
            if replies_each and not await read_until(index * replies_each):
                return result
        await read_until(expect_replies)
    return result


def exchange(
    proxy_port: int,
    ca_cert: Path,
    url: str,
    messages: list[str | bytes],
    *,
    expect_replies: int,
    replies_each: int = 0,
    timeout: float = 30,
) -> WsExchange:
    """Open ``url`` (wss://) through the proxy and send ``messages`` (each after the replies to the
    one before, with ``replies_each``), then read server messages until ``expect_replies`` arrived
    or the socket closed (its code and reason are kept)."""

    async def run() -> WsExchange:
        try:
            return await _exchange(proxy_port, ca_cert, url, messages, expect_replies, replies_each, timeout)
        finally:
            # A TLS connection through a proxy tunnel finishes closing a few loop turns after the
            # session: let it, or its socket is collected unclosed (a ResourceWarning).
            await asyncio.sleep(0.25)

    return asyncio.run(run())


@dataclass
class WsDeployment:
    root: Path
    home: Path
    config: Path
    proxy_port: int
    ca_cert: Path
    received: Path  # what the WebSocket upstream received, JSON lines
    proxy: subprocess.Popen[bytes]
    proxy_log: Path
    processes: list[subprocess.Popen[bytes]]
    env: dict[str, str]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.config, self.env, *args)

    def received_messages(self) -> list[dict[str, str]]:
        return [json.loads(line) for line in self.received.read_text().splitlines()]

    def exchange(
        self, url: str, messages: list[str | bytes], *, expect_replies: int, replies_each: int = 0
    ) -> WsExchange:
        return exchange(
            self.proxy_port, self.ca_cert, url, messages, expect_replies=expect_replies, replies_each=replies_each
        )

    def stop(self) -> int:
        code = stop(self.proxy, signal.SIGTERM)
        for process in self.processes:
            stop(process)
        return code


def start_ws_proxy(root: Path, *, hosts: list[str], extra_config: str = "") -> WsDeployment:
    """The stand-in inspector, the WebSocket upstream (a certificate for ``hosts``) and
    ``promptfence proxy`` with the shipped default policy, pinning ``hosts`` to the upstream."""
    home = root / "home"
    env = child_env(home)
    inspector_port, ws_port, proxy_port = free_port(), free_port(), free_port()
    standin = start_standin(root, hosts, env, root / "standin-received.jsonl", inspector_port=inspector_port)
    received = root / "ws-received.jsonl"
    received.touch()
    argv = [sys.executable, "-m", "tests.support.ws", str(ws_port)]
    argv += [str(standin.certs.cert), str(standin.certs.key), str(received)]
    ws_process = subprocess.Popen(
        argv,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    upstream: Standin = dataclasses.replace(standin, port=ws_port)  # pins go to the WebSocket upstream
    config = root / "promptfence.yaml"
    default_policy = repo_root() / "policies" / "builtin" / "default.yaml"
    config.write_text(
        proxy_config(
            home,
            proxy_port,
            upstream,
            hosts,
            f"url: http://127.0.0.1:{inspector_port}",
            f"policies:\n  files: [{default_policy}]\n{extra_config}",
        )
    )
    processes = [standin.process, ws_process]
    proxy_log = root / "proxy.log"
    try:
        init = run_cli(config, env, "keys", "generate")
        assert init.returncode == 0, init.stderr
        with proxy_log.open("wb") as log:
            proxy = subprocess.Popen(
                [proxy_python(), "-m", "promptfence", "proxy", "--config", str(config)],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
    except BaseException:
        for process in processes:
            stop(process)
        raise
    dep = WsDeployment(
        root, home, config, proxy_port, home / "mitmproxy" / "mitmproxy-ca-cert.pem", received, proxy, proxy_log,
        processes, env,
    )  # fmt: skip
    try:
        standin.wait()
        wait_for(lambda: port_open(ws_port), 30, "WebSocket upstream", ws_process)
        wait_for(lambda: port_open(proxy_port) and dep.ca_cert.is_file(), 60, "proxy listening", proxy)
    except BaseException:
        dep.stop()
        raise
    return dep


def main() -> None:
    port, cert, key, received = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    web.run_app(build_ws_app(received), host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    main()
