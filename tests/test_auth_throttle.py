"""Issue 13, item 5: proxy authentication under attack.

Failed logins are throttled per user and per source with exponential backoff; a throttled
attempt is a 407 with ``Retry-After`` that runs no scrypt; scrypt runs in a small bounded pool
(excess attempts fail fast) so a flood cannot starve real logins; the logs name the source and
the user (or a keyed digest of an unknown one), never a password. Everything here counts
scrypt runs against a fake clock: no test measures time.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from pathlib import Path

import pytest
from mitmproxy import http
from mitmproxy.test import tflow

from promptfence.config import IdentityConfig, ProxyAuthConfig
from promptfence.errors import ConfigError
from proxy.identity import (
    Challenge,
    ConfiguredIdentity,
    IdentitySettings,
    ScryptHash,
    ThrottleSettings,
    build_identity,
    hash_password,
    source_key,
)

FAST = {"n": 2**10, "r": 8, "p": 1}
CANARY = "Zq9canaryPw"  # in every password below; never in a log line
ALICE_PW = f"alice-{CANARY}-right"
LIMITS = ThrottleSettings(
    max_failures=10, max_source_failures=30, window_s=600, base_backoff_s=1, max_backoff_s=64, workers=2, queue=8
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def scrypt_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    runs: list[int] = []
    derive = ScryptHash.derive

    def counting(self: ScryptHash, password: str) -> bytes | None:
        runs.append(1)
        return derive(self, password)

    monkeypatch.setattr(ScryptHash, "derive", counting)
    return runs


def _resolver(clock: Clock, limits: ThrottleSettings = LIMITS) -> ConfiguredIdentity:
    users = {"alice@example.com": hash_password(ALICE_PW, **FAST), "bob@example.com": hash_password("bob-pw", **FAST)}
    return ConfiguredIdentity(IdentitySettings(users=users, auth_required=True, throttle=limits), clock=clock)


def _flow(peer: str, user: str, password: str, method: str = "CONNECT") -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.client_conn.peername = (peer, 40000)
    flow.request.method = method
    flow.request.headers["Proxy-Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    return flow


async def _try(resolver: ConfiguredIdentity, peer: str, user: str, password: str) -> Challenge | None:
    return await resolver.admit(_flow(peer, user, password))


def _throttled(challenge: Challenge | None) -> bool:
    return challenge is not None and challenge.headers.get("X-PromptFence") == "authentication-throttled"


async def test_a_thousand_wrong_passwords_run_scrypt_only_up_to_the_limit(scrypt_runs: list[int]) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    answers = [await _try(resolver, "10.0.0.66", "alice@example.com", f"guess{i}-{CANARY}") for i in range(1000)]
    assert all(a is not None and a.status == 407 for a in answers)
    assert len(scrypt_runs) == LIMITS.max_failures  # the rest were refused without a check
    assert not any(_throttled(a) for a in answers[: LIMITS.max_failures])
    assert all(_throttled(a) for a in answers[LIMITS.max_failures :])
    last = answers[-1]
    assert last is not None
    assert last.headers["Proxy-Authenticate"].startswith("Basic realm=")
    assert int(last.headers["Retry-After"]) >= 1
    # The right password is refused too while the backoff runs: throttling is not an oracle.
    assert _throttled(await _try(resolver, "10.0.0.66", "alice@example.com", ALICE_PW))
    assert len(scrypt_runs) == LIMITS.max_failures


async def test_backoff_doubles_up_to_the_cap_and_a_correct_login_after_it_works(scrypt_runs: list[int]) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    for i in range(LIMITS.max_failures):
        await _try(resolver, "10.0.0.7", "alice@example.com", f"typo{i}")
    waits = []
    for i in range(10):
        refused = await _try(resolver, "10.0.0.7", "alice@example.com", "again")
        assert _throttled(refused) and refused is not None
        waits.append(int(refused.headers["Retry-After"]))
        clock.now += waits[-1]  # the backoff has run out: one more (wrong) attempt is checked
        runs = len(scrypt_runs)
        assert not _throttled(await _try(resolver, "10.0.0.7", "alice@example.com", f"wrong{i}"))
        assert len(scrypt_runs) == runs + 1
    assert waits == [1, 2, 4, 8, 16, 32, 64, 64, 64, 64]
    clock.now += LIMITS.max_backoff_s
    assert await _try(resolver, "10.0.0.7", "alice@example.com", ALICE_PW) is None
    # Success clears the user's count: the next typo is checked, not throttled.
    assert not _throttled(await _try(resolver, "10.0.0.7", "alice@example.com", "one-typo"))


async def test_failures_are_forgotten_after_the_window(scrypt_runs: list[int]) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    for i in range(LIMITS.max_failures - 1):
        await _try(resolver, "10.0.0.7", "alice@example.com", f"typo{i}")
    clock.now += LIMITS.window_s + 1
    for i in range(LIMITS.max_failures - 1):
        assert not _throttled(await _try(resolver, "10.0.0.7", "alice@example.com", f"typo{i}"))
    assert len(scrypt_runs) == 2 * (LIMITS.max_failures - 1)


async def test_a_flood_from_one_source_does_not_throttle_another_sources_user(scrypt_runs: list[int]) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    for i in range(1000):  # a different made-up user each time: only the source count grows
        await _try(resolver, "10.0.0.66", f"user{i}@example.com", f"pw-{CANARY}")
    assert len(scrypt_runs) == LIMITS.max_source_failures
    assert _throttled(await _try(resolver, "10.0.0.66", "bob@example.com", "bob-pw"))
    assert await _try(resolver, "10.0.0.7", "alice@example.com", ALICE_PW) is None
    assert await _try(resolver, "10.0.0.8", "bob@example.com", "bob-pw") is None
    assert len(scrypt_runs) == LIMITS.max_source_failures + 2


async def test_a_throttled_user_keeps_working_where_she_signed_in_before(scrypt_runs: list[int]) -> None:
    """The success cache is per source: alice's own machine is not locked out by guesses at her
    name, and the cache is no oracle for the guessing sources."""
    clock = Clock()
    resolver = _resolver(clock)
    assert await _try(resolver, "10.0.0.7", "alice@example.com", ALICE_PW) is None
    assert len(scrypt_runs) == 1
    for source in range(LIMITS.max_failures):  # distributed guessing: one guess per source
        await _try(resolver, f"10.1.0.{source}", "alice@example.com", f"guess-{CANARY}")
    assert len(scrypt_runs) == 1 + LIMITS.max_failures
    assert await _try(resolver, "10.0.0.7", "alice@example.com", ALICE_PW) is None  # cached: no scrypt
    assert len(scrypt_runs) == 1 + LIMITS.max_failures
    # From a guessing source even the right password is refused, and each refusal counts
    # against that source until it is blocked outright.
    assert _throttled(await _try(resolver, "10.1.0.0", "alice@example.com", ALICE_PW))
    for _ in range(LIMITS.max_source_failures):
        await _try(resolver, "10.1.0.0", "alice@example.com", "guess")
    assert len(scrypt_runs) == 1 + LIMITS.max_failures


async def test_a_concurrent_flood_fills_at_most_half_the_pool_and_a_real_login_still_gets_checked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    assert resolver.checker is not None
    release = threading.Event()
    started: list[str] = []
    verify = resolver.checker.verify

    def slow_verify(user: str, password: str, source: str = "") -> str | None:
        started.append(user)
        release.wait(30)
        return verify(user, password, source)

    monkeypatch.setattr(resolver.checker, "verify", slow_verify)
    flood = [
        asyncio.ensure_future(_try(resolver, "10.0.0.66", f"user{i}@example.com", f"pw-{CANARY}")) for i in range(64)
    ]
    await asyncio.sleep(0)  # every flood attempt has been admitted to the pool or refused
    capacity = LIMITS.workers + LIMITS.queue
    refused_at_once = [t for t in flood if t.done()]
    assert len(refused_at_once) == 64 - capacity // 2
    for task in refused_at_once:
        answer = task.result()
        assert answer is not None and answer.status == 407 and answer.headers["X-PromptFence"] == "authentication-busy"
    real = asyncio.ensure_future(_try(resolver, "10.0.0.7", "alice@example.com", ALICE_PW))
    await asyncio.sleep(0)
    assert not real.done()  # admitted to the pool (the flood left room), not refused
    release.set()
    assert await asyncio.wait_for(real, 30) is None
    await asyncio.wait_for(asyncio.gather(*flood), 30)
    assert len(started) == capacity // 2 + 1
    resolver.close()


async def test_logs_name_source_and_user_never_a_password(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    resolver = _resolver(clock)
    caplog.set_level(logging.DEBUG, logger="promptfence.proxy")
    for i in range(15):
        await _try(resolver, "10.0.0.66", "alice@example.com", f"guess{i}-{CANARY}")
    for i in range(40):  # a password typed into the user field
        await _try(resolver, "10.0.0.67", f"{CANARY}-typed-as-user", f"guess{i}-{CANARY}")
    text = caplog.text
    assert CANARY not in text and "guess" not in text
    throttled = [r.getMessage() for r in caplog.records if "throttled" in r.getMessage()]
    assert any("user=alice@example.com" in m and "source=10.0.0.66" in m for m in throttled)
    assert any("user=unknown-user#" in m and "source=10.0.0.67" in m for m in throttled)
    # A refused attempt is logged once per backoff, not once per attempt.
    assert len(throttled) < 15


def test_source_key_groups_an_ipv6_64_and_keeps_ipv4_addresses() -> None:
    assert source_key("2001:db8:1:2::1") == source_key("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source_key("2001:db8:1:3::1") != source_key("2001:db8:1:2::1")
    assert source_key("::ffff:10.0.0.1") == "10.0.0.1" != source_key("10.0.0.2")


@pytest.mark.parametrize(
    "field, value",
    [("max_failures", 0), ("max_source_failures", 0), ("window_s", 0.0), ("verify_workers", 0), ("verify_queue", -1)],
)
def test_out_of_range_throttle_settings_are_a_config_error(tmp_path: Path, field: str, value: float) -> None:
    users = tmp_path / "users"
    users.write_text(f"alice@example.com:{hash_password('pw')}\n")
    auth = ProxyAuthConfig(users_file=users, **{field: value})  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=field):
        build_identity(IdentityConfig(proxy_auth=auth))
