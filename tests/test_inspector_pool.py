"""Several inspectors behind one proxy (issue 17): least-loaded, health-checked, fail-over.

Real HTTP: each stand-in inspector is an aiohttp server on its own port answering complete
Inspections that name it (a detector run ``presidio`` whose error field is unused; its name is
in the notes). A gate holds one inspector's answers open to make it the loaded one.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from classifiers.client import InspectorClient, InspectorPool
from promptfence.config import Config, InspectorConfig
from promptfence.core import DetectorRun, DetectorStatus, Identity, Inspection, Operation, OperationKind
from promptfence.errors import InspectorUnavailable


def _op(prompt: str = "hello", user: str = "u") -> Operation:
    return Operation("chatgpt", "genai_chat", "chatgpt.send_prompt", OperationKind.SEND_PROMPT, Identity(user), prompt)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Standin:
    name: str
    port: int = field(default_factory=_free_port)
    healthy: bool = True
    gate: asyncio.Event | None = None
    served: int = 0
    waiting: int = 0
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        async def inspect(request: web.Request) -> web.Response:
            await request.read()
            if self.gate is not None:
                self.waiting += 1
                await self.gate.wait()
                self.waiting -= 1
            self.served += 1
            inspection = Inspection(
                findings=(),
                topics={},
                runs=(DetectorRun("presidio", DetectorStatus.OK, 1.0),),
                elapsed_ms=1.0,
                notes=(self.name,),
            )
            return web.json_response(inspection.to_dict())

        async def health(_: web.Request) -> web.Response:
            return web.json_response({"status": "ok"}, status=200 if self.healthy else 503)

        app = web.Application()
        app.router.add_post("/v1/inspect", inspect)
        app.router.add_get("/healthz", health)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def standins() -> AsyncIterator[list[Standin]]:
    servers = [Standin("a"), Standin("b")]
    for s in servers:
        await s.start()
    yield servers
    for s in servers:
        await s.stop()


async def test_prompts_go_to_the_least_loaded_inspector(standins: list[Standin]) -> None:
    a, b = standins
    a.gate = asyncio.Event()
    pool = InspectorPool([a.url, b.url], expected_detectors=("presidio",), health_interval_s=0, affinity_slack=-1)
    try:
        # Turns alternate while loads are equal: the first prompt may go to either.
        first = asyncio.ensure_future(pool.inspect(_op()))
        for _ in range(200):
            if a.waiting or b.served:
                break
            await asyncio.sleep(0.01)
        if b.served:  # it went to b (and is done): send until one is held at a
            await first
            first = asyncio.ensure_future(pool.inspect(_op()))
            for _ in range(200):
                if a.waiting:
                    break
                await asyncio.sleep(0.01)
        assert a.waiting == 1
        # a has one in flight: the next five (one at a time) all go to b.
        before = b.served
        for _ in range(5):
            got = await pool.inspect(_op())
            assert got.notes == ("b",)
        assert b.served - before == 5
        a.gate.set()
        assert (await first).notes == ("a",)
        # Idle again: both take turns.
        notes = {(await pool.inspect(_op())).notes[0] for _ in range(4)}
        assert notes == {"a", "b"}
    finally:
        await pool.close()


async def test_a_down_inspector_gets_no_prompts_until_healthy_again(standins: list[Standin]) -> None:
    a, b = standins
    pool = InspectorPool([a.url, b.url], expected_detectors=("presidio",), health_interval_s=0, affinity_slack=-1)
    try:
        a.healthy = False
        assert await pool.check_health() == [False, True]
        assert {(await pool.inspect(_op())).notes[0] for _ in range(6)} == {"b"}
        a.healthy = True
        assert await pool.check_health() == [True, True]
        assert {(await pool.inspect(_op())).notes[0] for _ in range(6)} == {"a", "b"}
    finally:
        await pool.close()


async def test_a_refused_connection_is_retried_on_another_inspector(standins: list[Standin]) -> None:
    a, b = standins
    await a.stop()  # nothing listens on a's port: connection refused
    # No affinity: the turn order sends the first prompt to a. With affinity the user's home
    # depends on the ports' hash, and a prompt homed on b never touches a.
    pool = InspectorPool([a.url, b.url], expected_detectors=("presidio",), health_interval_s=0, affinity_slack=-1)
    try:
        for _ in range(4):
            assert (await pool.inspect(_op())).notes == ("b",)
        assert pool.backends[0].healthy is False  # marked down by the refusal
    finally:
        await pool.close()


async def test_the_health_task_runs_with_the_pool_and_stops_with_it(standins: list[Standin]) -> None:
    a, b = standins
    a.healthy = False
    pool = InspectorPool([a.url, b.url], expected_detectors=("presidio",), health_interval_s=0.05)
    try:
        await pool.inspect(_op())  # starts the watcher
        for _ in range(200):
            if not pool.backends[0].healthy:
                break
            await asyncio.sleep(0.02)
        assert pool.backends[0].healthy is False
        task = pool._health_task
        assert task is not None and not task.done()
    finally:
        await pool.close()
    assert task.done()


async def test_with_every_inspector_down_the_failure_is_reported(standins: list[Standin]) -> None:
    for s in standins:
        await s.stop()
    pool = InspectorPool([s.url for s in standins], expected_detectors=("presidio",), health_interval_s=0)
    try:
        with pytest.raises(InspectorUnavailable, match="unreachable"):
            await pool.inspect(_op())
    finally:
        await pool.close()


async def test_a_users_prompts_stay_on_one_inspector_unless_it_is_overloaded(standins: list[Standin]) -> None:
    """The conversation window lives in one inspector's memory: a user's prompts go there."""
    a, b = standins
    pool = InspectorPool([a.url, b.url], expected_detectors=("presidio",), health_interval_s=0, affinity_slack=0)
    try:
        homes = {}
        for i in range(12):
            user = f"user{i}"
            seen = {(await pool.inspect(_op(user=user))).notes[0] for _ in range(3)}
            assert len(seen) == 1, user  # every prompt of this user on one inspector
            homes[user] = seen.pop()
        assert set(homes.values()) == {"a", "b"}  # users are spread over both
        # The home inspector of one user is busy (slack 0): that user's next prompt goes elsewhere.
        user = next(u for u, home in homes.items() if home == "a")
        a.gate = asyncio.Event()
        held = asyncio.ensure_future(pool.inspect(_op(user=user)))
        for _ in range(300):
            if a.waiting:
                break
            await asyncio.sleep(0.01)
        assert a.waiting == 1
        assert (await pool.inspect(_op(user=user))).notes == ("b",)
        a.gate.set()
        assert (await held).notes == ("a",)
        assert (await pool.inspect(_op(user=user))).notes == ("a",)  # home again once idle
        # A home that goes down moves only its users; they come back when it is healthy.
        a.healthy = False
        await pool.check_health()
        assert (await pool.inspect(_op(user=user))).notes == ("b",)
        a.healthy = True
        await pool.check_health()
        assert (await pool.inspect(_op(user=user))).notes == ("a",)
    finally:
        await pool.close()


def test_the_proxy_builds_a_pool_only_for_a_list_of_urls() -> None:
    single = InspectorClient.for_config(Config())
    assert not isinstance(single, InspectorPool)
    config = Config(inspector=InspectorConfig(urls=["http://10.0.0.1:8731/", "http://10.0.0.2:8731"]))
    pool = InspectorClient.for_config(config)
    assert isinstance(pool, InspectorPool)
    assert [b.client.base_url for b in pool.backends] == ["http://10.0.0.1:8731", "http://10.0.0.2:8731"]
    assert not isinstance(InspectorClient.for_config(config, base_url="http://10.0.0.9:1"), InspectorPool)
    with pytest.raises(ValueError):
        InspectorPool([])
