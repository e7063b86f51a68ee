"""Issue 6 through the real proxy: identities, the shipped guardrails, warn, redact, hot reload.

One ``promptfence proxy`` (real mitmdump over real TLS, via tests.support.deployment) in front
of the HTTPS stand-in and its stand-in inspector (topics come from ``[[topic:NAME=score]]``
markers in the prompt). Proxy authentication is required; the trusted identity header is
believed only from 127.0.0.2, so connections from 127.0.0.1 are untrusted.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from policies.policy import EXAMPLES_DIR
from proxy.identity import hash_password
from tests.support.deployment import ProxyDeployment, start_proxy
from tests.support.procs import wait_for

pytestmark = pytest.mark.slow

CANARY = f"canary-{uuid.uuid4().hex}"
LIVE_V1 = """policy: live
default: allow
on_error: block
rules:
  - id: warn-code
    match: {operations: SendPrompt, topics: {SOURCE_CODE: medium}}
    action: warn
    message: "This looks like source code ({topics})."
  - id: redact-pii
    match: {apps: chatgpt, operations: SendPrompt, topics: {PII: medium}}
    action: redact
"""
LIVE_V2 = (
    LIVE_V1
    + """  - id: block-customer-data
    match: {topics: {CUSTOMER_DATA: low}}
    action: block
    message: "Customer data stays in the CRM."
"""
)
BROKEN = LIVE_V2.replace("action: block\n", "action: blokc\n")


@pytest.fixture(scope="module")
def dep(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyDeployment]:
    root = tmp_path_factory.mktemp("e2e-policy")
    (root / "directory.yaml").write_text((EXAMPLES_DIR / "identity" / "directory.yaml").read_text())
    (root / "users").write_text(
        "".join(
            f"{user}:{hash_password(f'{user}-pw')}\n" for user in ("alice@example.com", "hannah@example.com")
        )
    )
    deployment = start_proxy(
        root,
        command=["proxy"],
        policies={
            "block-pii-requests.yaml": (EXAMPLES_DIR / "block-pii-requests.yaml").read_text(),
            "block-chatgpt-share.yaml": (EXAMPLES_DIR / "block-chatgpt-share.yaml").read_text(),
            "live.yaml": LIVE_V1,
        },
        hosts=["chatgpt.com"],
        with_default_policy=False,
        extra_config=f"""identity:
  directory: {root / "directory.yaml"}
  default_group: everyone
  proxy_auth:
    users_file: {root / "users"}
    required: true
  trusted_header:
    name: X-Authenticated-User
    trusted_sources: [127.0.0.2/32]
