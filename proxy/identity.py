"""Who sent a flow: proxy authentication, a trusted upstream header, a client-IP map, groups.

Resolution order (first that applies wins; documented in docs/policies.md):

1. **Proxy authentication**: ``Proxy-Authorization: Basic`` checked against a users file of
   scrypt hashes. On an HTTPS tunnel the credentials arrive once, on ``CONNECT``; every request
   inside that tunnel is that user's.
2. **Trusted header** (e.g. ``X-Authenticated-User`` set by an identity-aware proxy in front of
   PromptFence): honoured **only** when the connection comes from a configured trusted
   address or network. From anywhere else it is ignored. It is removed from every request
   before the request goes upstream, trusted or not.
3. **Client-IP map**: an address or network -> user table.
4. **Fallback**: the user is ``ip:<client address>``.

Groups come from a directory file (YAML or an IdP's CSV export); users the directory does not
know get the configured default group. A trusted groups header, when configured, replaces the
directory's groups for header identities.

The pure parts (directory, users file, password hashes, the IP map) import nothing from
mitmproxy at run time, so the CLI can use them for ``policy lint/test/explain``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import csv
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import time
import weakref
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from promptfence.core import Identity
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

if TYPE_CHECKING:
    from mitmproxy import http

    from promptfence.config import IdentityConfig

log = logging.getLogger("promptfence.proxy")

AUTH_REALM = "PromptFence"
METADATA_CLAIM = "promptfence.identity_claim"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class IdentityResolver(Protocol):
    def identify(self, flow: http.HTTPFlow) -> Identity: ...


@dataclass(frozen=True)
class Challenge:
    """What the proxy answers instead of forwarding: 407 with ``Proxy-Authenticate``."""

    status: int
    headers: Mapping[str, str]
    body: bytes


@runtime_checkable
class Gatekeeper(Protocol):
    """A resolver that also authenticates: the addon calls ``admit`` on ``CONNECT`` and on
    every request's headers, before anything is forwarded; a :class:`Challenge` stops the flow."""

    async def admit(self, flow: http.HTTPFlow) -> Challenge | None: ...


class ClientAddressIdentity:
    """The fallback: the user is the client's IP address, in no group."""

    def identify(self, flow: http.HTTPFlow) -> Identity:
        address = flow.client_conn.peername[0] if flow.client_conn.peername else None
        return Identity(
            user=f"ip:{address}" if address else "anonymous",
            source="client_address",
            client_address=address,
        )


# -- directory -------------------------------------------------------------------------------

_USER_COLUMNS = ("user", "username", "user_name", "email", "mail", "userprincipalname", "upn", "login")
_GROUP_COLUMNS = ("groups", "group", "group_name", "memberof", "member_of")
_GROUP_SPLIT = re.compile(r"[;|,]")


@dataclass(frozen=True)
class Directory:
    """User -> groups, as exported from an identity provider. User names compare case-insensitively."""

    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)  # casefolded user -> groups
    groups: frozenset[str] = frozenset()  # every group the file defines
    source: str = ""

    def groups_for(self, user: str) -> tuple[str, ...] | None:
        """The user's groups, or None when the directory does not know the user."""
        return self.members.get(user.casefold())

    def knows_group(self, group: str) -> bool:
        return group.casefold() in {g.casefold() for g in self.groups}


def _add(members: dict[str, list[str]], user: str, group: str) -> None:
    groups = members.setdefault(user.strip().casefold(), [])
    if group not in groups:
        groups.append(group)


def _yaml_directory(data: object, source: str) -> Directory:
    if not isinstance(data, YamlMap):
        raise ConfigError("a directory file must be a mapping with groups: and/or users:", source=source, line=1)
    members: dict[str, list[str]] = {}
    groups: set[str] = set()
    for key in data:
        if key not in ("groups", "users"):
            raise data.error(key, key, "unknown key (expected: groups, users)")
    by_group = data.get("groups") or YamlMap(source, *data.where())
    if not isinstance(by_group, YamlMap):
        raise data.error("groups", "groups", "expected a mapping of group: [users]")
    for group, users in by_group.items():
        if users is None:
            users = YamlList(source, *by_group.where(group))
        if not isinstance(users, YamlList) or not all(isinstance(u, str) and u for u in users):
            raise by_group.error(group, f"groups.{group}", "expected a list of user names")
        groups.add(group)
        for user in users:
            _add(members, user, group)
    by_user = data.get("users") or YamlMap(source, *data.where())
    if not isinstance(by_user, YamlMap):
        raise data.error("users", "users", "expected a mapping of user: [groups]")
    for user, user_groups in by_user.items():
        if isinstance(user_groups, str):
            user_groups = [user_groups]
        if not isinstance(user_groups, list) or not all(isinstance(g, str) and g for g in user_groups):
            raise by_user.error(user, f"users.{user}", "expected a group name or a list of group names")
        members.setdefault(user.casefold(), [])
        for group in user_groups:
            groups.add(group)
            _add(members, user, group)
    return Directory({u: tuple(g) for u, g in members.items()}, frozenset(groups), source)


