"""Issue 11, item 8 through a real proxy over real TLS: proxy authentication cannot be skipped.

One ``promptfence proxy`` (real mitmdump, via tests.support.deployment) in front of the HTTPS
stand-in, with proxy authentication required and a trusted identity header believed only from
127.0.0.2. Requests are written byte for byte on raw sockets (curl and http.client refuse or
normalise most of these shapes): malformed credentials, look-alike identity headers and
duplicated identity headers. Each case must end refused at the proxy (the stand-in upstream
never sees the request) or forwarded without any identity header, and the proxy log never
holds a credential or a header value.

Every refusal case has a positive control next to it (the same bytes with good credentials go
through and upstream sees them), so a test cannot pass just because nothing works.
"""

from __future__ import annotations

import base64
import socket
import ssl
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from proxy.identity import hash_password
from tests.support.deployment import ProxyDeployment, start_proxy
from tests.support.procs import free_port, proxy_python

pytestmark = pytest.mark.slow

HOST = "chatgpt.com"
CANARY = f"canary{uuid.uuid4().hex[:12]}"  # in every password and header value sent below
PASSWORD = f"alice-{CANARY}-pw"
HEADER = "X-Authenticated-User"
GROUPS = "X-Authenticated-Groups"
IDENTITY_NAMES = {"x-authenticated-user", "x-authenticated-groups", "proxy-authorization"}


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


GOOD = b"Proxy-Authorization: Basic " + _b64(f"alice@example.com:{PASSWORD}".encode())

# Each is one or more raw header lines that must not authenticate anybody.
MALFORMED: dict[str, list[bytes]] = {
    "non-ascii byte": [b"Proxy-Authorization: Basic \xe9"],
    "non-ascii after valid base64": [GOOD + b"\xe9"],
    "utf-8 in the token": [b"Proxy-Authorization: Basic " + "\u00e9t\u00e9".encode()],
    "not base64": [b"Proxy-Authorization: Basic !!!!"],
    "bad padding": [b"Proxy-Authorization: Basic " + _b64(f"alice@example.com:{PASSWORD}".encode()).rstrip(b"=")[:-1]],
    "no colon": [b"Proxy-Authorization: Basic " + _b64(f"alice@example.com{PASSWORD}".encode())],
    "empty user": [b"Proxy-Authorization: Basic " + _b64(f":{PASSWORD}".encode())],
    "empty token": [b"Proxy-Authorization: Basic "],
    "empty value": [b"Proxy-Authorization: "],
    "scheme only": [b"Proxy-Authorization: Basic"],
    "decoded bytes not utf-8": [b"Proxy-Authorization: Basic " + _b64(b"alice@example.com:\xff\xfe" + CANARY.encode())],
    "control character in user": [b"Proxy-Authorization: Basic " + _b64(f"alice@example.com\x00:{PASSWORD}".encode())],
    "wrong scheme": [b"Proxy-Authorization: Bearer " + _b64(f"alice@example.com:{PASSWORD}".encode())],
    "look-alike scheme": ["Proxy-Authorization: Ba\u017fic ".encode() + _b64(f"alice@example.com:{PASSWORD}".encode())],
    "wrong password": [b"Proxy-Authorization: Basic " + _b64(f"alice@example.com:{CANARY}".encode())],
    "unknown user": [b"Proxy-Authorization: Basic " + _b64(f"mallory@example.com:{PASSWORD}".encode())],
    "huge": [b"Proxy-Authorization: Basic " + _b64(b"alice@example.com:" + CANARY.encode() * 3000)],
    "duplicated, both valid": [GOOD, GOOD],
    "duplicated, valid then invalid": [GOOD, b"Proxy-Authorization: Basic \xe9"],
    "duplicated, other case": [GOOD, GOOD.replace(b"Proxy-Authorization", b"proxy-authorization")],
    "two credentials in one value": [GOOD + b", Basic " + _b64(f"hannah@example.com:{CANARY}".encode())],
}


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    root = tmp_path_factory.mktemp("bypass-auth")
    (root / "users").write_text(f"alice@example.com:{hash_password(PASSWORD)}\n")
    deployment = start_proxy(
        root,
        command=["proxy"],
        policies={},
        hosts=[HOST],
        extra_config=f"""identity:
  default_group: everyone
  proxy_auth:
    users_file: {root / "users"}
    required: true
  trusted_header:
    name: {HEADER}
    groups_name: {GROUPS}
    trusted_sources: [127.0.0.2/32]
""",
    )
    try:
        yield deployment
    finally:
        deployment.stop()


