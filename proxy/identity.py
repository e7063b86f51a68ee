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
import concurrent.futures
import contextlib
import csv
import hashlib
import hmac
import ipaddress
import logging
import math
import os
import re
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
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
# What a users file may hold. Weaker hashes are cheap to brute-force if the file leaks;
# costlier ones would exceed the memory limit (scrypt then refuses: every check would fail) or
# let one login attempt tie up a core for seconds.
SCRYPT_MIN_N, SCRYPT_MIN_R, SCRYPT_MIN_P = 2**14, 8, 1
SCRYPT_MAX_WORK = 8 * SCRYPT_N * SCRYPT_R * SCRYPT_P  # n*r*p: at most 8x the default's time
SCRYPT_MIN_SALT, SCRYPT_MIN_KEY, SCRYPT_MAX_BYTES = 16, 32, 64
_SCRYPT_MAXMEM = 64 * 1024 * 1024

# Longest Proxy-Authorization value looked at; longer is refused before any work is done.
MAX_CREDENTIALS_CHARS = 4096
MAX_USER_CHARS = 320
_HASH = re.compile(
    r"\$scrypt\$n=([0-9]{1,10}),r=([0-9]{1,4}),p=([0-9]{1,4})\$([A-Za-z0-9+/]{1,100})\$([A-Za-z0-9+/]{1,100})",
    re.ASCII,
)
_BASIC = re.compile(r"[Bb][Aa][Ss][Ii][Cc] +([A-Za-z0-9+/]+={0,2})", re.ASCII)
_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]{1,100}", re.ASCII)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


@dataclass(frozen=True)
class ScryptHash:
    """A parsed ``$scrypt$n=..,r=..,p=..$<salt>$<key>`` users-file hash."""

    n: int
    r: int
    p: int
    salt: bytes
    key: bytes

    @property
    def memory(self) -> int:
        """Bytes scrypt needs (what OpenSSL checks against ``maxmem``)."""
        return 128 * self.r * (self.n + 2) + 128 * self.r * self.p

    def weakness(self) -> str | None:
        """Why this hash is too weak or too costly for a users file, or None when it is fine."""
        if self.memory > _SCRYPT_MAXMEM:
            return (
                f"scrypt parameters n={self.n},r={self.r},p={self.p} need {self.memory // 2**20} MiB of "
                f"memory, more than the {_SCRYPT_MAXMEM // 2**20} MiB limit"
            )
        if self.n < SCRYPT_MIN_N or self.r < SCRYPT_MIN_R or self.p < SCRYPT_MIN_P:
            return (
                f"scrypt parameters n={self.n},r={self.r},p={self.p} are too weak (at least "
                f"n={SCRYPT_MIN_N},r={SCRYPT_MIN_R},p={SCRYPT_MIN_P}): hash the password again"
            )
        if self.n * self.r * self.p > SCRYPT_MAX_WORK:
            return (
                f"scrypt parameters n={self.n},r={self.r},p={self.p} cost more than {SCRYPT_MAX_WORK // 2**17}x "
                f"the default per login attempt (n*r*p at most {SCRYPT_MAX_WORK})"
            )
        if len(self.salt) < SCRYPT_MIN_SALT:
            return f"the salt is {len(self.salt)} bytes, too weak (at least {SCRYPT_MIN_SALT})"
        if len(self.key) < SCRYPT_MIN_KEY:
            return f"the key is {len(self.key)} bytes, too weak (at least {SCRYPT_MIN_KEY})"
        return None

    def derive(self, password: str) -> bytes | None:
        """The key for ``password``, or None when scrypt refuses (never raises)."""
        try:
            return hashlib.scrypt(
                password.encode("utf-8", "surrogatepass"),
                salt=self.salt,
                n=self.n,
                r=self.r,
                p=self.p,
                dklen=len(self.key),
                maxmem=_SCRYPT_MAXMEM,
            )
        except (ValueError, MemoryError, OverflowError):
            return None

    def matches(self, password: str) -> bool:
        derived = self.derive(password)
        return hmac.compare_digest(derived if derived is not None else bytes(len(self.key)), self.key) and (
            derived is not None
        )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """``$scrypt$n=16384,r=8,p=1$<salt>$<key>`` (base64): what the users file stores."""
    salt = os.urandom(16)
    key = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32, maxmem=_SCRYPT_MAXMEM)
    return f"$scrypt$n={n},r={r},p={p}${_b64(salt)}${_b64(key)}"