def _csv_directory(text: str, source: str) -> Directory:
    rows = list(csv.reader(text.splitlines()))
    rows_with_lines = [(i + 1, r) for i, r in enumerate(rows) if r and not r[0].lstrip().startswith("#")]
    if not rows_with_lines:
        raise ConfigError("the directory CSV is empty (expected a header row)", source=source, line=1)
    header_line, header = rows_with_lines[0]
    names = [h.strip().casefold().replace(" ", "_") for h in header]
    user_col = next((names.index(c) for c in _USER_COLUMNS if c in names), None)
    group_col = next((names.index(c) for c in _GROUP_COLUMNS if c in names), None)
    if user_col is None or group_col is None:
        raise ConfigError(
            f"the header needs a user column ({', '.join(_USER_COLUMNS)}) and a group column "
            f"({', '.join(_GROUP_COLUMNS)})",
            source=source,
            line=header_line,
            field="header",
        )
    members: dict[str, list[str]] = {}
    groups: set[str] = set()
    for line, row in rows_with_lines[1:]:
        if len(row) <= max(user_col, group_col):
            raise ConfigError(f"expected at least {max(user_col, group_col) + 1} columns", source=source, line=line)
        user = row[user_col].strip()
        if not user:
            raise ConfigError("empty user", source=source, line=line, field=header[user_col])
        members.setdefault(user.casefold(), [])
        for group in (g.strip() for g in _GROUP_SPLIT.split(row[group_col])):
            if group:
                groups.add(group)
                _add(members, user, group)
    return Directory({u: tuple(g) for u, g in members.items()}, frozenset(groups), source)


def load_directory(path: Path) -> Directory:
    """A YAML file (``groups: {g: [users]}`` and/or ``users: {u: [groups]}``) or a CSV export."""
    if path.suffix.lower() == ".csv":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read directory file: {exc}", source=str(path)) from None
        return _csv_directory(text, str(path))
    return _yaml_directory(load_yaml_file(path), str(path))


# -- passwords -------------------------------------------------------------------------------

SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_SCRYPT_MAXMEM = 64 * 1024 * 1024


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``$scrypt$n=16384,r=8,p=1$<salt>$<key>`` (base64): what the users file stores."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=_SCRYPT_MAXMEM)
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(key)}"


def _parse_hash(encoded: str) -> tuple[int, int, int, bytes, bytes]:
    parts = encoded.split("$")
    if len(parts) != 5 or parts[0] or parts[1] != "scrypt":
        raise ValueError("not a $scrypt$ hash")
    params = dict(item.split("=", 1) for item in parts[2].split(","))
    n, r, p = int(params["n"]), int(params["r"]), int(params["p"])
    if n < 2**10 or n & (n - 1) or not 1 <= r <= 64 or not 1 <= p <= 16:
        raise ValueError("scrypt parameters out of range")
    return n, r, p, _unb64(parts[3]), _unb64(parts[4])


def verify_password(password: str, encoded: str) -> bool:
    try:
        n, r, p, salt, expected = _parse_hash(encoded)
    except (ValueError, KeyError, binascii.Error):
        return False
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(expected), maxmem=_SCRYPT_MAXMEM)
    return hmac.compare_digest(key, expected)


_DUMMY_HASH = "$scrypt$n=16384,r=8,p=1$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"


