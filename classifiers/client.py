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

import json
import os
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import aiohttp

from promptfence.core import Inspection, InspectionFormatError, Operation
from promptfence.errors import InspectorInvalidAnswer, InspectorUnavailable

if TYPE_CHECKING:
    from promptfence.config import Config

INSPECT_PATH = "/v1/inspect"


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


class InspectorClient:
    def __init__(self, base_url: str, *, timeout_s: float = 10.0, expected_detectors: Iterable[str] = ()) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.expected_detectors = tuple(dict.fromkeys(expected_detectors))
        self._session: aiohttp.ClientSession | None = None

    @classmethod
    def for_config(cls, config: Config, *, base_url: str | None = None) -> InspectorClient:
        """The client the proxy uses: the inspector's URL (or ``base_url``), the proxy's
        round-trip budget, and the detectors the configuration says the inspector runs."""
        from classifiers.registry import expected_detector_names

        return cls(
            base_url or config.inspector.base_url,
            timeout_s=config.proxy.inspect_timeout_s,
            expected_detectors=expected_detector_names(config.inspector, config.memory),
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
        except aiohttp.ClientError as exc:
            raise InspectorUnavailable(f"inspector unreachable: {_describe(exc)}") from None
        return parse_answer(answer, self.expected_detectors)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