def parse_hash(encoded: str) -> ScryptHash:
    """The hash's parts; ValueError (whose message never repeats the hash) when it is not one."""
    found = _HASH.fullmatch(encoded)
    if found is None:
        raise ValueError("not a $scrypt$n=N,r=R,p=P$<salt>$<key> hash (see promptfence identity hash-password)")
    n, r, p = (int(found.group(i)) for i in (1, 2, 3))
    if n < 2 or n & (n - 1) or r < 1 or p < 1:
        raise ValueError("scrypt parameters out of range (n a power of two above 1, r and p at least 1)")
    try:
        salt, key = _unb64(found.group(4)), _unb64(found.group(5))
    except ValueError:
        raise ValueError("the salt or key is not base64") from None
    if len(salt) > SCRYPT_MAX_BYTES or len(key) > SCRYPT_MAX_BYTES:
        raise ValueError(f"the salt or key is longer than {SCRYPT_MAX_BYTES} bytes")
    return ScryptHash(n, r, p, salt, key)


def verify_password(password: str, encoded: str) -> bool:
    """Whether ``password`` matches ``encoded``; False (never an exception) for an unusable hash."""
    try:
        parsed = parse_hash(encoded)
    except ValueError:
        return False
    return parsed.matches(password)


def load_users_file(path: Path) -> dict[str, str]:
    """``user:$scrypt$...`` lines (htpasswd style; ``#`` comments). Returns casefolded user -> hash.

    Every hash must be usable and within bounds (:meth:`ScryptHash.weakness`); an error names the
    file, the line and the user, never the hash."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read users file: {type(exc).__name__}", source=str(path)) from None
    users: dict[str, str] = {}
    lines: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, encoded = line.partition(":")
        user, encoded = user.strip(), encoded.strip()
        if not sep or not user:
            raise ConfigError(
                "expected user:$scrypt$... (see promptfence identity hash-password)", source=str(path), line=number
            )
        if _CONTROL.search(user) or len(user) > MAX_USER_CHARS:
            raise ConfigError(
                f"a user name must be at most {MAX_USER_CHARS} characters without control characters",
                source=str(path),
                line=number,
            )
        try:
            weakness = parse_hash(encoded).weakness()
        except ValueError as exc:
            raise ConfigError(f"invalid password hash: {exc}", source=str(path), line=number, field=user) from None
        if weakness is not None:
            raise ConfigError(f"password hash rejected: {weakness}", source=str(path), line=number, field=user)
        key = user.casefold()
        if key in lines:
            raise ConfigError(
                f"the user is already listed on line {lines[key]} (names compare case-insensitively)",
                source=str(path),
                line=number,
                field=user,
            )
        users[key], lines[key] = encoded, number
    return users


def parse_basic(value: str) -> tuple[str, str] | None:
    """``Basic <base64 user:password>`` (RFC 7617) -> (user, password); None (never an
    exception) for anything else: another scheme, bad base64, not UTF-8, no colon, an empty user,
    control characters, or a value longer than :data:`MAX_CREDENTIALS_CHARS`."""
    if len(value) > MAX_CREDENTIALS_CHARS:
        return None
    found = _BASIC.fullmatch(value.strip(" \t"))
    if found is None:
        return None
    try:
        decoded = base64.b64decode(found.group(1), validate=True).decode("utf-8")
    except ValueError:  # binascii.Error and UnicodeDecodeError are ValueErrors
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not user or len(user) > MAX_USER_CHARS or _CONTROL.search(decoded):
        return None
    return user, password


def _dummy_hash(users: Mapping[str, ScryptHash | None]) -> ScryptHash:
    """What an unknown user's password is checked against: the parameters most of the file uses
    (so "no such user" costs what "wrong password" does), a random salt and key."""
    shapes = Counter((h.n, h.r, h.p, len(h.salt), len(h.key)) for h in users.values() if h is not None)
    n, r, p, salt_len, key_len = (
        shapes.most_common(1)[0][0] if shapes else (SCRYPT_N, SCRYPT_R, SCRYPT_P, SCRYPT_MIN_SALT, SCRYPT_MIN_KEY)
    )
    return ScryptHash(n, r, p, os.urandom(salt_len), os.urandom(key_len))


class PasswordChecker:
    """Verifies Basic credentials; a success is remembered (by a salted digest, never the
    password) for ``cache_s`` so a busy plain-HTTP client does not pay scrypt per request. The
    memory is per source (``source``): a guess from elsewhere never matches it, so it is no
    cheap oracle for a source that throttling would otherwise stop.

    A failure costs the same whether the user is unknown or the password wrong (an unknown user
    is checked against a dummy hash), the comparison is :func:`hmac.compare_digest`, and nothing
    here raises: an unusable hash is a failed check."""

    def __init__(self, users: Mapping[str, str], *, cache_s: float = 600.0) -> None:
        self.users = dict(users)
        self.cache_s = cache_s
        self._hashes: dict[str, ScryptHash | None] = {}
        for user, encoded in users.items():
            try:
                self._hashes[user.casefold()] = parse_hash(encoded)
            except ValueError:
                self._hashes[user.casefold()] = None  # never matches, still costs a check
        self._dummy = _dummy_hash(self._hashes)
        self._pepper = os.urandom(16)
        self._ok: dict[bytes, tuple[str, float]] = {}

    def _key(self, user: str, password: str, source: str) -> bytes:
        raw = source + "\0" + user.casefold() + "\0" + password
        return hashlib.sha256(self._pepper + raw.encode("utf-8", "surrogatepass")).digest()

    def knows(self, user: str) -> bool:
        return user.casefold() in self._hashes

    def cached(self, user: str, password: str, source: str = "") -> str | None:
        hit = self._ok.get(self._key(user, password, source))
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def verify(self, user: str, password: str, source: str = "") -> str | None:
        """The canonical user name when the password is right; slow on purpose."""
        name = user.casefold()
        known = self._hashes.get(name)
        ok = (known or self._dummy).matches(password) and known is not None
        if not ok:
            return None
        if len(self._ok) > 10_000:
            self._ok.clear()
        if self.cache_s > 0:
            self._ok[self._key(user, password, source)] = (name, time.monotonic() + self.cache_s)
        return name


# -- throttling failed logins ----------------------------------------------------------------


@dataclass(frozen=True)
class ThrottleSettings:
    """Failure throttling and the bounded password-check pool (``identity.proxy_auth``)."""

    max_failures: int = 10  # per user name, within window_s, before backoff starts
    max_source_failures: int = 30  # per client address (an IPv6 /64), within window_s
    window_s: float = 600.0  # failures older than this (and no backoff running) are forgotten
    base_backoff_s: float = 1.0  # the first backoff; it doubles with each further failure
    max_backoff_s: float = 300.0  # ... up to this
    workers: int = 2  # scrypt threads (each check takes a core for ~50 ms at the default cost)
    queue: int = 8  # checks allowed to wait for a thread; beyond: a 407 at once, no scrypt
    cache_s: float = 600.0  # a verified user:password is not checked again for this long

    def problem(self) -> str | None:
        """Which field is out of range, or None."""
        for name, key in (
            ("max_failures", "max_failures"),
            ("max_source_failures", "max_source_failures"),
            ("workers", "verify_workers"),
        ):
            if getattr(self, name) < 1:
                return f"{key} must be at least 1"
        if self.queue < 0:
            return "verify_queue must be at least 0"
        for name in ("window_s", "base_backoff_s", "max_backoff_s"):
            if not getattr(self, name) > 0:
                return f"{name} must be above 0"
        if self.cache_s < 0:
            return "cache_s must be at least 0"
        if self.max_backoff_s < self.base_backoff_s:
            return "max_backoff_s must be at least base_backoff_s"
        return None


@dataclass
class _Bucket:
    failures: int = 0
    last: float = 0.0
    blocked_until: float = 0.0
    in_flight: int = 0
    refused: int = 0  # attempts refused during the current backoff (logged once, then counted)


@dataclass(frozen=True)
class Throttled:
    """Why an attempt was refused without checking the password."""

    retry_after_s: float
    by: str  # "user" | "source"
    first: bool  # the first refusal of this backoff (logged; later ones only counted)


@dataclass(frozen=True)
class Backoff:
    """A backoff a failure started: what the log says (never the password)."""

    by: str  # "user" | "source"
    failures: int
    seconds: float
    refused: int  # attempts refused during the previous backoff


MAX_BUCKETS = 50_000  # per table: failures keyed by attacker-chosen names must not grow memory


def source_key(address: str | None) -> str:
    """What per-source throttling counts by: the address, or its /64 for IPv6 (a host there
    typically holds the whole /64: rotating addresses inside it must not reset the count)."""
    addr = _address(address)
    if addr is None:
        return "?"
    if isinstance(addr, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((addr, 64), strict=False))
    return str(addr)


class AuthThrottle:
    """Failed-login counts per user and per source, with exponential backoff.

    Past ``max_failures`` (per user) or ``max_source_failures`` (per source) failures within
    ``window_s``, each further failure blocks checks for that user (from that source) for
    ``base_backoff_s * 2**k`` seconds, at most ``max_backoff_s``; once a backoff ends one
    attempt at a time is let through. Attempts in flight count toward the limit, so a burst of
    concurrent guesses cannot all slip under it. A success clears the user's count, not the
    source's (a valid account must not reset a source that guesses others). Only the event
    loop thread calls this (no locking)."""

    def __init__(self, settings: ThrottleSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.clock = clock
        self._tables: dict[str, dict[str, _Bucket]] = {"user": {}, "source": {}}
        self._limits = {"user": settings.max_failures, "source": settings.max_source_failures}

    def _stale(self, bucket: _Bucket, now: float) -> bool:
        return bucket.in_flight == 0 and now >= bucket.blocked_until and now - bucket.last > self.settings.window_s

    def _get(self, by: str, key: str, now: float) -> _Bucket | None:
        table = self._tables[by]
        bucket = table.get(key)
        if bucket is not None and self._stale(bucket, now):
            del table[key]
            return None
        return bucket

    def _make(self, by: str, key: str, now: float) -> _Bucket:
        bucket = self._get(by, key, now)
        if bucket is None:
            table = self._tables[by]
            if len(table) >= MAX_BUCKETS:
                for stale in [k for k, b in table.items() if self._stale(b, now)]:
                    del table[stale]
                while len(table) >= MAX_BUCKETS:  # still full: forget the oldest entries
                    del table[next(iter(table))]
            bucket = table[key] = _Bucket(last=now)
        return bucket

    def check(self, by: str, key: str) -> Throttled | None:
        """Whether an attempt for this user (``by="user"``) or from this source must be refused
        now; a refusal is counted (the first one of a backoff says so)."""
        now = self.clock()
        bucket = self._get(by, key, now)
        if bucket is None:
            return None
        limit = self._limits[by]
        if now < bucket.blocked_until:
            wait = bucket.blocked_until - now
        elif bucket.failures >= limit:  # a backoff has ended: one attempt at a time
            if bucket.in_flight == 0:
                return None
            wait = self.settings.base_backoff_s
        elif bucket.failures + bucket.in_flight >= limit:
            wait = self.settings.base_backoff_s
        else:
            return None
        bucket.refused += 1
        return Throttled(wait, by, bucket.refused == 1)

    def suspect(self, user: str, source: str) -> bool:
        """Whether this user or source has recent failures or an attempt already running
        (such attempts may use only part of the check pool)."""
        now = self.clock()
        buckets = (self._get("user", user, now), self._get("source", source, now))
        return any(b is not None and (b.failures > 0 or b.in_flight > 0) for b in buckets)

    def begin(self, user: str, source: str) -> None:
        now = self.clock()
        self._make("user", user, now).in_flight += 1
        self._make("source", source, now).in_flight += 1

    def cancel(self, user: str, source: str) -> None:
        """An attempt that :meth:`begin` counted but that ran no check: not a failure."""
        for by, key in (("user", user), ("source", source)):
            bucket = self._tables[by].get(key)
            if bucket is not None:
                bucket.in_flight = max(0, bucket.in_flight - 1)

    def succeeded(self, user: str, source: str) -> None:
        self.cancel(user, source)
        self._tables["user"].pop(user, None)

    def failed(self, user: str | None, source: str) -> list[Backoff]:
        """Count a failure (``user`` None: the source's only); returns the backoffs it started."""
        if user is not None:
            self.cancel(user, source)
        now = self.clock()
        started = []
        for by, key in (("source", source), ("user", user)):
            if key is None:
                continue
            bucket = self._make(by, key, now)
            bucket.failures += 1
            bucket.last = now
            limit = self._limits[by]
            if bucket.failures >= limit:
                exponent = min(bucket.failures - limit, 32)
                seconds = min(self.settings.base_backoff_s * 2**exponent, self.settings.max_backoff_s)
                bucket.blocked_until = now + seconds
                started.append(Backoff(by, bucket.failures, seconds, bucket.refused))
                bucket.refused = 0
        return started


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
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)


