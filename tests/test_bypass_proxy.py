"""Bypass attempts through a real ``promptfence proxy`` over real TLS, sent the way an evasive
employee would: byte-exact requests on raw sockets (no client library "fixes" the path).

Every prompt here carries the SSN the stand-in inspector reports as PII (``SSN_MARK``) and a
nonce, so under the shipped default policy the only right outcomes are: the proxy answers it
itself (blocked, refused) and the nonce never reaches the stand-in upstream, or (for the cases
that must still reach the app) the nonce is upstream *and* a record holds it, inspected.
"""

from __future__ import annotations

import gzip
import json
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from logs.store import LogStore, StoredRecord
from proxy.catalogue import load_catalogue
from proxy.registry import EXTRACTORS
from proxy.wire.base import RequestData
from tests.support.deployment import GENAI_HOSTS, ProxyDeployment, start_proxy
from tests.support.standin import SSN_MARK

pytestmark = pytest.mark.slow

FIXTURES = Path(__file__).parent / "fixtures" / "apps"
HOSTS = [*GENAI_HOSTS, "other.example"]
CATALOGUE = load_catalogue()

FAIL_OPEN_POLICY = """\
policy: fail-open
description: fail-open for broken models; must not be fail-open for uninspectable requests
default: allow
on_error: allow
rules:
  - id: block-pii
    match: {topics: {PII: medium}}
    action: block
"""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def exchange(
    dep: ProxyDeployment, connect: str, request: bytes, *, sni: str | None = None, timeout: float = 30
) -> Reply:
    """CONNECT ``connect``:443 through the proxy, TLS with ``sni``, send ``request`` verbatim."""
    sock = socket.create_connection(("127.0.0.1", dep.proxy_port), timeout=timeout)
    try:
        sock.sendall(f"CONNECT {connect}:443 HTTP/1.1\r\nHost: {connect}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = sock.recv(4096)
            assert chunk, "proxy closed the CONNECT"
            head += chunk
        status = int(head.split(b" ", 2)[1])
        if status != 200:  # the tunnel itself was refused: nothing can have been forwarded in it
            return Reply(status, {"x-connect": "refused"}, b"")
        context = ssl.create_default_context(cafile=str(dep.ca_cert))
        context.check_hostname = False  # the SNI may deliberately differ from the CONNECT target
        with context.wrap_socket(sock, server_hostname=sni or connect) as tls:
            tls.sendall(request)
            data = b""
            while True:
                try:
                    chunk = tls.recv(65536)
                except (ssl.SSLError, ConnectionResetError):
                    break
                if not chunk:
                    break
                data += chunk
    finally:
        sock.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    assert lines[0].startswith("HTTP/"), f"no HTTP reply: {data[:200]!r}"
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    return Reply(int(lines[0].split()[1]), headers, body)


def http_request(method: str, target: str, host: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True)
class PromptRequest:
    """A fixture's request for one operation, with the SSN and a nonce put into its prompt."""

    fixture: str
    host: str
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    nonce: str


def _with_ssn(fixture: Path) -> PromptRequest | None:
    request = json.loads((fixture / "request.json").read_text())
    expected = json.loads((fixture / "expected.json").read_text())
    prompt = (expected.get("extraction") or {}).get("prompt") or ""
    word = next((w for w in prompt.split() if w.isalpha() and len(w) >= 4), None)
    body_file = fixture / "request.body"
    if word is None or not body_file.is_file():
        return None
    body = body_file.read_bytes()
    nonce = uuid.uuid4().hex[:12]
    marked = body.replace(word.encode(), f"{word} {SSN_MARK} n{nonce}".encode(), 1)
    if marked == body:
        return None
    path, _, query = request["path"].partition("?")
    headers = {k: v for k, v in request.get("headers", {}).items() if k.lower() not in ("host", "content-length")}
    candidate = PromptRequest(
        fixture.parent.name + "/" + fixture.name,
        request["host"],
        request["method"],
        path,
        query,
        headers,
        marked,
        nonce,
    )
    # Not vacuous: the app's own extractor must find the SSN in the marked body.
    match = CATALOGUE.match(candidate.host, candidate.method, request["path"])
    assert match is not None and match.operation.extractor is not None, candidate.fixture
    data = RequestData(marked, path, query, {k.lower(): v for k, v in headers.items()})
    assert SSN_MARK in EXTRACTORS[match.operation.extractor](data).prompt, candidate.fixture
    return candidate


PROMPT_REQUESTS = [r for f in sorted(FIXTURES.glob("*/*")) if f.is_dir() for r in [_with_ssn(f)] if r is not None]


def _respell(path: str) -> dict[str, str]:
    """Spellings of ``path`` an origin server routes like ``path``."""
    segments = path.strip("/").split("/")
    last = segments[-1]
    first = segments[0]
    encoded_last = "/".join([*segments[:-1], f"%{ord(last[0]):02x}{last[1:]}"])
    return {
        "trailing-slash": path + "/",
        "double-leading-slash": "/" + path,
        "double-inner-slash": "/" + "//".join(segments) if len(segments) > 1 else "//" + first,
        "case": "/" + "/".join([first.swapcase(), *segments[1:]]),
        "percent-encoded-letter": "/" + encoded_last,
        "double-percent-encoding": "/" + "/".join([*segments[:-1], f"%25{ord(last[0]):02x}{last[1:]}"]),
        "encoded-slash": "/" + "%2F".join(segments),
        "dot-segment": "/./" + "/".join(segments),
        "dot-dot-segment": "/x/../" + "/".join(segments),
        "matrix-params": path + ";x=1",
        "backslash": "/" + "\\".join(segments),
    }


VARIANTS = [(r, name, spelled) for r in PROMPT_REQUESTS for name, spelled in _respell(r.path).items()]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    dep = start_proxy(tmp_path_factory.mktemp("bypass"), command=["proxy"], policies={}, hosts=HOSTS)
    try:
        yield dep
    finally:
        dep.stop()


@pytest.fixture(scope="module")
def fail_open(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    """A proxy whose only policy fails open on detector errors."""
    dep = start_proxy(
        tmp_path_factory.mktemp("failopen"),
        command=["proxy"],
        policies={"fail-open.yaml": FAIL_OPEN_POLICY},
        hosts=HOSTS,
        with_default_policy=False,
    )
    try:
        yield dep
    finally:
        dep.stop()


def _upstream_saw(dep: ProxyDeployment, nonce: str) -> bool:
    return nonce in dep.received.read_text(encoding="utf-8", errors="replace")


def _records(dep: ProxyDeployment) -> list[StoredRecord]:
    store = LogStore(f"sqlite:///{dep.home / 'promptfence-logs.db'}", [])
    try:
        return store.find(limit=100000)
    finally:
        store.close()


def _record_with(dep: ProxyDeployment, nonce: str) -> StoredRecord | None:
    key = dep.home / "keys" / "admin.key"
    for record in reversed(_records(dep)):
        if nonce in record.open(key).prompt:
            return record
    return None


def _assert_stopped_and_recorded(dep: ProxyDeployment, reply: Reply, nonce: str) -> StoredRecord:
    assert reply.headers.get("x-promptfence") == "blocked", (reply.status, reply.headers)
    assert not _upstream_saw(dep, nonce)
    record = _record_with(dep, nonce)
    assert record is not None, "a blocked prompt leaves a record"
    assert record.metadata["decision"]["action"] == "block"
    return record


def test_every_operation_has_a_prompt_request_to_respell() -> None:
    covered = {r.fixture.split("/")[0] for r in PROMPT_REQUESTS}
    assert covered == {"chatgpt", "claude", "gemini", "perplexity"}
    assert len(PROMPT_REQUESTS) >= 10


@pytest.mark.parametrize(
    ("request_", "variant", "path"), VARIANTS, ids=[f"{r.fixture}-{name}" for r, name, _ in VARIANTS]
)
def test_respelled_paths_are_inspected_and_blocked(
    deployment: ProxyDeployment, request_: PromptRequest, variant: str, path: str
) -> None:
    target = path + (f"?{request_.query}" if request_.query else "")
    raw = http_request(request_.method, target, request_.host, request_.body, request_.headers)
    reply = exchange(deployment, request_.host, raw)
    _assert_stopped_and_recorded(deployment, reply, request_.nonce)


@pytest.mark.parametrize("method", ["PUT", "PATCH", "DELETE"])
def test_other_methods_on_prompt_paths_are_inspected_as_unknown(deployment: ProxyDeployment, method: str) -> None:
    for request_ in PROMPT_REQUESTS[:4]:
        nonce = uuid.uuid4().hex[:12]
        body = request_.body.replace(request_.nonce.encode(), nonce.encode())
        target = request_.path + (f"?{request_.query}" if request_.query else "")
        reply = exchange(deployment, request_.host, http_request(method, target, request_.host, body, request_.headers))
        record = _assert_stopped_and_recorded(deployment, reply, nonce)
        assert record.metadata["operation"] == "Unknown"


def test_unmapped_path_with_text_is_inspected_and_recorded(deployment: ProxyDeployment) -> None:
    nonce = uuid.uuid4().hex[:12]
    body = json.dumps({"deeply": {"nested": [{"note": f"customer SSN {SSN_MARK} n{nonce}"}]}}).encode()
    raw = http_request("POST", "/backend-api/brand-new-endpoint", "chatgpt.com", body, {"Content-Type": "text/plain"})
    record = _assert_stopped_and_recorded(deployment, exchange(deployment, "chatgpt.com", raw), nonce)
    assert record.metadata["operation_id"] == "chatgpt.unknown"
    assert record.metadata["path_shape"] == "/backend-api/brand-new-endpoint"  # where the catalogue lags
    clean_nonce = uuid.uuid4().hex[:12]
    clean = json.dumps({"note": f"hello n{clean_nonce}"}).encode()
    raw = http_request(
        "POST", "/backend-api/brand-new-endpoint", "chatgpt.com", clean, {"Content-Type": "application/json"}
    )
    assert exchange(deployment, "chatgpt.com", raw).status == 200
    assert _upstream_saw(deployment, clean_nonce)
    forwarded = _record_with(deployment, clean_nonce)
    assert forwarded is not None and forwarded.metadata["operation"] == "Unknown"
    assert forwarded.metadata["detectors_run"], "forwarded only after inspection"


def _chatgpt_body(text: str) -> bytes:
    return json.dumps(
        {
            "action": "next",
            "messages": [
                {"id": "m-1", "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
            ],
            "model": "auto",
        }
    ).encode()


@pytest.mark.parametrize(
    ("connect", "sni", "target", "host"),
    [
        ("chatgpt.com", "chatgpt.com", "/backend-api/conversation", "other.example"),
        ("chatgpt.com", "chatgpt.com", "https://other.example/backend-api/conversation", "other.example"),
        ("chatgpt.com", "chatgpt.com", "https://other.example/backend-api/conversation", "chatgpt.com"),
        ("other.example", "other.example", "/backend-api/conversation", "chatgpt.com"),
        ("other.example", "chatgpt.com", "/backend-api/conversation", "other.example"),
        ("127.0.0.1", "chatgpt.com", "/backend-api/conversation", "127.0.0.1"),
    ],
    ids=["host-header", "absolute-form", "absolute-form-host-agrees", "tunnel-elsewhere", "sni-only", "ip-tunnel"],
)
def test_a_request_that_names_a_catalogue_host_anywhere_is_inspected_or_refused(
    deployment: ProxyDeployment, connect: str, sni: str, target: str, host: str
) -> None:
    nonce = uuid.uuid4().hex[:12]
    raw = http_request(
        "POST", target, host, _chatgpt_body(f"SSN {SSN_MARK} n{nonce}"), {"Content-Type": "application/json"}
    )
    reply = exchange(deployment, connect, raw, sni=sni)
    stopped = reply.headers.get("x-promptfence") in ("blocked", "misdirected") or "x-connect" in reply.headers
    assert stopped, (reply.status, reply.headers)
    assert not _upstream_saw(deployment, nonce)


def test_host_spelling_variants_still_route_to_the_app(deployment: ProxyDeployment) -> None:
    for host in ("CHATGPT.COM", "chatgpt.com.", "chatgpt.com:443", "ChatGPT.com.:443"):
        nonce = uuid.uuid4().hex[:12]
        raw = http_request(
            "POST",
            "/backend-api/conversation",
            host,
            _chatgpt_body(f"SSN {SSN_MARK} n{nonce}"),
            {"Content-Type": "application/json"},
        )
        reply = exchange(deployment, "chatgpt.com", raw)
        assert reply.headers.get("x-promptfence") == "blocked", host
        assert not _upstream_saw(deployment, nonce)


@pytest.mark.parametrize(
    ("marker", "why"),
    [
        ("empty", "inspector: answer missing field topics"),
        ("noruns", "inspector: answer missing runs for presidio, code, secrets, intent, intent_multilingual, neighbours"),
        ("http500", "inspector: inspector answered HTTP 500"),
        ("notjson", "inspector: answer is not JSON"),
        ("badscore", "inspector: answer field topics.PII.score is not a number"),
    ],
)
def test_a_broken_inspector_answer_never_opens_the_gate(deployment: ProxyDeployment, marker: str, why: str) -> None:
    nonce = uuid.uuid4().hex[:12]
    raw = http_request(
        "POST",
        "/backend-api/conversation",
        "chatgpt.com",
        _chatgpt_body(f"SSN {SSN_MARK} [[answer:{marker}]] n{nonce}"),
        {"Content-Type": "application/json"},
    )
    record = _assert_stopped_and_recorded(deployment, exchange(deployment, "chatgpt.com", raw), nonce)
    assert record.metadata["detectors_failed"] == ["inspector"]
    assert record.metadata["decision"]["rule_ids"] == ["default:on_error"]
    assert why in record.metadata["decision"]["reason"], record.metadata["decision"]["reason"]
    assert record.metadata["detector_errors"]["inspector"]["status"] in ("invalid_output", "unavailable")
    metadata = json.dumps(record.metadata)
    assert SSN_MARK not in metadata and nonce not in metadata  # says what was wrong, never the prompt


def test_invalid_unicode_is_inspected_and_recorded(deployment: ProxyDeployment) -> None:
    nonce = uuid.uuid4().hex[:12]
    body = (
        '{"action":"next","messages":[{"author":{"role":"user"},"content":{"content_type":"text",'
        f'"parts":["SSN {SSN_MARK} \\ud800 n{nonce} \\udfff"]}}}}]}}'
    ).encode()
    raw = http_request("POST", "/backend-api/conversation", "chatgpt.com", body, {"Content-Type": "application/json"})
    record = _assert_stopped_and_recorded(deployment, exchange(deployment, "chatgpt.com", raw), nonce)
    assert any("invalid code points" in note for note in record.metadata["inspection_notes"])


def _uninspectable_bodies(nonce: str) -> dict[str, tuple[bytes, dict[str, str]]]:
    prompt = f"SSN {SSN_MARK} n{nonce}"
    body = _chatgpt_body(prompt)
    json_type = {"Content-Type": "application/json"}
    deep = (
        '{"action":"next","messages":[{"content":{"parts":["' + prompt + '"]}}],"x":' + "[" * 3000 + "]" * 3000 + "}"
    ).encode()
    return {
        "oversize": (_chatgpt_body(prompt + " " + "A" * (9 * 1024 * 1024)), json_type),
        "unknown-encoding": (body, {**json_type, "Content-Encoding": "x-pf-rot"}),
        "bad-gzip": (b"\x1f\x8b\x08\x00garbage" + body, {**json_type, "Content-Encoding": "gzip"}),
        "too-many-encodings": (
            gzip.compress(gzip.compress(gzip.compress(gzip.compress(body)))),
            {**json_type, "Content-Encoding": "gzip, gzip, gzip, gzip"},
        ),
        "gzip-bomb": (gzip.compress(body + b" " * (64 * 1024 * 1024)), {**json_type, "Content-Encoding": "gzip"}),
        "deep-json": (deep, json_type),
        "huge-number": (body[:-1] + b',"n":' + b"9" * 5000 + b"}", json_type),
    }


@pytest.mark.parametrize(
    "case", ["oversize", "unknown-encoding", "bad-gzip", "too-many-encodings", "gzip-bomb", "deep-json", "huge-number"]
)
def test_uninspectable_requests_are_blocked_even_when_on_error_allows(fail_open: ProxyDeployment, case: str) -> None:
    nonce = uuid.uuid4().hex[:12]
    body, headers = _uninspectable_bodies(nonce)[case]
    raw = http_request("POST", "/backend-api/conversation", "chatgpt.com", body, headers)
    reply = exchange(fail_open, "chatgpt.com", raw, timeout=60)
    assert reply.headers.get("x-promptfence") == "blocked", (case, reply.status)
    assert not _upstream_saw(fail_open, nonce)
    # A blocked request's record is written by the recorder's thread: under load it can land a
    # moment after the block reply.
    deadline = time.monotonic() + 30
    while True:
        records = [
            r for r in _records(fail_open) if "on_uninspectable" in " ".join(r.metadata["decision"]["rule_ids"])
        ]
        if records or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert records, "the record names the uninspectable rule"
    assert any(r.metadata["decision"]["reason"].startswith("uninspectable: ") for r in records)


def test_nested_gzip_is_decoded_and_inspected_not_waved_through(fail_open: ProxyDeployment) -> None:
    nonce = uuid.uuid4().hex[:12]
    body = gzip.compress(gzip.compress(_chatgpt_body(f"SSN {SSN_MARK} n{nonce}")))
    raw = http_request(
        "POST",
        "/backend-api/conversation",
        "chatgpt.com",
        body,
        {"Content-Type": "application/json", "Content-Encoding": "gzip, gzip"},
    )
    reply = exchange(fail_open, "chatgpt.com", raw)
    record = _assert_stopped_and_recorded(fail_open, reply, nonce)
    assert record.metadata["decision"]["rule_ids"] == ["block-pii"]  # inspected, found, blocked


def test_fail_open_still_forwards_a_clean_prompt_after_inspection(fail_open: ProxyDeployment) -> None:
    nonce = uuid.uuid4().hex[:12]
    raw = http_request(
        "POST",
        "/backend-api/conversation",
        "chatgpt.com",
        _chatgpt_body(f"a haiku n{nonce}"),
        {"Content-Type": "application/json"},
    )
    assert exchange(fail_open, "chatgpt.com", raw).status == 200
    assert _upstream_saw(fail_open, nonce)
    record = _record_with(fail_open, nonce)
    assert record is not None and record.metadata["decision"]["action"] == "allow"
    assert record.metadata["decision"]["message"] == ""  # an allowed record says nothing about blocking


@pytest.mark.parametrize(
    "hide",
    [
        lambda text: {"messages": [{"author": {"role": "assistant"}, "content": {"parts": [text]}}]},
        lambda text: {"messages": [{"author": {"role": "user"}, "content": {"parts": ["hi"]}}], "system_hints": [text]},
        lambda text: {"messages": [], "metadata": {"custom_instructions": {"about_user": text}}},
    ],
    ids=["assistant-role", "unmodelled-list", "nested-metadata"],
)
def test_text_in_fields_the_extractor_does_not_model_is_inspected(deployment: ProxyDeployment, hide: object) -> None:
    nonce = uuid.uuid4().hex[:12]
    body = {"action": "next", "model": "auto", **hide(f"SSN {SSN_MARK} n{nonce}")}  # type: ignore[operator]
    raw = http_request(
        "POST",
        "/backend-api/conversation",
        "chatgpt.com",
        json.dumps(body).encode(),
        {"Content-Type": "application/json"},
    )
    record = _assert_stopped_and_recorded(deployment, exchange(deployment, "chatgpt.com", raw), nonce)
    assert "other request fields inspected with the prompt" in record.metadata["inspection_notes"]
