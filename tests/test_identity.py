"""Identity: directory files, scrypt users, trusted header only from trusted sources, IP map, 407."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from mitmproxy import connection, http
from mitmproxy.test import tflow

from promptfence.errors import ConfigError
from proxy.identity import (
    METADATA_CLAIM,
    ConfiguredIdentity,
    IdentitySettings,
    IpMap,
    hash_password,
    load_directory,
    load_users_file,
    parse_networks,
    verify_password,
)

FAST = {"n": 2**10, "r": 8, "p": 1}  # tests only: production uses n=2**14


def _directory(tmp_path: Path) -> Path:
    path = tmp_path / "directory.yaml"
    path.write_text(
        "groups:\n  engineering: [Alice@Example.com]\n  hr: [hannah@example.com]\nusers:\n  hannah@example.com: finance\n"
    )
    return path


def test_yaml_directory_both_forms_and_case_insensitive_users(tmp_path: Path) -> None:
    directory = load_directory(_directory(tmp_path))
    assert directory.groups_for("alice@example.COM") == ("engineering",)
    assert directory.groups_for("hannah@example.com") == ("hr", "finance")
    assert directory.groups_for("nobody") is None
    assert directory.groups == {"engineering", "hr", "finance"}


def test_csv_directory_from_an_idp_export(tmp_path: Path) -> None:
    path = tmp_path / "export.csv"
    path.write_text(
        "\ufeffEmail,Display Name,Groups\nalice@example.com,Alice,engineering;product\nbob@example.com,Bob,hr\n"
    )
    directory = load_directory(path)
    assert directory.groups_for("ALICE@example.com") == ("engineering", "product")
    assert directory.groups_for("bob@example.com") == ("hr",)
    path.write_text("name,team\nalice,eng\n")
    with pytest.raises(ConfigError, match="user column") as info:
        load_directory(path)
    assert (info.value.source, info.value.line) == (str(path), 1)


def test_directory_errors_name_file_line_and_field(tmp_path: Path) -> None:
    path = tmp_path / "d.yaml"
    path.write_text("groups:\n  eng: alice\n")
    with pytest.raises(ConfigError) as info:
        load_directory(path)
    assert (info.value.line, info.value.field) == (2, "groups.eng")


def test_password_hashes_verify_and_reject() -> None:
    encoded = hash_password("correct horse", **FAST)
    assert encoded.startswith("$scrypt$n=1024,r=8,p=1$") and "correct" not in encoded
    assert verify_password("correct horse", encoded)
    assert not verify_password("wrong", encoded)
    assert not verify_password("correct horse", "$scrypt$garbage")
    assert hash_password("x", **FAST) != hash_password("x", **FAST)  # salted


def test_users_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"# comment\nalice@example.com:{hash_password('pw', **FAST)}\nbob:plaintext\n")
    with pytest.raises(ConfigError) as info:
        load_users_file(path)
    assert (info.value.line, info.value.field) == (3, "bob")


def test_ip_map_most_specific_wins_and_ipv4_mapped_addresses() -> None:
    ip_map = IpMap.from_mapping({"10.0.0.0/8": "office", "10.1.2.3": "kiosk"})
    assert ip_map.user_for("10.1.2.3") == "kiosk"
    assert ip_map.user_for("::ffff:10.9.9.9") == "office"
    assert ip_map.user_for("192.168.0.1") is None
    with pytest.raises(ConfigError, match="not an IP"):
        IpMap.from_mapping({"ten.zero": "x"})


# -- the resolver on flows ---------------------------------------------------------------------


def _settings(tmp_path: Path, **overrides: object) -> IdentitySettings:
    users = {
        "alice@example.com": hash_password("alice-pw", **FAST),
        "hannah@example.com": hash_password("hannah-pw", **FAST),
    }
    base: dict[str, object] = {
        "directory": load_directory(_directory(tmp_path)),
        "default_group": "everyone",
        "users": users,
        "auth_required": True,
        "header": "X-Authenticated-User",
        "groups_header": "X-Authenticated-Groups",
        "trusted_sources": parse_networks(["10.9.0.0/16"]),
        "ip_map": IpMap.from_mapping({"192.168.5.5": "kiosk@example.com"}),
    }
    base.update(overrides)
    return IdentitySettings(**base)  # type: ignore[arg-type]


def _flow(peer: str = "127.0.0.1", client: connection.Client | None = None, method: str = "POST") -> http.HTTPFlow:
    flow = tflow.tflow(client_conn=client)
    flow.client_conn.peername = (peer, 40000)
    flow.request.method = method
    return flow


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_proxy_auth_required_missing_or_wrong_is_a_407(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    for header in (None, _basic("alice@example.com", "nope"), _basic("mallory", "x"), "Basic !!!", "Bearer abc"):
        flow = _flow()
        if header is not None:
            flow.request.headers["Proxy-Authorization"] = header
        challenge = await resolver.admit(flow)
        assert challenge is not None and challenge.status == 407
        assert challenge.headers["Proxy-Authenticate"].startswith('Basic realm="PromptFence"')
        assert "Proxy-Authorization" not in flow.request.headers


async def test_proxy_auth_identifies_the_user_with_directory_groups_and_strips_the_header(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    flow = _flow()
    flow.request.headers["Proxy-Authorization"] = _basic("Alice@example.com", "alice-pw")
    assert await resolver.admit(flow) is None
    assert "Proxy-Authorization" not in flow.request.headers
    identity = resolver.identify(flow)
    assert (identity.user, identity.groups, identity.source) == ("alice@example.com", ("engineering",), "proxy_auth")


async def test_a_tunnel_authenticated_on_connect_covers_its_requests(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    connect = _flow(method="CONNECT")
    connect.request.headers["Proxy-Authorization"] = _basic("hannah@example.com", "hannah-pw")
    assert await resolver.admit(connect) is None
    inner = _flow(client=connect.client_conn)
    assert await resolver.admit(inner) is None
    assert resolver.identify(inner).groups == ("hr", "finance")
    other = _flow()  # another connection: no credentials, so challenged
    assert await resolver.admit(other) is not None


async def test_trusted_header_is_believed_only_from_trusted_sources_and_always_stripped(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    trusted = _flow(peer="10.9.1.1")
    trusted.request.headers["X-Authenticated-User"] = "hannah@example.com"
    trusted.request.headers["X-Authenticated-Groups"] = "hr; payroll"
    assert await resolver.admit(trusted) is None  # no 407: the upstream proxy authenticated
    identity = resolver.identify(trusted)
    assert (identity.user, identity.groups, identity.source) == (
        "hannah@example.com",
        ("hr", "payroll"),
        "trusted_header",
    )
    assert "X-Authenticated-User" not in trusted.request.headers
    assert "X-Authenticated-Groups" not in trusted.request.headers

    untrusted = _flow(peer="10.8.1.1")
    untrusted.request.headers["X-Authenticated-User"] = "hannah@example.com"
    assert (await resolver.admit(untrusted)) is not None  # ignored: still needs credentials
    assert "X-Authenticated-User" not in untrusted.request.headers


async def test_an_authenticated_user_cannot_borrow_another_identity_by_header(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    for peer in ("127.0.0.1", "10.9.1.1"):  # untrusted, and even trusted: credentials win
        flow = _flow(peer=peer)
        flow.request.headers["Proxy-Authorization"] = _basic("alice@example.com", "alice-pw")
        flow.request.headers["X-Authenticated-User"] = "hannah@example.com"
        flow.request.headers["X-Authenticated-Groups"] = "hr"
        assert await resolver.admit(flow) is None
        identity = resolver.identify(flow)
        assert (identity.user, identity.groups) == ("alice@example.com", ("engineering",))


async def test_ip_map_and_fallback_when_auth_is_optional(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path, auth_required=False))
    kiosk = _flow(peer="192.168.5.5")
    assert await resolver.admit(kiosk) is None
    assert (resolver.identify(kiosk).user, resolver.identify(kiosk).groups, resolver.identify(kiosk).source) == (
        "kiosk@example.com",
        ("everyone",),
        "ip_map",
    )
    anon = _flow(peer="172.16.0.9")
    assert await resolver.admit(anon) is None
    identity = resolver.identify(anon)
    assert (identity.user, identity.groups, identity.source) == ("ip:172.16.0.9", ("everyone",), "client_address")
    wrong = _flow(peer="172.16.0.9")  # optional auth, but wrong credentials are still refused
    wrong.request.headers["Proxy-Authorization"] = _basic("alice@example.com", "bad")
    assert await resolver.admit(wrong) is not None


def test_identify_without_admit_honours_only_what_the_request_proves(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path, auth_required=False))
    flow = _flow(peer="127.0.0.1")
    flow.request.headers["X-Authenticated-User"] = "hannah@example.com"
    assert resolver.identify(flow).source == "client_address"
    assert "X-Authenticated-User" not in flow.request.headers
    assert METADATA_CLAIM not in flow.metadata
