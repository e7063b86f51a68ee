"""The proxy's side of the inspector API. Light on purpose: aiohttp and core types only.

It implements the proxy's ``InspectionPort``. An answer is believed only when it is complete:
a JSON object in the Inspection schema (see :meth:`Inspection.from_dict`) with a run for every
detector the configuration says the inspector runs. Anything less raises
:class:`InspectorInvalidAnswer` naming the field (``answer missing runs for presidio, secrets``);
transport failures and non-200 answers raise :class:`InspectorUnavailable`
(``inspector answered HTTP 500``, ``inspector unreachable: connection refused``); a timeout
propagates as :class:`TimeoutError` for the caller to map. Messages never quote the prompt or
the answer. Nothing here retries, because the prompt is waiting.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
import logging
import os
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from promptfence.core import Inspection, InspectionFormatError, Operation
from promptfence.errors import InspectorInvalidAnswer, InspectorUnavailable

if TYPE_CHECKING:
    from promptfence.config import Config

log = logging.getLogger("promptfence.proxy")

INSPECT_PATH = "/v1/inspect"
HEALTH_PATH = "/healthz"


class _NonFiniteNumber(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NonFiniteNumber(name)


def parse_answer(body: bytes, expected_detectors: Iterable[str] = ()) -> Inspection:
    """The Inspection in an inspector's answer body, or :class:`InspectorInvalidAnswer`.

    Besides the schema, the answer must hold a run for each of ``expected_detectors`` (others
    may be present too) and at least one run: an inspection nothing ran on inspected nothing.
    """
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except _NonFiniteNumber:
        raise InspectorInvalidAnswer("answer has a non-finite number (NaN or Infinity)") from None
    except (ValueError, RecursionError):  # not JSON, not UTF-8, too deep, a number too long
        raise InspectorInvalidAnswer("answer is not JSON") from None
    if not isinstance(data, dict):
        raise InspectorInvalidAnswer("answer is not a JSON object")
    try:
        inspection = Inspection.from_dict(data)
    except InspectionFormatError as exc:
        raise InspectorInvalidAnswer(f"answer {exc}") from None
    except (KeyError, TypeError, ValueError, AttributeError) as exc:  # a schema case from_dict missed
        raise InspectorInvalidAnswer(f"answer is malformed ({type(exc).__name__})") from None
    expected = tuple(dict.fromkeys(expected_detectors))
    seen: set[str] = set()
    for run in inspection.runs:
        if run.detector in seen:
            named = run.detector if run.detector in expected else "one detector"
            raise InspectorInvalidAnswer(f"answer has more than one run for {named}")
        seen.add(run.detector)
    missing = [name for name in expected if name not in seen]
    if missing:
        raise InspectorInvalidAnswer(f"answer missing runs for {', '.join(missing)}")
    if not inspection.runs:
        raise InspectorInvalidAnswer("answer has no detector runs")
    return inspection


def _describe(exc: aiohttp.ClientError) -> str:
    """A short, content-free description of a transport failure."""
    if isinstance(exc, aiohttp.ClientConnectorError):
        os_error = exc.os_error
        if isinstance(os_error, socket.gaierror):
            return "name resolution failed"
        if os_error.errno:
            return os.strerror(os_error.errno).lower()
        return "connection failed"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "server disconnected"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "answer body was cut off"
    if isinstance(exc, aiohttp.InvalidURL):
        return "invalid inspector URL"
    if isinstance(exc, aiohttp.ClientOSError) and exc.errno:
        return os.strerror(exc.errno).lower()
    return type(exc).__name__


class InspectorUnreachable(InspectorUnavailable):
    """No connection could be made: nothing was sent, so another inspector may take the prompt."""


class InspectorClient:
    def __init__(self, base_url: str, *, timeout_s: float = 10.0, expected_detectors: Iterable[str] = ()) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.expected_detectors = tuple(dict.fromkeys(expected_detectors))
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_config(cls, config: Config, *, base_url: str | None = None) -> InspectorClient:
        """The client the proxy uses: the inspector's URL (or ``base_url``), the proxy's
        round-trip budget, and the detectors the configuration says the inspector runs.
        With ``inspector.urls`` (and no ``base_url``): an :class:`InspectorPool` over them."""
        from classifiers.registry import expected_detector_names

        expected = expected_detector_names(config.inspector, config.memory, config.topics)
        if base_url is None and config.inspector.urls:
            return InspectorPool(
                config.inspector.urls,
                timeout_s=config.proxy.inspect_timeout_s,
                expected_detectors=expected,
                health_interval_s=config.inspector.health_interval_s,
                affinity_slack=config.inspector.affinity_slack,
            )
        return cls(
            base_url or config.inspector.base_url, timeout_s=config.proxy.inspect_timeout_s, expected_detectors=expected
        )

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def inspect(self, operation: Operation) -> Inspection:
        # ensure_ascii: a lone surrogate in the prompt travels as a \\u escape, never as
        # bytes that are not UTF-8; the inspector replaces it (classifiers.service).
        body = json.dumps({"operation": operation.to_dict()}, ensure_ascii=True).encode("ascii")
        session = self._get_session()
        try:
            async with session.post(
                f"{self.base_url}{INSPECT_PATH}", data=body, headers={"Content-Type": "application/json"}
            ) as resp:
                if resp.status != 200:
                    raise InspectorUnavailable(f"inspector answered HTTP {resp.status}")
                answer = await resp.read()
        except TimeoutError:  # aiohttp's timeouts are TimeoutErrors (some also ClientErrors): the caller maps them
            raise
        except aiohttp.ClientConnectorError as exc:
            raise InspectorUnreachable(f"inspector unreachable: {_describe(exc)}") from None
        except aiohttp.ClientError as exc:
            raise InspectorUnavailable(f"inspector unreachable: {_describe(exc)}") from None
        return parse_answer(answer, self.expected_detectors)

    async def healthy(self, timeout_s: float = 2.0) -> bool:
        """Whether ``/healthz`` answers 200 within ``timeout_s``."""
        session = self._get_session()
        try:
            async with session.get(
                f"{self.base_url}{HEALTH_PATH}", timeout=aiohttp.ClientTimeout(total=timeout_s)
            ) as resp:
                await resp.read()
                return resp.status == 200
        except (TimeoutError, aiohttp.ClientError, OSError):
            return False

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


@dataclass
class _Backend:
    client: InspectorClient
    healthy: bool = True
    in_flight: int = 0


class InspectorPool(InspectorClient):
    """Several inspectors behind one proxy (issue 17): each prompt goes to the healthy one with
    the fewest inspections in flight from this proxy (least-loaded; ties in turn), with user
    affinity: a user's prompts to one app go to the same inspector (rendezvous hashing), so that
    its conversation window (classifiers/conversation_window.py, in that inspector's memory)
    sees every prompt of a conversation, unless that inspector has more than
    ``affinity_slack`` prompts in flight beyond the least-loaded one (then least-loaded wins: a
    join across that conversation's prompts may be missed). ``affinity_slack`` < 0: no affinity.

    Health: ``/healthz`` of every inspector every ``health_interval_s`` (a tracked task, started
    with the first prompt and stopped by :meth:`close`); an inspector that refuses a connection
    or answers an HTTP error is marked down at once and gets no prompts until its health check
    passes. A prompt whose connection was refused (nothing was sent) is tried once on another
    inspector; one that timed out or got an error answer is not (the prompt is waiting, and a
    prompt that slows one inspector down would slow the next). With every inspector marked
    down, all are tried as if healthy: the health view may be stale, and failing is the same.
    """

    def __init__(
        self,
        base_urls: Sequence[str],
        *,
        timeout_s: float = 10.0,
        expected_detectors: Iterable[str] = (),
        health_interval_s: float = 2.0,
        affinity_slack: int = 4,
    ) -> None:
        urls = list(dict.fromkeys(u.rstrip("/") for u in base_urls))
        if not urls:
            raise ValueError("an inspector pool needs at least one URL")
        super().__init__(urls[0], timeout_s=timeout_s, expected_detectors=expected_detectors)
        self.backends = [
            _Backend(InspectorClient(u, timeout_s=timeout_s, expected_detectors=self.expected_detectors)) for u in urls
        ]
        self.health_interval_s = health_interval_s
        self.affinity_slack = affinity_slack
        self._turn = itertools.count()
        self._health_task: asyncio.Task[None] | None = None

    def _pick(self, exclude: _Backend | None = None, affinity: str | None = None) -> _Backend | None:
        candidates = [b for b in self.backends if b is not exclude]
        healthy = [b for b in candidates if b.healthy] or candidates
        if not healthy:
            return None
        least = min(b.in_flight for b in healthy)
        if affinity is not None and self.affinity_slack >= 0:
            # Rendezvous hashing: the same user and app rank the same inspector first for as
            # long as it is healthy, and a failed one moves only its own users elsewhere.
            home = max(healthy, key=lambda b: hashlib.sha256(f"{affinity}\0{b.client.base_url}".encode()).digest())
            if home.in_flight <= least + self.affinity_slack:
                return home
        tied = [b for b in healthy if b.in_flight == least]
        return tied[next(self._turn) % len(tied)]

    def _ensure_health_task(self) -> None:
        if self.health_interval_s > 0 and (self._health_task is None or self._health_task.done()):
            self._health_task = asyncio.get_running_loop().create_task(self._watch_health())

    async def _watch_health(self) -> None:
        while True:
            await self.check_health()
            await asyncio.sleep(self.health_interval_s)

    async def check_health(self) -> list[bool]:
        """Ask every inspector's /healthz once; returns (and records) who is healthy."""
        timeout = min(2.0, max(0.2, self.health_interval_s))
        states = await asyncio.gather(*(b.client.healthy(timeout) for b in self.backends))
        for backend, ok in zip(self.backends, states, strict=True):
            if ok != backend.healthy:
                log.warning("inspector %s is %s", backend.client.base_url, "back" if ok else "down")
            backend.healthy = ok
        return list(states)

    async def inspect(self, operation: Operation) -> Inspection:
        self._ensure_health_task()
        affinity = "\0".join((operation.identity.user, operation.app))
        backend = self._pick(affinity=affinity)
        assert backend is not None
        try:
            return await self._inspect_on(backend, operation)
        except InspectorUnreachable:
            other = self._pick(exclude=backend, affinity=affinity)
            if other is None:
                raise
            return await self._inspect_on(other, operation)

    async def _inspect_on(self, backend: _Backend, operation: Operation) -> Inspection:
        backend.in_flight += 1
        try:
            return await backend.client.inspect(operation)
        except InspectorUnavailable:
            backend.healthy = False  # until its health check passes
            raise
        finally:
            backend.in_flight -= 1

    async def close(self) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
            self._health_task = None
        for backend in self.backends:
            await backend.client.close()
        await super().close()