def load_users_file(path: Path) -> dict[str, str]:
    """``user:$scrypt$...`` lines (htpasswd style; ``#`` comments). Returns casefolded user -> hash."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read users file: {exc}", source=str(path)) from None
    users: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        if not sep or not user.strip():
            raise ConfigError(
                "expected user:$scrypt$... (see promptfence identity hash-password)", source=str(path), line=number
            )
        try:
            _parse_hash(encoded.strip())
        except (ValueError, KeyError, binascii.Error) as exc:
            raise ConfigError(
                f"invalid password hash: {exc}", source=str(path), line=number, field=user.strip()
            ) from None
        users[user.strip().casefold()] = encoded.strip()
    return users


def parse_basic(value: str) -> tuple[str, str] | None:
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        return None
    return user, password


class PasswordChecker:
    """Verifies Basic credentials; a success is remembered (by a salted digest, never the
    password) for ``cache_s`` so a busy plain-HTTP client does not pay scrypt per request."""

    def __init__(self, users: Mapping[str, str], *, cache_s: float = 600.0) -> None:
        self.users = dict(users)
        self.cache_s = cache_s
        self._pepper = os.urandom(16)
        self._ok: dict[bytes, tuple[str, float]] = {}

    def _key(self, user: str, password: str) -> bytes:
        return hashlib.sha256(self._pepper + user.casefold().encode() + b"\0" + password.encode()).digest()

    def cached(self, user: str, password: str) -> str | None:
        hit = self._ok.get(self._key(user, password))
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def verify(self, user: str, password: str) -> str | None:
        """The canonical user name when the password is right; slow on purpose."""
        encoded = self.users.get(user.casefold())
        ok = verify_password(password, encoded or _DUMMY_HASH) and encoded is not None
        if not ok:
            return None
        if len(self._ok) > 10_000:
            self._ok.clear()
        self._ok[self._key(user, password)] = (user.casefold(), time.monotonic() + self.cache_s)
        return user.casefold()


# -- networks and the IP map -----------------------------------------------------------------


def parse_networks(values: Iterable[str], *, source: str = "<config>", field_name: str = "") -> tuple[Network, ...]:
    nets: list[Network] = []
    for i, value in enumerate(values):
        try:
            nets.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"not an IP address or network: {value!r}", source=source, field=f"{field_name}[{i}]"
            ) from None
    return tuple(nets)


def _address(value: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not value:
        return None
    try:
        addr = ipaddress.ip_address(value.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return addr.ipv4_mapped
    return addr


def in_networks(address: str | None, networks: Sequence[Network]) -> bool:
    addr = _address(address)
    return addr is not None and any(addr.version == net.version and addr in net for net in networks)


@dataclass(frozen=True)
class IpMap:
    """Address or network -> user; the most specific network wins."""

    entries: tuple[tuple[Network, str], ...] = ()

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, str], *, source: str = "<config>") -> IpMap:
        entries: list[tuple[Network, str]] = []
        for key, user in mapping.items():
            try:
                net = ipaddress.ip_network(key.strip(), strict=False)
            except ValueError:
                raise ConfigError(
                    f"not an IP address or network: {key!r}", source=source, field=f"identity.ip_map.{key}"
                ) from None
            entries.append((net, user))
        entries.sort(key=lambda e: e[0].prefixlen, reverse=True)
        return cls(tuple(entries))

    def user_for(self, address: str | None) -> str | None:
        addr = _address(address)
        if addr is None:
            return None
        for net, user in self.entries:
            if addr.version == net.version and addr in net:
                return user
        return None


# -- the resolver the proxy uses -------------------------------------------------------------


@dataclass(frozen=True)
class IdentitySettings:
    """Everything :class:`ConfiguredIdentity` needs; the CLI builds it from ``identity:``."""

    directory: Directory = field(default_factory=Directory)
    default_group: str | None = None
    users: Mapping[str, str] | None = None  # None: proxy authentication off
    auth_required: bool = False
    realm: str = AUTH_REALM
    header: str | None = None
    groups_header: str | None = None
    trusted_sources: tuple[Network, ...] = ()
    ip_map: IpMap = field(default_factory=IpMap)


@dataclass(frozen=True)
class _Claim:
    user: str
    source: str
    groups: tuple[str, ...] | None = None


def _peer(flow: http.HTTPFlow) -> str | None:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else None


class ConfiguredIdentity:
    """The proxy's identity resolver: implements :class:`IdentityResolver` and :class:`Gatekeeper`."""

    def __init__(self, settings: IdentitySettings) -> None:
        self.settings = settings
        self.checker = PasswordChecker(settings.users) if settings.users is not None else None
        # Identities established on CONNECT hold for every request inside that tunnel.
        self._tunnels: weakref.WeakKeyDictionary[object, _Claim] = weakref.WeakKeyDictionary()

    # Headers a client must never get past us to the app, whatever they say.
    def _strip(self, flow: http.HTTPFlow) -> tuple[str | None, str | None, str | None]:
        headers = flow.request.headers
        auth = headers.get("Proxy-Authorization")
        if auth is not None:
            del headers["Proxy-Authorization"]
        user = group_value = None
        if self.settings.header:
            user = headers.get(self.settings.header)
            if user is not None:
                del headers[self.settings.header]
        if self.settings.groups_header:
            group_value = headers.get(self.settings.groups_header)
            if group_value is not None:
                del headers[self.settings.groups_header]
        return auth, user, group_value

    def _header_claim(self, flow: http.HTTPFlow, user: str | None, group_value: str | None) -> _Claim | None:
        if user is None or not user.strip():
            return None
        peer = _peer(flow)
        if not in_networks(peer, self.settings.trusted_sources):
            log.warning(
                "flow=%s ignored identity header %s from untrusted address %s", flow.id, self.settings.header, peer
            )
            return None
        groups = None
        if group_value is not None:
            groups = tuple(g.strip() for g in _GROUP_SPLIT.split(group_value) if g.strip())
        return _Claim(user.strip(), "trusted_header", groups)

    async def admit(self, flow: http.HTTPFlow) -> Challenge | None:
        """Authenticate and strip identity headers before anything is forwarded; idempotent."""
        if METADATA_CLAIM in flow.metadata:
            return None
        auth, header_user, group_value = self._strip(flow)
        claim: _Claim | None = None
        tunnel = flow.client_conn
        if auth is not None and self.checker is not None:
            creds = parse_basic(auth)
            user = None
            if creds is not None:
                user = self.checker.cached(*creds) or await asyncio.to_thread(self.checker.verify, *creds)
            if user is None:
                log.warning("flow=%s proxy authentication failed from %s", flow.id, _peer(flow))
                return self._challenge()
            claim = _Claim(user, "proxy_auth")
        if claim is None:
            claim = self._header_claim(flow, header_user, group_value)
        if claim is None:
            claim = self._tunnels.get(tunnel)
        if claim is None and self.checker is not None and self.settings.auth_required:
            return self._challenge()
        if claim is not None and flow.request.method == "CONNECT":
            self._tunnels[tunnel] = claim
        flow.metadata[METADATA_CLAIM] = claim
        return None

    def _challenge(self) -> Challenge:
        return Challenge(
            407,
            {
                "Proxy-Authenticate": f'Basic realm="{self.settings.realm}", charset="UTF-8"',
                "Content-Type": "text/plain; charset=utf-8",
                "X-PromptFence": "authentication-required",
            },
            b"PromptFence: proxy authentication required. Sign in with your company account.\n",
        )

    def _groups(self, user: str) -> tuple[str, ...]:
        groups = self.settings.directory.groups_for(user)
        if groups is None:
            return (self.settings.default_group,) if self.settings.default_group else ()
        return groups

    def identify(self, flow: http.HTTPFlow) -> Identity:
        peer = _peer(flow)
        claim = flow.metadata.get(METADATA_CLAIM)
        if not isinstance(claim, _Claim):
            # Not admitted (e.g. called directly): honour only what this request proves by itself.
            _, header_user, group_value = self._strip(flow)
            claim = self._header_claim(flow, header_user, group_value) or self._tunnels.get(flow.client_conn)
        if claim is not None:
            groups = claim.groups if claim.groups is not None else self._groups(claim.user)
            return Identity(user=claim.user, groups=groups, source=claim.source, client_address=peer)
        mapped = self.settings.ip_map.user_for(peer)
        if mapped is not None:
            return Identity(user=mapped, groups=self._groups(mapped), source="ip_map", client_address=peer)
        return Identity(
            user=f"ip:{peer}" if peer else "anonymous",
            groups=(self.settings.default_group,) if self.settings.default_group else (),
            source="client_address",
            client_address=peer,
        )


def build_identity(config: IdentityConfig) -> IdentityResolver:
    """The resolver for an ``identity:`` config section; file errors name file and line."""
    directory = load_directory(config.directory) if config.directory is not None else Directory()
    users = None
    if config.proxy_auth.users_file is not None:
        users = load_users_file(config.proxy_auth.users_file)
    header = config.trusted_header
    trusted = parse_networks(header.trusted_sources, field_name="identity.trusted_header.trusted_sources")
    if header.name and not trusted:
        raise ConfigError(
            "a trusted header needs trusted_sources: it is only believed from those addresses",
            field="identity.trusted_header.trusted_sources",
        )
    settings = IdentitySettings(
        directory=directory,
        default_group=config.default_group,
        users=users,
        auth_required=config.proxy_auth.required,
        realm=config.proxy_auth.realm,
        header=header.name,
        groups_header=header.groups_name,
        trusted_sources=trusted,
        ip_map=IpMap.from_mapping(config.ip_map),
    )
    return ConfiguredIdentity(settings)
