"""Issue 13, item 7: nothing in clear in plain logs, ever.

mitmproxy logs raw request bytes when a client drops mid-request or sends a malformed one;
``proxy.master.RedactingFilter`` rewrites those records on every handler of the proxy process.
Unit cases for :func:`proxy.master.redact`, then a real ``promptfence proxy`` driven by raw
sockets that drop mid-request and send malformed requests with a canary in the URL, a Cookie
and the body: the canary is in no file the deployment wrote, while the log does show that the
proxy logged (redacted) those requests.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import uuid
from pathlib import Path

import pytest

from proxy.master import REDACTED, RedactingFilter, install_redaction, redact
from tests.support.deployment import start_proxy

CANARY = f"cnry{uuid.uuid4().hex[:12]}"


def _catalogue(host: str) -> bool:
    return host in ("chatgpt.com", "claude.ai")


@pytest.mark.parametrize(
    ("message", "kept"),
    [
        (
            "Client closed connection before completing request headers: "
            + repr(f"GET /search?q={CANARY} HTTP/1.1\r\nHost: chatgpt.com\r\nCookie: sid={CANARY}\r\n".encode()),
            "chatgpt.com [redacted]",
        ),
        (
            "127.0.0.1:5000: Bad HTTP request line: "
            + repr(bytearray(f"GET http://claude.ai:80/x?q={CANARY} HTTP/9".encode())),
            "claude.ai [redacted]",
        ),
        ("Invalid header line: " + repr(f"X: {CANARY}\"'\\".encode()), "request [redacted]"),
        (f"GET https://chatgpt.com/c/{CANARY}?q={CANARY} HTTP/1.1", "chatgpt.com [redacted]"),
        (f"fetching http://example.org/a/b?token={CANARY}#{CANARY} now", "http://example.org/a/b?[redacted] now"),
        (f"https://user:{CANARY}@example.org/", "example.org [redacted]"),
        (f"POST /backend-api/conversation?q={CANARY} HTTP/1.1", "POST [redacted] HTTP/1.1"),
        (f"Cookie: sid={CANARY}; other={CANARY}", "Cookie: [redacted]"),
        (f"set-cookie:{CANARY}", "set-cookie: [redacted]"),
        (f"Proxy-Authorization: Basic {CANARY}\nnext line", "Proxy-Authorization: [redacted]\nnext line"),
        (f"{{'Cookie': 'sid={CANARY}', 'Accept': '*/*'}}", "{'Cookie': [redacted], 'Accept': '*/*'}"),
        (f'("authorization", "Bearer {CANARY}")', '("authorization", [redacted])'),
    ],
)
def test_redact_removes_request_data_and_keeps_the_host(message: str, kept: str) -> None:
    out = redact(message, _catalogue)
    assert CANARY not in out
    assert kept in out


@pytest.mark.parametrize(
    "message",
    [
        "client connect",
        "server connect chatgpt.com:443 (127.0.0.1:9999)",
        "CONNECT chatgpt.com:443 HTTP/1.1",
        "flow=abc app=chatgpt operation=prompt action=block topics=pii",
        "proxy listening on 127.0.0.1:8080, CA certificate /x/mitmproxy-ca-cert.pem",
        "inspector at http://127.0.0.1:8731 unavailable",
        "GET is not a request line without a path",
    ],
)
def test_redact_leaves_ordinary_lines_alone(message: str) -> None:
    assert redact(message, _catalogue) == message


def test_the_filter_redacts_arguments_and_tracebacks_on_a_handler() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(f"test.redaction.{uuid.uuid4().hex}")
    logger.propagate = False
    logger.addHandler(handler)
    install_redaction(_catalogue, logger)
    install_redaction(_catalogue, logger)  # idempotent: one filter per handler
    assert sum(isinstance(f, RedactingFilter) for f in handler.filters) == 1
    logger.warning("dropped: %r (cookie: %s)", f"GET /q?{CANARY} HTTP/1.1\r\n".encode(), CANARY)
    try:
        raise ValueError(f"Bad HTTP request line: {f'GET http://chatgpt.com/{CANARY}'.encode()!r}")
    except ValueError:
        logger.exception("crashed")
    text = stream.getvalue()
    assert CANARY not in text
    assert "dropped: request [redacted] (cookie: [redacted]" in text
    assert "ValueError: Bad HTTP request line: chatgpt.com [redacted]" in text


# -- through a real proxy -------------------------------------------------------------------------


def _send_and_drop(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError):
            sock.recv(65536)  # whatever the proxy answers (or its close)


def _tunnel_and_drop(port: int, ca_cert: Path, data: bytes) -> None:
    sock = socket.create_connection(("127.0.0.1", port), timeout=30)
    sock.sendall(b"CONNECT chatgpt.com:443 HTTP/1.1\r\nHost: chatgpt.com:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        assert chunk, head
        head += chunk
    assert b" 200 " in head.split(b"\r\n", 1)[0], head
    context = ssl.create_default_context(cafile=str(ca_cert))
    with context.wrap_socket(sock, server_hostname="chatgpt.com") as tls:
        tls.sendall(data)
        tls.shutdown(socket.SHUT_WR)
        with contextlib.suppress(OSError, ssl.SSLError):
            tls.recv(65536)


@pytest.mark.slow
def test_a_real_proxy_logs_no_canary_when_clients_drop_or_send_garbage(tmp_path: Path) -> None:
    dep = start_proxy(tmp_path, command=["proxy"], policies={}, hosts=["chatgpt.com"])
    cookie = f"Cookie: sid={CANARY}; theme={CANARY}\r\n".encode()
    try:
        port = dep.proxy_port
        # Headers never completed (absolute form, catalogue host and another host).
        _send_and_drop(
            port, f"GET http://chatgpt.com/search?q={CANARY} HTTP/1.1\r\nHost: chatgpt.com\r\n".encode() + cookie
        )
        _send_and_drop(
            port, f"GET http://example.org/a?token={CANARY} HTTP/1.1\r\nHost: example.org\r\n".encode() + cookie
        )
        # Malformed: a bad version, a header line without a colon, a bad request line.
        _send_and_drop(port, f"GET http://chatgpt.com/search?q={CANARY} HTTP/9.9\r\nHost: chatgpt.com\r\n\r\n".encode())
        _send_and_drop(
            port, f"GET http://chatgpt.com/x HTTP/1.1\r\nHost: chatgpt.com\r\nCookie {CANARY}\r\n\r\n".encode()
        )
        _send_and_drop(port, f"{CANARY} {CANARY}\r\n\r\n".encode())
        # Inside a TLS tunnel: headers never completed, and a body cut short.
        _tunnel_and_drop(
            dep.proxy_port, dep.ca_cert, f"GET /search?q={CANARY} HTTP/1.1\r\nHost: chatgpt.com\r\n".encode() + cookie
        )
        _tunnel_and_drop(
            dep.proxy_port,
            dep.ca_cert,
            b"POST /backend-api/conversation HTTP/1.1\r\nHost: chatgpt.com\r\nContent-Type: application/json\r\n"
            + cookie
            + b"Content-Length: 5000\r\n\r\n"
            + f'{{"prompt": "{CANARY}'.encode(),
        )
    finally:
        dep.stop()  # flushes the proxy's stdout
    log = dep.proxy_log.read_text(errors="replace")
    # The positive control: mitmproxy did log these requests, and the filter rewrote them.
    assert "Client closed connection before completing request headers: chatgpt.com [redacted]" in log, log[-3000:]
    assert "example.org [redacted]" in log
    assert log.count(REDACTED) >= 4
    leaked = [str(p) for p in tmp_path.rglob("*") if p.is_file() and CANARY.encode() in p.read_bytes()]
    assert leaked == [], leaked
