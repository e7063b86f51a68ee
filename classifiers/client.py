"""The proxy's side of the inspector API. Light on purpose: aiohttp and core types only.

It implements the proxy's ``InspectionPort``. Transport failures and non-200 answers raise
:class:`InspectorUnavailable`, which the addon records as a detector error for the policy's
``on_error`` rule; nothing here retries, because the prompt is waiting.
"""

from __future__ import annotations

import aiohttp

from promptfence.core import Inspection, Operation
from promptfence.errors import InspectorUnavailable


class InspectorClient:
    def __init__(self, base_url: str, *, timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        return self._session

    async def inspect(self, operation: Operation) -> Inspection:
        session = self._get_session()
        try:
            async with session.post(f"{self.base_url}/v1/inspect", json={"operation": operation.to_dict()}) as resp:
                if resp.status != 200:
                    raise InspectorUnavailable(f"inspector answered HTTP {resp.status}")
                data = await resp.json()
        except aiohttp.ClientError as exc:
            raise InspectorUnavailable(f"inspector unreachable: {type(exc).__name__}") from None
        try:
            return Inspection.from_dict(data)
        except (KeyError, TypeError, ValueError) as exc:
            raise InspectorUnavailable(f"inspector answered an invalid inspection: {type(exc).__name__}") from None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