@dataclass(frozen=True)
class _Claim:
    user: str
    source: str
    groups: tuple[str, ...] | None = None


def _peer(flow: http.HTTPFlow) -> str | None:
    peer = flow.client_conn.peername
    return str(peer[0]) if peer else None


def _spelling(name: bytes) -> bytes:
    """How a lenient server reads a header name: ASCII case and ``_`` for ``-`` do not matter
    (CGI/WSGI, nginx, many frameworks), nor does stray whitespace around it."""
    return name.strip(b" \t").lower().replace(b"_", b"-")


@dataclass
class _Presented:
    """The identity headers a request arrived with (all of them, now removed from it)."""

    auth: list[bytes] = field(default_factory=list)  # Proxy-Authorization values
    users: list[bytes] = field(default_factory=list)  # the trusted header, exactly as configured
    groups: list[bytes] = field(default_factory=list)  # the trusted groups header, exactly
    look_alikes: int = 0  # other spellings of those names: stripped, never believed


class _Refused(Exception):
    """Why a request's identity headers are refused: a message for the log and the client
    (never a header value)."""


def _text(value: bytes) -> str | None:
    """A header value as text: UTF-8 without control characters, trimmed; else None."""
    try:
        text = value.decode("utf-8").strip(" \t")
    except UnicodeDecodeError:
        return None
    return None if _CONTROL.search(text) else text