# -- raw HTTP/1.1 on sockets -------------------------------------------------------------------


def _head(lines: list[bytes]) -> bytes:
    return b"".join(line + b"\r\n" for line in lines) + b"\r\n"


def _read_response(sock: socket.socket) -> tuple[int, bytes, bytes]:
    """Status, head and body of one response (Content-Length, else until the peer closes)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1."), head[:200]
    length = None
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    if b"200 connection established" in head[:64].lower():
        return 200, head, b""
    while length is None or len(body) < length:
        try:
            chunk = sock.recv(65536)
        except (ssl.SSLError, ConnectionResetError):
            break
        if not chunk:
            break
        body += chunk
    return int(head.split(b" ", 2)[1]), head, body


def _connect(dep: ProxyDeployment, lines: list[bytes], source: str = "127.0.0.1") -> tuple[socket.socket, int, bytes]:
    """Send ``CONNECT chatgpt.com:443`` with ``lines`` as extra header lines; the socket stays open."""
    sock = socket.create_connection(("127.0.0.1", dep.proxy_port), timeout=30, source_address=(source, 0))
    sock.sendall(_head([f"CONNECT {HOST}:443 HTTP/1.1".encode(), f"Host: {HOST}:443".encode(), *lines]))
    status, head, body = _read_response(sock)
    return sock, status, head + b"\r\n\r\n" + body


def _probe(marker: str, lines: list[bytes], *, absolute: bool = False) -> bytes:
    target = f"https://{HOST}/bypass-probe/{marker}" if absolute else f"/bypass-probe/{marker}"
    return _head([f"GET {target} HTTP/1.1".encode(), f"Host: {HOST}".encode(), b"Connection: close", *lines])


def _inside(
    dep: ProxyDeployment, connect_lines: list[bytes], request: bytes, source: str = "127.0.0.1"
) -> tuple[int, bytes]:
    """CONNECT (must be accepted), TLS to chatgpt.com through the tunnel, one raw request."""
    sock, status, head = _connect(dep, connect_lines, source)
    assert status == 200, head[:300]
    context = ssl.create_default_context(cafile=str(dep.ca_cert))
    with context.wrap_socket(sock, server_hostname=HOST) as tls:
        tls.sendall(request)
        status, head, body = _read_response(tls)
    return status, head + b"\r\n\r\n" + body


def _absolute(dep: ProxyDeployment, request: bytes, source: str = "127.0.0.1") -> tuple[int, bytes]:
    """A plain-text request in absolute form (``GET https://chatgpt.com/...``) to the proxy."""
    with socket.create_connection(("127.0.0.1", dep.proxy_port), timeout=30, source_address=(source, 0)) as sock:
        sock.sendall(request)
        status, head, body = _read_response(sock)
    return status, head + b"\r\n\r\n" + body


def _upstream(dep: ProxyDeployment, marker: str) -> list[dict[str, Any]]:
    return [r for r in dep.received_requests() if marker in str(r["path"])]


def _marker() -> str:
    return f"m-{uuid.uuid4().hex}"


def _identity_like(headers: list[str]) -> set[str]:
    return {h for h in headers if h.strip().lower().replace("_", "-") in IDENTITY_NAMES}


# -- malformed proxy credentials -----------------------------------------------------------------


def test_good_credentials_go_through_every_way_in(dep: ProxyDeployment) -> None:
    """The positive control for everything below: the same requests with good credentials work."""
    marker = _marker()
    sock, status, _ = _connect(dep, [GOOD])
    sock.close()
    assert status == 200
    status, _ = _inside(dep, [GOOD], _probe(marker, []))
    assert status == 200 and len(_upstream(dep, marker)) == 1
    lower = [b"Proxy-Authorization: basic " + GOOD.split(b" ")[-1]]  # the scheme is case-insensitive
    status, _ = _absolute(dep, _probe(marker + "-abs", lower, absolute=True))
    assert status == 200 and len(_upstream(dep, marker + "-abs")) == 1


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_credentials_on_connect_are_a_407(dep: ProxyDeployment, case: str) -> None:
    sock, status, response = _connect(dep, MALFORMED[case])
    sock.close()
    assert status == 407, response[:300]
    assert b'proxy-authenticate: basic realm="promptfence"' in response.lower()


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_credentials_on_a_plain_request_are_a_407_and_never_reach_upstream(
    dep: ProxyDeployment, case: str
) -> None:
    marker = _marker()
    status, response = _absolute(dep, _probe(marker, MALFORMED[case], absolute=True))
    assert status == 407, response[:300]
    assert _upstream(dep, marker) == []


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_credentials_inside_an_authenticated_tunnel_are_a_407(dep: ProxyDeployment, case: str) -> None:
    """A tunnel opened with good credentials does not make bad ones on a request inside it good."""
    marker = _marker()
    status, response = _inside(dep, [GOOD], _probe(marker, MALFORMED[case]))
    assert status == 407, response[:300]
    assert _upstream(dep, marker) == []


# -- look-alike and duplicated identity headers ----------------------------------------------------

VARIANTS = [
    b"x_authenticated_user: hannah@example.com",
    b"X-AUTHENTICATED-USER: hannah@example.com",
    b"X_Authenticated_User: hannah@example.com",
    b"x-authenticated_user: hannah@example.com",
    b"X_AUTHENTICATED_GROUPS: hr",
    b"x-authenticated_groups: hr",
    b"Proxy_Authorization: " + GOOD.split(b": ", 1)[1],
]
# Those not merely the exact name in another case (HTTP names are case-insensitive: that one *is*
# the header, believed from the trusted address and counted as a second copy next to another).
LOOK_ALIKES = [
    v for v in VARIANTS if v.split(b":")[0].lower() not in (HEADER.lower().encode(), GROUPS.lower().encode())
]
CONTROL = b"X-Harmless_Probe: 1"  # an unrelated underscore header: upstream does see it


def test_identity_header_variants_never_reach_upstream_from_an_untrusted_address(dep: ProxyDeployment) -> None:
    marker = _marker()
    status, response = _inside(dep, [GOOD], _probe(marker, [*VARIANTS, CONTROL]))
    assert status == 200, response[:300]
    (seen,) = _upstream(dep, marker)
    assert "x-harmless_probe" in seen["headers"]  # the stand-in does record underscore names
    assert _identity_like(seen["headers"]) == set()
    marker = _marker()
    status, response = _absolute(dep, _probe(marker, [GOOD, *VARIANTS, CONTROL], absolute=True))
    assert status == 200, response[:300]
    (seen,) = _upstream(dep, marker)
    assert "x-harmless_probe" in seen["headers"] and _identity_like(seen["headers"]) == set()


def test_identity_header_variants_never_reach_upstream_from_the_trusted_address(dep: ProxyDeployment) -> None:
    marker = _marker()
    connect = [f"{HEADER}: hannah@example.com".encode()]
    status, response = _inside(dep, connect, _probe(marker, [*VARIANTS, CONTROL]), source="127.0.0.2")
    assert status == 200, response[:300]
    (seen,) = _upstream(dep, marker)
    assert "x-harmless_probe" in seen["headers"] and _identity_like(seen["headers"]) == set()
    marker = _marker()
    exact = [f"{HEADER}: hannah@example.com".encode(), f"{GROUPS}: hr".encode()]
    status, response = _absolute(dep, _probe(marker, [*exact, *LOOK_ALIKES], absolute=True), source="127.0.0.2")
    assert status == 200, response[:300]
    (seen,) = _upstream(dep, marker)
    assert _identity_like(seen["headers"]) == set()


@pytest.mark.parametrize("variant", [v for v in LOOK_ALIKES if b"USER" in v.upper()])
def test_a_variant_is_never_believed_as_identity_even_from_the_trusted_address(
    dep: ProxyDeployment, variant: bytes
) -> None:
    sock, status, response = _connect(dep, [variant], source="127.0.0.2")
    sock.close()
    assert status == 407, response[:300]
    marker = _marker()
    status, response = _absolute(dep, _probe(marker, [variant], absolute=True), source="127.0.0.2")
    assert status == 407, response[:300]
    assert _upstream(dep, marker) == []


DUPLICATES = {
    "same spelling": [f"{HEADER}: hannah@example.com".encode(), f"{HEADER}: hannah@example.com".encode()],
    "different values": [f"{HEADER}: hannah@example.com".encode(), f"{HEADER}: {CANARY}@example.com".encode()],
    "different case": [f"{HEADER}: hannah@example.com".encode(), f"{HEADER.lower()}: {CANARY}@example.com".encode()],
    "groups twice": [
        f"{HEADER}: hannah@example.com".encode(),
        f"{GROUPS}: hr".encode(),
        f"{GROUPS}: {CANARY}".encode(),
    ],
}


@pytest.mark.parametrize("case", list(DUPLICATES))
def test_a_duplicated_identity_header_is_refused(dep: ProxyDeployment, case: str) -> None:
    lines = DUPLICATES[case]
    sock, status, response = _connect(dep, lines, source="127.0.0.2")  # where the header is believed
    sock.close()
    assert status in (403, 407) and b"more than once" in response, response[:300]
    marker = _marker()
    status, response = _absolute(dep, _probe(marker, lines, absolute=True), source="127.0.0.2")
    assert status in (403, 407) and b"more than once" in response, response[:300]
    assert _upstream(dep, marker) == []
    marker = _marker()  # inside a tunnel authenticated by password, from an untrusted address
    status, response = _inside(dep, [GOOD], _probe(marker, lines))
    assert status in (403, 407) and b"more than once" in response, response[:300]
    assert _upstream(dep, marker) == []


def test_the_proxy_log_holds_no_credential_or_header_value(dep: ProxyDeployment) -> None:
    _connect(dep, DUPLICATES["different values"], source="127.0.0.2")[0].close()
    _connect(dep, MALFORMED["wrong password"])[0].close()
    log = dep.proxy_log.read_text(errors="replace")
    assert "flow=" in log  # the proxy does log the refusals
    assert CANARY not in log and "hannah@example.com" not in log
    assert GOOD.split(b" ")[-1].decode() not in log
    assert "Traceback" not in log  # no hook raised


def test_repeated_wrong_passwords_are_throttled_without_locking_out_other_sources(dep: ProxyDeployment) -> None:
    """Issue 13, item 5, through the real proxy: past the per-user limit (10 by default) the
    proxy answers 407 with Retry-After at once; the log says so without the password; a user
    at another address is unaffected."""
    guess = b"Proxy-Authorization: Basic " + _b64(f"eve@example.com:{CANARY}-guess".encode())
    answers = []
    for _ in range(12):
        sock, status, response = _connect(dep, [guess], source="127.0.0.9")
        sock.close()
        answers.append((status, response))
    assert all(status == 407 for status, _ in answers)
    assert all(b"retry-after" not in r.lower() for _, r in answers[:10])
    for _, response in answers[10:]:
        assert b"Retry-After: " in response and b"X-PromptFence: authentication-throttled" in response
    sock, status, _ = _connect(dep, [GOOD])
    sock.close()
    assert status == 200
    log = dep.proxy_log.read_text(errors="replace")
    assert "proxy authentication throttled (user)" in log and "source=127.0.0.9" in log
    assert CANARY not in log


# -- the users file is checked when the proxy starts ---------------------------------------------


@pytest.mark.parametrize(
    ("params", "why"),
    [
        ({"n": 2**10}, "weak"),  # cheap to brute-force
        ({"n": 2**14, "r": 1}, "weak"),
        ({"n": 2**20}, "memory"),  # more than scrypt's memory limit: every check would fail
    ],
)
def test_a_users_file_with_a_weak_or_oversized_hash_stops_the_proxy_naming_file_and_line(
    dep: ProxyDeployment, tmp_path: Path, params: dict[str, int], why: str
) -> None:
    users = tmp_path / "users"
    n = params["n"]
    r = params.get("r", 8)
    # an oversized hash is too costly to compute here: forge the line (its salt and key are never used)
    bad = f"$scrypt$n={n},r={r},p=1${'A' * 22}${'A' * 43}" if why == "memory" else hash_password("pw", n=n, r=r)
    users.write_text(f"# staff\nalice@example.com:{hash_password('pw')}\nbob@example.com:{bad}\n")
    config = tmp_path / "promptfence.yaml"
    text = dep.config.read_text().replace(str(dep.root / "users"), str(users))
    text = text.replace(f"listen_port: {dep.proxy_port}", f"listen_port: {free_port()}")
    config.write_text(text)
    result = subprocess.run(
        [proxy_python(), "-m", "promptfence", "proxy", "--config", str(config)],
        capture_output=True,
        text=True,
        env=dep.env,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"{users}:3: bob@example.com:" in result.stderr and why in result.stderr
    assert "AAAA" not in result.stderr  # the hash itself is not echoed
