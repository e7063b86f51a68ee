"""Identity: directory files, scrypt users, trusted header only from trusted sources, IP map, 407."""

from __future__ import annotations

import base64
import hmac
import io
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
    PasswordChecker,
    ScryptHash,
    hash_password,
    load_directory,
    load_users_file,
    parse_basic,
    parse_networks,
    verify_password,
)

FAST = {"n": 2**10, "r": 8, "p": 1}  # tests only: production uses n=2**14
STRONG = hash_password("pw")  # the default parameters: the weakest a users file accepts


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
    path.write_text(f"# comment\nalice@example.com:{STRONG}\nbob:plaintext\n")
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


# -- issue 11 item 8: authentication cannot be skipped -------------------------------------------


def _forged(n: int, r: int = 8, p: int = 1, salt: bytes = b"s" * 16, key: bytes = b"k" * 32) -> str:
    """A hash line with any parameters, without paying for scrypt (its key never matches)."""
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(key)}"


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    ("encoded", "why"),
    [
        (_forged(2**10), "too weak"),
        (_forged(2**14, r=4), "too weak"),
        (_forged(2**14, p=0), "out of range"),
        (_forged(3 * 2**13), "out of range"),  # not a power of two
        (_forged(2**20), "MiB of memory"),  # more than scrypt's memory limit
        (_forged(2**14, r=64), "MiB of memory"),
        (_forged(2**15, p=16), "cost more than"),  # within memory, but seconds per attempt
        (_forged(2**14, salt=b"s" * 8), "salt is 8 bytes"),
        (_forged(2**14, key=b"k" * 16), "key is 16 bytes"),
        (_forged(2**14, key=b"k" * 70), "longer than 64 bytes"),
        ("$scrypt$n=\u0661\u0666\u0663\u0668\u0664,r=8,p=1$" + _b64(b"s" * 16) + "$" + _b64(b"k" * 32), "not a"),
        ("$scrypt$n=" + "9" * 5000 + ",r=8,p=1$" + _b64(b"s" * 16) + "$" + _b64(b"k" * 32), "not a"),
        ("$scrypt$n=16384,r=8,p=1$!!!!$" + _b64(b"k" * 32), "not a"),
        ("$scrypt$n=16384,r=8,p=1$" + _b64(b"s" * 16) + "$" + _b64(b"k" * 32) + "$extra", "not a"),
        ("$scrypt$n=+16384,r=8,p=1$" + _b64(b"s" * 16) + "$" + _b64(b"k" * 32), "not a"),
        ("$scrypt$n=16384,r=8,p=1$" + "A" * 5 + "$" + _b64(b"k" * 32), "not base64"),
    ],
)
def test_users_file_rejects_weak_oversized_and_garbled_hashes_naming_file_and_line(
    tmp_path: Path, encoded: str, why: str
) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice@example.com:{STRONG}\n\n# bob below\nbob@example.com: {encoded}\n")
    with pytest.raises(ConfigError, match=why) as info:
        load_users_file(path)
    assert (info.value.source, info.value.line, info.value.field) == (str(path), 4, "bob@example.com")
    assert encoded.split("$")[-1] not in str(info.value)  # the hash is never echoed


def test_users_file_accepts_the_default_and_stronger_hashes(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"alice@example.com:{STRONG}\nbob:{_forged(2**15, p=2)}\ncarol:{_forged(2**14, key=b'k' * 64)}\n")
    assert set(load_users_file(path)) == {"alice@example.com", "bob", "carol"}


def test_users_file_rejects_a_user_listed_twice_or_with_control_characters(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"Alice@example.com:{STRONG}\nalice@EXAMPLE.com:{STRONG}\n")
    with pytest.raises(ConfigError, match="already listed on line 1") as info:
        load_users_file(path)
    assert info.value.line == 2
    path.write_text(f"alice\x00@example.com:{STRONG}\n")
    with pytest.raises(ConfigError, match="control characters") as info:
        load_users_file(path)
    assert info.value.line == 1


def test_verifying_against_an_oversized_or_garbled_hash_is_false_never_an_exception() -> None:
    for encoded in (_forged(2**20), _forged(2**14, r=64), "$scrypt$n=16384,r=8,p=1$\u00e9$x", "", "$scrypt$"):
        assert verify_password("pw", encoded) is False
    checker = PasswordChecker({"alice": _forged(2**20), "bob": "garbage"})
    assert checker.verify("alice", "pw") is None and checker.verify("bob", "pw") is None