""",
    )
    try:
        yield deployment
    finally:
        deployment.stop()


def _prompt(text: str) -> dict[str, Any]:
    return {
        "action": "next",
        "messages": [
            {"id": str(uuid.uuid4()), "author": {"role": "user"}, "content": {"content_type": "text", "parts": [text]}}
        ],
        "parent_message_id": "client-created-root",
        "model": "auto",
    }


def _basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{user}-pw".encode()).decode()


def _send(
    dep: ProxyDeployment,
    payload: dict[str, Any],
    *,
    user: str | None = "alice@example.com",
    path: str = "/backend-api/f/conversation",
    headers: dict[str, str] | None = None,
    connect_headers: dict[str, str] | None = None,
    source: str = "127.0.0.1",
) -> tuple[int, http.client.HTTPResponse, str]:
    context = ssl.create_default_context(cafile=str(dep.ca_cert))
    conn = http.client.HTTPSConnection(
        "127.0.0.1", dep.proxy_port, timeout=30, context=context, source_address=(source, 0)
    )
    tunnel = dict(connect_headers or {})
    if user is not None:
        tunnel["Proxy-Authorization"] = _basic(user)
    conn.set_tunnel("chatgpt.com", 443, headers=tunnel)
    try:
        conn.request(
            "POST", path, body=json.dumps(payload), headers={"Content-Type": "application/json", **(headers or {})}
        )
        resp = conn.getresponse()
        body = resp.read().decode("utf-8", "replace")
        return resp.status, resp, body
    finally:
        conn.close()


def _upstream_saw(dep: ProxyDeployment, marker: str) -> list[dict[str, Any]]:
    return [r for r in dep.received_requests() if marker in str(r.get("body"))]


def _records(dep: ProxyDeployment) -> list[dict[str, Any]]:
    result = dep.cli("logs", "list", "--json", "--limit", "500")
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


def _record_with(dep: ProxyDeployment, predicate: Any, what: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []

    def ready() -> bool:
        found[:] = [r for r in _records(dep) if predicate(r)]
        return bool(found)

    wait_for(ready, 30, what)
    return found[0]


def test_no_or_wrong_credentials_get_407_with_a_challenge(dep: ProxyDeployment) -> None:
    plain = http.client.HTTPConnection("127.0.0.1", dep.proxy_port, timeout=30)
    plain.request("GET", "http://example.invalid/")
    resp = plain.getresponse()
    resp.read()
    plain.close()
    assert resp.status == 407 and resp.headers["Proxy-Authenticate"].startswith('Basic realm="PromptFence"')
    for user in (None, "mallory@example.com"):
        with pytest.raises(OSError, match="407"):
            _send(dep, _prompt("hello"), user=user)


def test_the_pii_request_guardrail_applies_per_group(dep: ProxyDeployment) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    text = f"Tell me Jane Doe's address and date of birth. [[topic:PII_REQUEST=0.9]] {marker} {CANARY}"
    status, resp, body = _send(dep, _prompt(text), user="alice@example.com")  # engineering
    assert status == 200 and resp.headers["X-PromptFence"] == "blocked"
    assert "only HR may request" in body and CANARY not in body
    assert _upstream_saw(dep, marker) == []
    status, resp, body = _send(dep, _prompt(text), user="hannah@example.com")  # hr
    assert status == 200 and resp.headers.get("X-PromptFence") is None and "Stand-in answer" in body
    assert len(_upstream_saw(dep, marker)) == 1


def test_the_identity_header_from_an_untrusted_address_changes_nothing(dep: ProxyDeployment) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    text = f"Who lives at 12 Elm Street? [[topic:PII_REQUEST=0.9]] {marker}"
    claim = {"X-Authenticated-User": "hannah@example.com"}
    status, resp, _ = _send(dep, _prompt(text), user="alice@example.com", headers=claim, connect_headers=claim)
    assert status == 200 and resp.headers["X-PromptFence"] == "blocked"  # still alice (engineering)
    assert _upstream_saw(dep, marker) == []
    # a harmless prompt with the header goes upstream without it, and without the credentials
    clean = f"clean-{uuid.uuid4().hex}"
    status, resp, _ = _send(dep, _prompt(clean), user="alice@example.com", headers=claim)
    assert status == 200
    (seen,) = _upstream_saw(dep, clean)
    assert "x-authenticated-user" not in seen["headers"] and "proxy-authorization" not in seen["headers"]
    record = _record_with(
        dep,
        lambda r: (
            r.get("prompt_hmac")
            and r["user"] == "alice@example.com"
            and r["decision"]["action"] == "block"
            and r["identity_source"] == "proxy_auth"
        ),
        "alice's blocked record",
    )
    assert record["groups"] == ["engineering"]
    # without credentials, the header from an untrusted address is not an identity at all
    with pytest.raises(OSError, match="407"):
        _send(dep, _prompt(text), user=None, headers=claim, connect_headers=claim)
    # from the trusted address, the same header is the identity (no credentials needed)
    status, resp, _ = _send(dep, _prompt(text), user=None, headers=claim, connect_headers=claim, source="127.0.0.2")
    assert status == 200 and resp.headers.get("X-PromptFence") is None
    assert len(_upstream_saw(dep, marker)) == 1


def test_sharing_a_chatgpt_conversation_is_blocked(dep: ProxyDeployment) -> None:
    status, resp, body = _send(
        dep,
        {"conversation_id": "c-1", "current_node_id": "n-1", "is_anonymous": True},
        path="/backend-api/share/create",
    )
    assert status == 403 and resp.headers["X-PromptFence"] == "blocked"
    assert "share links are public" in json.loads(body)["detail"]["message"]


def test_redact_replaces_emails_before_the_prompt_leaves(dep: ProxyDeployment) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    status, _, _ = _send(dep, _prompt(f"[[pii-spans]] Write to jane.roe@example.com today {marker}"))
    assert status == 200
    (seen,) = _upstream_saw(dep, marker)
    assert "jane.roe@example.com" not in seen["body"] and "Write to [EMAIL_ADDRESS] today" in seen["body"]
    record = _record_with(dep, lambda r: r["decision"].get("outcome") == "redacted", "a redacted record")
    assert record["decision"]["redacted"] == {"EMAIL_ADDRESS": 1}
    assert "jane.roe" not in json.dumps(record)


def test_warn_then_identical_resend_proceeds_and_is_recorded(dep: ProxyDeployment) -> None:
    marker = f"m-{uuid.uuid4().hex}"
    text = f"def main(): pass [[topic:SOURCE_CODE=0.9]] {marker}"
    status, resp, body = _send(dep, _prompt(text))
    assert resp.headers["X-PromptFence"] == "warned" and "send the same request again" in body
    assert _upstream_saw(dep, marker) == []
    status, resp, body = _send(dep, _prompt(text))
    assert status == 200 and resp.headers.get("X-PromptFence") is None and "Stand-in answer" in body
    assert len(_upstream_saw(dep, marker)) == 1
    record = _record_with(
        dep, lambda r: r["decision"].get("outcome") == "proceeded after warning", "the resend's record"
    )
    assert record["decision"]["action"] == "warn" and record["decision"]["rule_ids"] == ["warn-code"]


def test_hot_reload_applies_to_the_next_request_and_a_broken_edit_keeps_the_last_good_set(
    dep: ProxyDeployment,
) -> None:
    live = dep.root / "live.yaml"
    text = "[[topic:CUSTOMER_DATA=0.9]] Summarise the Acme renewal."
    # one connection stays open across the edits: reloading never drops it
    context = ssl.create_default_context(cafile=str(dep.ca_cert))
    conn = http.client.HTTPSConnection("127.0.0.1", dep.proxy_port, timeout=30, context=context)
    conn.set_tunnel("chatgpt.com", 443, headers={"Proxy-Authorization": _basic("alice@example.com")})

    def send() -> http.client.HTTPResponse:
        conn.request(
            "POST",
            "/backend-api/f/conversation",
            body=json.dumps(_prompt(text)),
            headers={"Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        resp.read()
        return resp

    try:
        assert send().headers.get("X-PromptFence") is None
        live.write_text(LIVE_V2)
        assert send().headers["X-PromptFence"] == "blocked"  # the very next request
        live.write_text(BROKEN)
        assert send().headers["X-PromptFence"] == "blocked"  # the last good set still runs
        assert dep.proxy.poll() is None
        wait_for(lambda: "policy reload failed" in dep.proxy_log.read_text(), 10, "the reload error in the log")
        logged = dep.proxy_log.read_text()
        assert f"{live}:14:5: rules[2].action: unknown action" in logged
        live.write_text(LIVE_V1)
        time.sleep(0.01)
        assert send().headers.get("X-PromptFence") is None
    finally:
        conn.close()


def test_no_prompt_text_in_the_proxy_log(dep: ProxyDeployment) -> None:
    wait_for(lambda: any(r["user"] == "hannah@example.com" for r in _records(dep)), 30, "records")
    log = dep.proxy_log.read_text()
    assert CANARY not in log and "jane.roe" not in log and "Acme renewal" not in log
    assert "flow=" in log  # the proxy does log, just never the text


def test_explain_a_logged_request_against_the_current_policies(dep: ProxyDeployment) -> None:
    record = _record_with(
        dep, lambda r: r["decision"]["rule_ids"] == ["block-customer-data"], "the hot-reloaded rule's record"
    )
    result = dep.cli("policy", "explain", "--record", record["record_id"], "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["identity"]["user"] == "alice@example.com" and data["identity"]["groups"] == ["engineering"]
    assert data["inspection"]["topics"]["CUSTOMER_DATA"]["confidence"] == "high"
    # live.yaml is back to V1, so the rule is gone and the same request is allowed today
    assert data["decision"]["action"] == "allow"
    assert "block-customer-data" not in json.dumps(data["policies"])
