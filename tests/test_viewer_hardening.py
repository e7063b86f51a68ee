"""Issue 13, item 6: the viewer is safe to expose behind SSO.

Host allow-list (DNS rebinding), clamped limits, security headers on every response (errors
included), a CSRF-safe feedback post, the reporter from a trusted SSO header only, and a loud
warning on a non-loopback bind. Driven through aiohttp's test client against a real SQLite store.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from logs.sealing import KeyPair, write_key_pair
from logs.store import LogStore, Recipient
from logs.viewer import SECURITY_HEADERS, ViewerSettings, build_app, default_allowed_hosts
from promptfence.cli import viewer_cmd
from promptfence.config import Config, ViewerConfig
from promptfence.errors import ConfigError
from tests.support.logdb import make_record

SSO = "X-Authenticated-User"
BODY = json.dumps({"topic": "FINANCIAL", "verdict": "false_positive", "reporter": "mallory"})


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LogStore]:
    write_key_pair(KeyPair.generate(), tmp_path / "admin.key", tmp_path / "admin.pub")
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}", [Recipient.from_file(tmp_path / "admin.pub")])
    store.write(make_record("a prompt", topics={"FINANCIAL": 0.7}))
    yield store
    store.close()


async def _client(store: LogStore, settings: ViewerSettings | None = None) -> TestClient[Any, Any]:
    client: TestClient[Any, Any] = TestClient(TestServer(build_app(store, settings=settings), host="127.0.0.1"))
    await client.start_server()
    return client


@pytest.fixture
async def client(store: LogStore) -> AsyncIterator[TestClient[Any, Any]]:
    client = await _client(store)
    yield client
    await client.close()


def _feedback_path(store: LogStore) -> str:
    return f"/api/records/{store.find()[0].record_id}/feedback"


def _post_headers(client: TestClient[Any, Any], **extra: str) -> dict[str, str]:
    return {"Content-Type": "application/json", "X-PromptFence-Viewer": "1", **extra}


# -- Host allow-list -------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/", "/api/records", "/api/facets", "/static/app.js", "/nope"])
async def test_an_unlisted_host_is_refused_everywhere(client: TestClient[Any, Any], path: str) -> None:
    """A DNS-rebinding page (evil.example resolving to 127.0.0.1) sends its own name as Host."""
    response = await client.get(path, headers={"Host": f"evil.example:{client.port}"})
    assert response.status == 421
    assert "records" not in await response.text()
    ok = await client.get("/api/records", headers={"Host": f"localhost:{client.port}"})
    assert ok.status == 200


async def test_a_rebinding_page_cannot_post_feedback(client: TestClient[Any, Any], store: LogStore) -> None:
    origin = f"http://evil.example:{client.port}"
    response = await client.post(
        _feedback_path(store),
        data=BODY,
        headers=_post_headers(client, Host=f"evil.example:{client.port}", Origin=origin),
    )
    assert response.status == 421
    assert store.feedback_reports() == []


async def test_health_is_served_for_any_host(client: TestClient[Any, Any]) -> None:
    assert (await client.get("/healthz", headers={"Host": "10.1.2.3:8733"})).status == 200


def test_allowed_hosts_match_name_and_port() -> None:
    settings = ViewerSettings(allowed_hosts=("viewer.corp", "127.0.0.1:8733", "[::1]:8733"))
    assert settings.allows("viewer.corp") and settings.allows("VIEWER.corp:443") and settings.allows("viewer.corp.")
    assert settings.allows("127.0.0.1:8733") and settings.allows("[::1]:8733")
    assert not settings.allows("127.0.0.1:9999") and not settings.allows("127.0.0.1")
    assert not settings.allows("viewer.corp.evil.example") and not settings.allows("") and not settings.allows(None)
    assert not settings.allows("viewer.corp@evil.example") and not settings.allows("viewer.corp:x")
    with pytest.raises(ValueError, match="not a host name"):
        ViewerSettings(allowed_hosts=("http://viewer.corp/",))


def test_default_allowed_hosts_are_the_bind_address_and_loopback_with_the_port() -> None:
    assert default_allowed_hosts("127.0.0.1", 8733) == ("localhost:8733", "127.0.0.1:8733", "[::1]:8733")
    assert "10.0.0.5:9000" in default_allowed_hosts("10.0.0.5", 9000)
    assert not any(h.startswith("0.0.0.0") for h in default_allowed_hosts("0.0.0.0", 8733))


# -- limits ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("query", ["limit=-1", "offset=-1", "limit=abc", "offset=1e3", f"offset={10**10}"])
async def test_negative_or_garbled_limits_are_refused(client: TestClient[Any, Any], query: str) -> None:
    response = await client.get(f"/api/records?{query}")
    assert response.status == 400


async def test_a_huge_limit_is_clamped(
    client: TestClient[Any, Any], store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[tuple[int, int]] = []
    find = store.find

    def spy(*args: Any, limit: int, offset: int, **kwargs: Any) -> Any:
        asked.append((limit, offset))
        return find(*args, limit=limit, offset=offset, **kwargs)

    monkeypatch.setattr(store, "find", spy)
    assert (await client.get("/api/records?limit=1000000&offset=3")).status == 200
    assert (await client.get("/api/records")).status == 200
    assert asked == [(500, 3), (100, 0)]


# -- security headers on every response ------------------------------------------------------------


async def test_every_response_carries_the_security_headers(
    client: TestClient[Any, Any], store: LogStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "internal-detail-xyz"

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(secret)

    cases: list[tuple[str, str, dict[str, str], int]] = [
        ("GET", "/", {}, 200),
        ("GET", "/static/app.js", {}, 200),
        ("GET", "/api/records", {}, 200),
        ("GET", "/healthz", {}, 200),
        ("GET", "/nope", {}, 404),
        ("GET", "/static/missing.js", {}, 404),
        ("GET", "/static/../viewer.py", {}, 404),
        ("GET", "/api/records/none", {}, 404),
        ("DELETE", "/api/records", {}, 405),
        ("GET", "/api/records?limit=-1", {}, 400),
        ("GET", "/api/records", {"Host": "evil.example"}, 421),
        ("POST", _feedback_path(store), {"Content-Type": "application/json"}, 403),
        ("POST", _feedback_path(store), {"Content-Type": "text/plain"}, 415),
    ]
    for method, path, headers, status in cases:
        response = await client.request(method, path, headers=headers, data=BODY if method == "POST" else None)
        assert response.status in (status, 403 if status == 404 and ".." in path else status), (path, response.status)
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (method, path, name)
    monkeypatch.setattr(store, "facets", broken)
    response = await client.get("/api/facets")
    assert response.status == 500
    assert secret not in await response.text()
    assert all(response.headers.get(n) == v for n, v in SECURITY_HEADERS.items())


# -- feedback: CSRF-safe, reporter from SSO --------------------------------------------------------


async def test_feedback_needs_the_custom_header_and_a_matching_origin(
    client: TestClient[Any, Any], store: LogStore
) -> None:
    path = _feedback_path(store)
    here = f"http://127.0.0.1:{client.port}"
    refused = [
        {"Content-Type": "application/json"},  # no X-PromptFence-Viewer
        _post_headers(client, Origin="https://evil.example"),
        _post_headers(client, Origin="null"),
        _post_headers(client, Origin=f"http://localhost:{client.port}"),  # ours, but not this Host
        _post_headers(client, Origin=here, **{"Sec-Fetch-Site": "cross-site"}),
    ]
    for headers in refused:
        assert (await client.post(path, data=BODY, headers=headers)).status == 403, headers
    assert store.feedback_reports() == []
    ok = await client.post(
        path, data=BODY, headers=_post_headers(client, Origin=here, **{"Sec-Fetch-Site": "same-origin"})
    )
    assert ok.status == 201
    assert [r.reporter for r in store.feedback_reports()] == ["mallory"]  # no SSO configured: the body's


async def test_behind_a_tls_terminating_proxy_the_origin_is_checked_by_name(store: LogStore) -> None:
    settings = ViewerSettings(allowed_hosts=("viewer.corp",))
    client = await _client(store, settings)
    try:
        path = _feedback_path(store)
        ok = await client.post(
            path, data=BODY, headers=_post_headers(client, Host="viewer.corp", Origin="https://viewer.corp")
        )
        assert ok.status == 201
        bad = await client.post(
            path, data=BODY, headers=_post_headers(client, Host="viewer.corp", Origin="https://viewer.corp.evil")
        )
        assert bad.status == 403
    finally:
        await client.close()


def _sso(trusted: str) -> ViewerSettings:
    return ViewerSettings(identity_header=SSO, trusted_sources=(ipaddress.ip_network(trusted),))


async def test_the_reporter_comes_from_a_trusted_sso_header(store: LogStore) -> None:
    client = await _client(store, _sso("127.0.0.0/8"))
    try:
        path = _feedback_path(store)
        response = await client.post(path, data=BODY, headers=_post_headers(client, **{SSO: "alice@example.com"}))
        assert response.status == 201
        assert (await response.json())["reporter"] == "alice@example.com"  # not the body's "mallory"
        assert (await client.post(path, data=BODY, headers=_post_headers(client))).status == 403  # no identity
        twice = [("Content-Type", "application/json"), ("X-PromptFence-Viewer", "1"), (SSO, "a"), (SSO, "b")]
        assert (await client.post(path, data=BODY, headers=twice)).status == 403
        garbled = _post_headers(client, **{SSO: "x" * 400})
        assert (await client.post(path, data=BODY, headers=garbled)).status == 403
        assert [r.reporter for r in store.feedback_reports()] == ["alice@example.com"]
    finally:
        await client.close()


async def test_an_sso_header_from_an_untrusted_address_is_ignored(
    store: LogStore, caplog: pytest.LogCaptureFixture
) -> None:
    client = await _client(store, _sso("10.20.0.0/24"))
    try:
        response = await client.post(
            _feedback_path(store), data=BODY, headers=_post_headers(client, **{SSO: "alice@example.com"})
        )
        assert response.status == 403
        assert store.feedback_reports() == []
        assert "untrusted address 127.0.0.1" in caplog.text and "alice@example.com" not in caplog.text
    finally:
        await client.close()


# -- the command: settings and the exposure warning ------------------------------------------------


def test_a_non_loopback_bind_is_warned_about_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    served: list[tuple[web.Application, str, int]] = []
    monkeypatch.setattr(web, "run_app", lambda app, host, port, **kw: served.append((app, host, port)))
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path / 'home'}\nviewer:\n  host: 0.0.0.0\n  allowed_hosts: [viewer.corp]\n")
    assert viewer_cmd.run(argparse.Namespace(config=str(config), host=None, port=None)) == 0
    err = capsys.readouterr().err
    assert "WARNING" in err and "0.0.0.0" in err and "SSO" in err and "viewer.corp" in err
    assert served and served[0][1] == "0.0.0.0"
    assert viewer_cmd.run(argparse.Namespace(config=str(config), host="127.0.0.1", port=None)) == 0
    assert "WARNING" not in capsys.readouterr().err
    for host, loopback in (("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False)):
        assert viewer_cmd.is_loopback(host) is loopback
        assert (viewer_cmd.exposure_warning(host, ViewerSettings()) is None) is loopback


@pytest.mark.parametrize(
    ("section", "field"),
    [
        (ViewerConfig(identity_header=SSO), "viewer.trusted_sources"),
        (ViewerConfig(identity_header=SSO, trusted_sources=["not-a-net"]), "viewer.trusted_sources[0]"),
        (ViewerConfig(allowed_hosts=["https://viewer.corp/"]), "viewer.allowed_hosts"),
    ],
)
def test_bad_viewer_settings_are_config_errors(section: ViewerConfig, field: str) -> None:
    with pytest.raises(ConfigError) as caught:
        viewer_cmd.viewer_settings(Config(viewer=section), "127.0.0.1", 8733)
    assert caught.value.field == field


async def test_the_viewer_shows_the_proxys_drift_alarm(store: LogStore, tmp_path: Path) -> None:
    """Issue 16 item 3: the drift alarm is visible where analysts look, from the proxy's state file."""
    from proxy.drift import DriftMonitor, DriftSettings

    state = tmp_path / "drift-state.json"
    drift = DriftMonitor(DriftSettings(alarm_rate=0.5, window=10, min_observations=2), state)
    for _ in range(4):
        drift.answer("chatgpt", "chatgpt.conversation", decoded=False, unknown_shapes=1)
    drift.request("claude", "claude.completion", extracted=True)
    drift.write_state()
    client = await _client(store, ViewerSettings(drift_state_path=state))
    try:
        data = await (await client.get("/api/drift")).json()
        assert data["available"] is True
        alarms = [op["operation"] for op in data["operations"] if op["alarm"]]
        assert alarms == ["chatgpt.conversation"]
        state.write_text("{not json")
        broken = await (await client.get("/api/drift")).json()
        assert broken["available"] is False and broken["error"] == "ValueError"
        state.unlink()
        assert (await (await client.get("/api/drift")).json())["available"] is False
    finally:
        await client.close()
    index = (await _fetch_index(store))
    assert 'id="drift"' in index


async def _fetch_index(store: LogStore) -> str:
    client = await _client(store)
    try:
        return await (await client.get("/")).text()
    finally:
        await client.close()