def test_an_unknown_user_costs_what_a_wrong_password_costs(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work is the same: one scrypt run with the file's parameters and key length, then a
    constant-time comparison; no timing involved."""
    checker = PasswordChecker(
        {"alice": hash_password("alice-pw", **FAST), "bob": hash_password("bob-pw", **FAST), "old": _forged(2**15)}
    )
    runs: list[tuple[int, int, int, int, int]] = []
    compared: list[tuple[int, int]] = []
    derive, compare = ScryptHash.derive, hmac.compare_digest

    def counting_derive(self: ScryptHash, password: str) -> bytes | None:
        runs.append((self.n, self.r, self.p, len(self.salt), len(self.key)))
        return derive(self, password)

    def counting_compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return compare(a, b)

    monkeypatch.setattr(ScryptHash, "derive", counting_derive)
    monkeypatch.setattr("proxy.identity.hmac.compare_digest", counting_compare)
    assert checker.verify("alice", "wrong") is None
    wrong_password = (runs[:], compared[:])
    runs.clear()
    compared.clear()
    assert checker.verify("mallory", "wrong") is None
    assert (runs, compared) == wrong_password == ([(2**10, 8, 1, 16, 32)], [(32, 32)])
    assert checker.verify("ALICE", "alice-pw") == "alice"


@pytest.mark.parametrize(
    "value",
    [
        "Basic \udce9",  # a raw 0xE9 byte, as mitmproxy decodes it
        "Basic " + base64.b64encode(b"alice:pw").decode() + "\udce9",
        "Basic \u00e9t\u00e9",
        "Basic !!!!",
        "Basic " + base64.b64encode(b"alice:pw").decode().rstrip("=")[:-1],
        "Basic " + base64.b64encode(b"alicepw").decode(),
        "Basic " + base64.b64encode(b":pw").decode(),
        "Basic ",
        "Basic",
        "",
        "Basic " + base64.b64encode(b"alice:\xff\xfe").decode(),
        "Basic " + base64.b64encode(b"alice\x00:pw").decode(),
        "Basic " + base64.b64encode(b"alice:p\nw").decode(),
        "Bearer " + base64.b64encode(b"alice:pw").decode(),
        "Ba\u017fic " + base64.b64encode(b"alice:pw").decode(),  # U+017F folds to 's' case-insensitively
        "Basic " + base64.b64encode(b"alice:" + b"x" * 5000).decode(),
        "Basic " + base64.b64encode(b"alice:pw").decode() + ", Basic " + base64.b64encode(b"bob:pw").decode(),
        "Basic " + base64.b64encode(b"alice:pw").decode() + " extra",
    ],
)
def test_parse_basic_refuses_anything_malformed_without_raising(value: str) -> None:
    assert parse_basic(value) is None


def test_parse_basic_reads_rfc7617_credentials() -> None:
    token = base64.b64encode("Al\u00efce:p:w \u00e9".encode()).decode()
    assert parse_basic(f"Basic {token}") == ("Al\u00efce", "p:w \u00e9")
    assert parse_basic(f"  bAsIc   {token}  ") == ("Al\u00efce", "p:w \u00e9")


def _raw(flow: http.HTTPFlow, *lines: bytes) -> None:
    """Add header fields byte for byte, as mitmproxy would have parsed them."""
    fields = list(flow.request.headers.fields)
    for line in lines:
        name, _, value = line.partition(b": ")
        fields.append((name, value))
    flow.request.headers.fields = tuple(fields)


GOOD = b"Proxy-Authorization: " + _basic("alice@example.com", "alice-pw").encode()
MALFORMED_LINES = {
    "non-ascii": [b"Proxy-Authorization: Basic \xe9"],
    "no colon": [b"Proxy-Authorization: Basic " + base64.b64encode(b"alice@example.com")],
    "empty": [b"Proxy-Authorization: "],
    "wrong scheme": [b"Proxy-Authorization: Negotiate abc"],
    "huge": [b"Proxy-Authorization: Basic " + b"QUFB" * 50_000],
    "duplicated valid": [GOOD, GOOD],
    "duplicated valid and invalid": [GOOD, b"Proxy-Authorization: Basic \xe9"],
}


@pytest.mark.parametrize("required", [True, False])
@pytest.mark.parametrize("case", list(MALFORMED_LINES))
async def test_malformed_credentials_are_a_407_even_when_authentication_is_optional(
    tmp_path: Path, case: str, required: bool
) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path, auth_required=required))
    for method in ("CONNECT", "POST"):
        flow = _flow(method=method)
        _raw(flow, *MALFORMED_LINES[case])
        challenge = await resolver.admit(flow)
        assert challenge is not None and challenge.status == 407, case
        assert "Proxy-Authorization" not in flow.request.headers and METADATA_CLAIM not in flow.metadata


async def test_a_users_file_hash_scrypt_refuses_is_a_407_not_an_exception(tmp_path: Path) -> None:
    users = {"alice@example.com": _forged(2**20), "bob": "garbage"}
    resolver = ConfiguredIdentity(_settings(tmp_path, users=users))
    for user in ("alice@example.com", "bob"):
        flow = _flow()
        flow.request.headers["Proxy-Authorization"] = _basic(user, "pw")
        challenge = await resolver.admit(flow)
        assert challenge is not None and challenge.status == 407


async def test_admit_fails_closed_when_a_check_raises(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))

    def broken(user: str, password: str) -> str | None:
        raise RuntimeError("boom")

    assert resolver.checker is not None
    monkeypatch.setattr(resolver.checker, "verify", broken)
    flow = _flow()
    flow.request.headers["Proxy-Authorization"] = _basic("alice@example.com", "alice-pw")
    flow.request.headers["X-Authenticated-User"] = "hannah@example.com"
    challenge = await resolver.admit(flow)
    assert challenge is not None and challenge.status == 407
    assert "X-Authenticated-User" not in flow.request.headers and METADATA_CLAIM not in flow.metadata
    no_auth = ConfiguredIdentity(_settings(tmp_path, users=None, auth_required=False))
    monkeypatch.setattr(no_auth, "_header_claim", lambda *a: 1 / 0)
    challenge = await no_auth.admit(_flow())
    assert challenge is not None and challenge.status == 403


VARIANT_LINES = [
    b"x_authenticated_user: hannah@example.com",
    b"X_AUTHENTICATED_USER: hannah@example.com",
    b"X-Authenticated_User: hannah@example.com",
    b"X-Authenticated-User : hannah@example.com",
    b"x_authenticated_groups: hr",
    b"X-AUTHENTICATED_GROUPS: hr",
    b"proxy_authorization: " + GOOD.split(b": ", 1)[1],
]


def _identity_like(flow: http.HTTPFlow) -> list[bytes]:
    names = {b"x-authenticated-user", b"x-authenticated-groups", b"proxy-authorization"}
    return [n for n, _ in flow.request.headers.fields if n.strip().lower().replace(b"_", b"-") in names]


@pytest.mark.parametrize("peer", ["10.9.1.1", "127.0.0.1"])  # trusted, untrusted
async def test_look_alike_identity_headers_are_stripped_and_never_believed(tmp_path: Path, peer: str) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path, auth_required=False))
    flow = _flow(peer=peer)
    _raw(flow, *VARIANT_LINES, b"X-Other_Header: kept")
    assert await resolver.admit(flow) is None
    assert _identity_like(flow) == [] and flow.request.headers["X-Other_Header"] == "kept"
    assert resolver.identify(flow).source == "client_address"  # no variant was believed
    required = ConfiguredIdentity(_settings(tmp_path))
    flow = _flow(peer=peer, method="CONNECT")
    _raw(flow, *VARIANT_LINES)
    challenge = await required.admit(flow)
    assert challenge is not None and challenge.status == 407 and _identity_like(flow) == []


async def test_the_exact_header_in_any_case_is_the_header_and_variants_beside_it_are_dropped(tmp_path: Path) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    flow = _flow(peer="10.9.1.1")
    _raw(flow, b"x-authenticated-user: hannah@example.com", b"x_authenticated_user: ceo@example.com")
    assert await resolver.admit(flow) is None  # HTTP names are case-insensitive (HTTP/2 lowercases)
    assert resolver.identify(flow).user == "hannah@example.com" and _identity_like(flow) == []


DUPLICATE_LINES = {
    "same": [b"X-Authenticated-User: hannah@example.com", b"X-Authenticated-User: hannah@example.com"],
    "other case": [b"X-Authenticated-User: hannah@example.com", b"x-authenticated-user: ceo@example.com"],
    "groups": [
        b"X-Authenticated-User: hannah@example.com",
        b"X-Authenticated-Groups: hr",
        b"X-Authenticated-Groups: x",
    ],
}


@pytest.mark.parametrize("peer", ["10.9.1.1", "127.0.0.1"])
@pytest.mark.parametrize("case", list(DUPLICATE_LINES))
async def test_a_duplicated_identity_header_is_refused_and_logged_without_values(
    tmp_path: Path, case: str, peer: str, caplog: pytest.LogCaptureFixture
) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path))
    for credentials in ([], [GOOD]):  # valid credentials do not excuse it
        flow = _flow(peer=peer)
        _raw(flow, *credentials, *DUPLICATE_LINES[case])
        with caplog.at_level("WARNING", logger="promptfence.proxy"):
            challenge = await resolver.admit(flow)
        assert challenge is not None and challenge.status == 403
        assert b"arrived more than once" in challenge.body and b"hannah" not in challenge.body
        assert _identity_like(flow) == [] and METADATA_CLAIM not in flow.metadata
    assert "more than once" in caplog.text
    assert "hannah" not in caplog.text and "ceo@" not in caplog.text and "alice-pw" not in caplog.text
    flow = _flow(peer=peer)  # identify without admit believes neither copy
    _raw(flow, *DUPLICATE_LINES[case])
    assert resolver.identify(flow).source == "client_address"


@pytest.mark.parametrize(
    "line",
    [b"X-Authenticated-User: hann\xe4h", b"X-Authenticated-User: hannah\x01", b"X-Authenticated-User: " + b"a" * 400],
)
async def test_a_garbled_header_from_a_trusted_source_is_refused_and_ignored_from_elsewhere(
    tmp_path: Path, line: bytes
) -> None:
    resolver = ConfiguredIdentity(_settings(tmp_path, auth_required=False))
    trusted = _flow(peer="10.9.1.1")
    _raw(trusted, line)
    challenge = await resolver.admit(trusted)
    assert challenge is not None and challenge.status == 403
    untrusted = _flow(peer="127.0.0.1")
    _raw(untrusted, line)
    assert await resolver.admit(untrusted) is None
    assert resolver.identify(untrusted).source == "client_address" and _identity_like(untrusted) == []


# -- promptfence identity ------------------------------------------------------------------------


def _cli(monkeypatch: pytest.MonkeyPatch, stdin: str, *argv: str) -> int:
    from promptfence.cli import main

    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(list(argv))


def test_hash_password_refuses_what_the_proxy_would_refuse(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _cli(monkeypatch, "pw\x01\n", "identity", "hash-password", "alice") == 2
    assert "control characters" in capsys.readouterr().err
    assert _cli(monkeypatch, "pw\n", "identity", "hash-password", "al\x00ice") == 2
    assert _cli(monkeypatch, "pw\n", "identity", "hash-password", " alice") == 2
    assert _cli(monkeypatch, "x" * 4000 + "\n", "identity", "hash-password", "alice") == 2
    capsys.readouterr()
    assert _cli(monkeypatch, "p:w \u00e9\n", "identity", "hash-password", "alice") == 0
    user, _, encoded = capsys.readouterr().out.strip().partition(":")
    assert user == "alice" and verify_password("p:w \u00e9", encoded)


def test_check_users_names_the_bad_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice:{STRONG}\n")
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path}\nidentity:\n  proxy_auth:\n    users_file: {users}\n")
    assert _cli(monkeypatch, "", "identity", "check-users", "--config", str(config)) == 0
    assert "1 user, every password hash within bounds" in capsys.readouterr().out
    users.write_text(f"alice:{STRONG}\nbob:{_forged(2**20)}\n")
    assert _cli(monkeypatch, "", "identity", "check-users", "--config", str(config)) == 2
    assert f"{users}:2: bob: password hash rejected" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("name", "groups_name"),
    [("X User", None), ("X-User", "x_user"), ("Proxy_Authorization", None), ("X-\u00fcser", None)],
)
def test_trusted_header_names_must_be_distinct_header_names(name: str, groups_name: str | None) -> None:
    from promptfence.config import IdentityConfig, TrustedHeaderConfig
    from proxy.identity import build_identity

    config = IdentityConfig(
        trusted_header=TrustedHeaderConfig(name=name, groups_name=groups_name, trusted_sources=["10.0.0.0/8"])
    )
    with pytest.raises(ConfigError, match="HTTP header name"):
        build_identity(config)
