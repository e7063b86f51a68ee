"""Stand-ins for the addon's collaborators in tests that drive it with mitmproxy's helpers."""

from __future__ import annotations

from mitmproxy import http
from mitmproxy.test import tflow

from promptfence.core import LogRecord


class ListRecorder:
    """The addon's recorder: keeps every record in memory, in order."""

    def __init__(self) -> None:
        self.records: list[LogRecord] = []

    async def record(self, record: LogRecord) -> None:
        self.records.append(record)

    async def complete(self, record: LogRecord) -> None:
        """The answer's completion replaces the decision-time record with the same id."""
        for index, kept in enumerate(self.records):
            if kept.record_id == record.record_id:
                self.records[index] = record
                return
        self.records.append(record)


def chatgpt_flow(body: bytes, path: str = "/backend-api/f/conversation") -> http.HTTPFlow:
    """A ``tflow`` POST to https://chatgpt.com``path`` carrying ``body``."""
    flow = tflow.tflow()
    flow.request.host = "chatgpt.com"
    flow.client_conn.sni = "chatgpt.com"
    flow.request.port = 443
    flow.request.scheme = "https"
    flow.request.method = "POST"
    flow.request.path = path
    flow.request.headers["Host"] = "chatgpt.com"
    flow.request.content = body
    return flow