class ConfiguredIdentity:
    """The proxy's identity resolver: implements :class:`IdentityResolver` and :class:`Gatekeeper`.

    ``admit`` never raises and never falls back to a weaker identity: malformed or wrong
    credentials are a 407 (even when authentication is optional), a duplicated trusted header
    is a 403, and any unexpected error refuses the request."""

    def __init__(self, settings: IdentitySettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        limits = settings.throttle
        self.checker = PasswordChecker(settings.users, cache_s=limits.cache_s) if settings.users is not None else None
        self.throttle = AuthThrottle(limits, clock=clock)
        # scrypt runs here, never on the event loop nor in its default executor; at most
        # workers + queue checks are pending, attempts with recent failures behind them (or
        # another attempt of theirs already pending) only up to half of that.
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._pending = 0
        self._capacity = limits.workers + limits.queue
        self._label_pepper = os.urandom(16)
        # Identities established on CONNECT hold for every request inside that tunnel.
        self._tunnels: weakref.WeakKeyDictionary[object, _Claim] = weakref.WeakKeyDictionary()
        self._auth_name = b"proxy-authorization"
        self._user_name = settings.header.encode("latin-1").lower() if settings.header else None
        self._groups_name = settings.groups_header.encode("latin-1").lower() if settings.groups_header else None
        self._names = {_spelling(n) for n in (self._auth_name, self._user_name, self._groups_name) if n}

    # Headers a client must never get past us to the app, whatever they say or however spelt.
    def _take(self, flow: http.HTTPFlow) -> _Presented:
        presented = _Presented()
        kept: list[tuple[bytes, bytes]] = []
        for name, value in flow.request.headers.fields:
            if _spelling(name) not in self._names:
                kept.append((name, value))
                continue
            exact = name.lower()
            if exact == self._auth_name:
                presented.auth.append(value)
            elif exact == self._user_name:
                presented.users.append(value)
            elif exact == self._groups_name:
                presented.groups.append(value)
            else:
                presented.look_alikes += 1
        if len(kept) != len(flow.request.headers.fields):
            flow.request.headers.fields = tuple(kept)
        return presented

    def _header_claim(self, flow: http.HTTPFlow, presented: _Presented) -> _Claim | None:
        """The trusted header's identity, None when there is none to believe; raises
        :class:`_Refused` for a header that arrived twice, or is garbled from a trusted source."""
        header = self.settings.header
        if len(presented.users) > 1 or len(presented.groups) > 1:
            twice = header if len(presented.users) > 1 else self.settings.groups_header
            raise _Refused(f"the identity header {twice} arrived more than once")
        if not presented.users:
            return None
        peer = _peer(flow)
        if not in_networks(peer, self.settings.trusted_sources):
            log.warning("flow=%s ignored identity header %s from untrusted address %s", flow.id, header, peer)
            return None
        user = _text(presented.users[0])
        if user is None or len(user) > MAX_USER_CHARS:
            raise _Refused(f"the identity header {header} is not a valid user name")
        if not user:
            return None
        groups = None
        if presented.groups:
            group_text = _text(presented.groups[0])
            if group_text is None:
                raise _Refused(f"the identity header {self.settings.groups_header} is not a valid group list")
            groups = tuple(g.strip() for g in _GROUP_SPLIT.split(group_text) if g.strip())
        return _Claim(user, "trusted_header", groups)

    async def admit(self, flow: http.HTTPFlow) -> Challenge | None:
        """Authenticate and strip identity headers before anything is forwarded; idempotent.
        Returns the answer that stops the flow, or None to let it go on; never raises."""
        if METADATA_CLAIM in flow.metadata:
            return None
        try:
            return await self._admit(flow)
        except Exception as exc:  # fail closed: an error here must never let a flow through
            log.warning("flow=%s identity check failed (%s): refused", flow.id, type(exc).__name__)
            with contextlib.suppress(Exception):
                self._take(flow)
            return self._challenge() if self.checker is not None else self._refusal("identity check failed")

    async def _admit(self, flow: http.HTTPFlow) -> Challenge | None:
        presented = self._take(flow)
        peer = _peer(flow)
        if presented.look_alikes:
            log.warning(
                "flow=%s removed %d look-alike identity header(s) from %s", flow.id, presented.look_alikes, peer
            )
        try:  # before any password work: a duplicated header is refused whoever sends it
            header_claim = self._header_claim(flow, presented)
        except _Refused as refused:
            log.warning("flow=%s refused from %s: %s", flow.id, peer, refused)
            return self._refusal(str(refused))
        claim: _Claim | None = None
        if presented.auth and self.checker is not None:
            creds = parse_basic(presented.auth[0].decode("latin-1")) if len(presented.auth) == 1 else None
            if creds is None:
                log.warning(
                    "flow=%s proxy authentication failed from %s: %s",
                    flow.id,
                    peer,
                    "credentials sent more than once" if len(presented.auth) > 1 else "malformed credentials",
                )
                return self._challenge()
            checked = await self._check(flow, peer, *creds)
            if isinstance(checked, Challenge):
                return checked
            claim = _Claim(checked, "proxy_auth")
        claim = claim or header_claim or self._tunnels.get(flow.client_conn)
        if claim is None and self.checker is not None and self.settings.auth_required:
            return self._challenge()
        if claim is not None and flow.request.method == "CONNECT":
            self._tunnels[flow.client_conn] = claim
        flow.metadata[METADATA_CLAIM] = claim
        return None

    def _label(self, user: str) -> str:
        """How logs name a user who tried to sign in: a users-file name as it is; anything else
        (which may be a password typed into the user field) only as a keyed digest."""
        if self.checker is not None and self.checker.knows(user):
            return user.casefold()
        digest = hmac.new(self._label_pepper, user.casefold().encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"unknown-user#{digest.hexdigest()[:12]}"

    def _log_backoffs(self, flow: http.HTTPFlow, user: str, peer: str | None, backoffs: list[Backoff]) -> None:
        for b in backoffs:
            log.warning(
                "flow=%s proxy authentication throttled (%s): user=%s source=%s failures=%d backoff=%.0fs "
                "refused_meanwhile=%d",
                flow.id,
                b.by,
                self._label(user),
                peer,
                b.failures,
                b.seconds,
                b.refused,
            )

    async def _check(self, flow: http.HTTPFlow, peer: str | None, user: str, password: str) -> str | Challenge:
        """The canonical user for these credentials, or the 407 to answer. Throttled and
        excess attempts are answered without running scrypt."""
        assert self.checker is not None
        source = source_key(peer)
        name = user.casefold()
        throttled = self.throttle.check("source", source)
        if throttled is None:
            hit = self.checker.cached(user, password, source)
            if hit is not None:  # verified before from this source: free, and no guess
                return hit
            throttled = self.throttle.check("user", name)
            if throttled is not None:  # a guess at a throttled user counts against its source
                self._log_backoffs(flow, user, peer, self.throttle.failed(None, source))
        if throttled is not None:
            if throttled.first:
                log.warning(
                    "flow=%s proxy authentication refused without a check (%s throttled): user=%s source=%s "
                    "retry_after=%.0fs",
                    flow.id,
                    throttled.by,
                    self._label(user),
                    peer,
                    throttled.retry_after_s,
                )
            return self._challenge(retry_after_s=throttled.retry_after_s, why="authentication-throttled")
        share = self._capacity if not self.throttle.suspect(name, source) else max(1, self._capacity // 2)
        if self._pending >= share:
            log.warning("flow=%s proxy authentication refused from %s: too many checks pending", flow.id, peer)
            return self._challenge(retry_after_s=1.0, why="authentication-busy")
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self.settings.throttle.workers, thread_name_prefix="promptfence-auth"
            )
        self.throttle.begin(name, source)
        self._pending += 1
        try:
            loop = asyncio.get_running_loop()
            verified = await loop.run_in_executor(self._pool, self.checker.verify, user, password, source)
        except BaseException:
            self.throttle.cancel(name, source)
            raise
        finally:
            self._pending -= 1
        if verified is None:
            self._log_backoffs(flow, user, peer, self.throttle.failed(name, source))
            log.warning("flow=%s proxy authentication failed from %s", flow.id, peer)
            return self._challenge()
        self.throttle.succeeded(name, source)
        return verified

    def close(self) -> None:
        """Stop the password-check threads (pending checks finish)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def _challenge(self, *, retry_after_s: float | None = None, why: str = "authentication-required") -> Challenge:
        headers = {
            "Proxy-Authenticate": f'Basic realm="{self.settings.realm}", charset="UTF-8"',
            "Content-Type": "text/plain; charset=utf-8",
            "X-PromptFence": why,
        }
        body = b"PromptFence: proxy authentication required. Sign in with your company account.\n"
        if retry_after_s is not None:
            seconds = max(1, math.ceil(retry_after_s))
            headers["Retry-After"] = str(seconds)
            body = (
                f"PromptFence: too many sign-in attempts; try again in {seconds} s. Sign in with your company "
                "account.\n"
            ).encode()
        return Challenge(407, headers, body)

    def _refusal(self, why: str) -> Challenge:
        return Challenge(
            403,
            {"Content-Type": "text/plain; charset=utf-8", "X-PromptFence": "identity-refused"},
            f"PromptFence: request refused: {why}.\n".encode(),
        )

    def _groups(self, user: str) -> tuple[str, ...]:
        groups = self.settings.directory.groups_for(user)
        if groups is None:
            return (self.settings.default_group,) if self.settings.default_group else ()
        return groups

    def identify(self, flow: http.HTTPFlow) -> Identity:
        peer = _peer(flow)
        if METADATA_CLAIM in flow.metadata:
            claim = flow.metadata[METADATA_CLAIM]
            claim = claim if isinstance(claim, _Claim) else None
        else:
            # Not admitted (e.g. called directly): honour only what this request proves by itself.
            presented = self._take(flow)
            try:
                claim = self._header_claim(flow, presented)
            except _Refused:
                claim = None
            claim = claim or self._tunnels.get(flow.client_conn)
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
    auth = config.proxy_auth
    throttle = ThrottleSettings(
        max_failures=auth.max_failures,
        max_source_failures=auth.max_source_failures,
        window_s=auth.window_s,
        base_backoff_s=auth.base_backoff_s,
        max_backoff_s=auth.max_backoff_s,
        workers=auth.verify_workers,
        queue=auth.verify_queue,
        cache_s=auth.cache_s,
    )
    problem = throttle.problem()
    if problem is not None:
        raise ConfigError(problem, field="identity.proxy_auth")
    header = config.trusted_header
    trusted = parse_networks(header.trusted_sources, field_name="identity.trusted_header.trusted_sources")
    if header.name and not trusted:
        raise ConfigError(
            "a trusted header needs trusted_sources: it is only believed from those addresses",
            field="identity.trusted_header.trusted_sources",
        )
    names: set[str] = {"proxy-authorization"}
    for key, name in (("name", header.name), ("groups_name", header.groups_name)):
        if name is None:
            continue
        spelt = name.lower().replace("_", "-")
        if not _TOKEN.fullmatch(name) or spelt in names:
            raise ConfigError(
                "expected an HTTP header name (letters, digits, '-') distinct from Proxy-Authorization and "
                "from the other trusted header",
                field=f"identity.trusted_header.{key}",
            )
        names.add(spelt)
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
        throttle=throttle,
    )
    return ConfiguredIdentity(settings)
