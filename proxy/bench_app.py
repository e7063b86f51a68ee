"""The local stand-in app behind ``promptfence bench proxy`` (issue 17): HTTPS, no network.

It plays chatgpt.com for the proxy (the bench pins the host to it, and trusts the throw-away
CA made here): ``POST /backend-api/conversation`` answers a short delta-encoded SSE stream in
ChatGPT's shape, every other path answers a small JSON body (the app's catch-all path, which
the proxy passes without inspection), and ``GET /static`` answers ``STATIC_BYTES`` bytes (the
non-GenAI page, fetched by IP so that plain mitmdump needs no host pinning). It keeps no
record of what it receives: prompts are never written anywhere.

Usage: python -m proxy.bench_app PORT CERT KEY
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

STATIC_BYTES = 16 * 1024
ANSWER_EVENTS = [
    'event: delta_encoding\ndata: "v1"\n\n',
    'event: delta\ndata: {"p": "", "o": "add", "v": {"message": {"id": "a-1", "author": {"role": "assistant"}, '
    '"content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "recipient": "all"}, '
    '"conversation_id": "bench-conv", "error": null}, "c": 0}\n\n',
    'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "Stand-in answer"}\n\n',
    'event: delta\ndata: {"v": " from the bench app."}\n\n',
    'event: delta\ndata: {"p": "/message/status", "o": "replace", "v": "finished_successfully"}\n\n',
    'data: {"type": "message_stream_complete", "conversation_id": "bench-conv"}\n\n',
    "data: [DONE]\n\n",
]


@dataclass(frozen=True)
class BenchCerts:
    ca_cert: Path
    cert: Path
    key: Path


def make_certs(directory: Path, hostnames: list[str]) -> BenchCerts:
    """A throw-away CA and a server certificate for ``hostnames`` and 127.0.0.1 (two days)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("PromptFence bench CA"))
        .issuer_name(name("PromptFence bench CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [x509.DNSName(h) for h in hostnames]
    sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name(hostnames[0]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    out = BenchCerts(directory / "bench-ca.pem", directory / "server.pem", directory / "server.key")
    out.ca_cert.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    out.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    out.key.chmod(0o600)
    return out


def build_app() -> web.Application:
    static = b"x" * STATIC_BYTES

    async def conversation(request: web.Request) -> web.StreamResponse:
        await request.read()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for event in ANSWER_EVENTS:
            await resp.write(event.encode())
        await resp.write_eof()
        return resp

    async def page(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=static, content_type="application/octet-stream")

    async def other(request: web.Request) -> web.Response:
        await request.read()
        return web.json_response({"ok": True, "items": []})

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/backend-api/conversation", conversation)
    app.router.add_get("/static", page)
    app.router.add_route("*", "/{tail:.*}", other)
    return app


def main(argv: list[str]) -> int:
    port, cert, key = int(argv[0]), argv[1], argv[2]
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    web.run_app(build_app(), host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
