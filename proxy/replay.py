"""Offline replay: captured flows (mitmproxy ``.mitm`` files, browser HAR exports) -> operations.

Every flow goes through the same mapping, extraction and answer reconstruction as the live
addon (:mod:`proxy.flowmap`), so what ``promptfence replay`` reports is what the proxy would
have seen. Inspection and policy are later steps: the CLI (the composition root) applies them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mitmproxy import http, io
from mitmproxy.exceptions import FlowReadException
from mitmproxy.io import har

from promptfence.core import Operation, OperationKind
from promptfence.errors import PromptFenceError
from proxy.catalogue import Catalogue
from proxy.flowmap import extract, match_flow, new_decoder, operation_of, recorded_host
from proxy.identity import ClientAddressIdentity, IdentityResolver
from proxy.tap import decode_whole
from proxy.wire.base import Answer


class CaptureFileError(PromptFenceError):
    """The file is neither a mitmproxy flow file nor a HAR export (names the file, never content)."""


@dataclass(frozen=True)
class ReplayedFlow:
    index: int
    operation: Operation
    extract_error: str | None
    answer: Answer | None
    status_code: int | None


def _is_har(path: Path) -> bool:
    with path.open("rb") as fh:
        head = fh.read(64).lstrip()
    return head.startswith(b"{")


def read_flows(path: Path) -> Iterator[http.HTTPFlow]:
    """The HTTP flows of a ``.mitm`` file or a HAR export, in file order."""
    if not path.is_file():
        raise CaptureFileError(f"{path}: no such file")
    if _is_har(path):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = data["log"]["entries"]
        except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError):
            raise CaptureFileError(f"{path}: not a HAR file (no log.entries)") from None
        for number, entry in enumerate(entries):
            try:
                yield har.request_to_flow(entry)
            except Exception as exc:  # one malformed entry must not hide the rest
                raise CaptureFileError(f"{path}: HAR entry {number} unreadable ({type(exc).__name__})") from None
        return
    with path.open("rb") as fh:
        try:
            for flow in io.FlowReader(fh).stream():
                if isinstance(flow, http.HTTPFlow):
                    yield flow
        except FlowReadException as exc:
            raise CaptureFileError(f"{path}: not a mitmproxy flow file ({exc})") from None


def replay_flows(
    catalogue: Catalogue,
    flows: Iterator[http.HTTPFlow],
    *,
    identity: IdentityResolver | None = None,
    max_body: int = 8 * 1024 * 1024,
) -> Iterator[ReplayedFlow | None]:
    """One :class:`ReplayedFlow` per inspected operation; None for flows the proxy lets through."""
    who = identity or ClientAddressIdentity()
    for index, flow in enumerate(flows):
        host = recorded_host(flow)
        match = match_flow(catalogue, flow, host)
        unknown = match is not None and match.operation.kind is OperationKind.UNKNOWN
        if match is None or not match.operation.inspect or flow.request.method == "CONNECT":
            yield None
            continue
        if unknown and not flow.request.raw_content:
            yield None  # as live: a bodyless request on an unmapped path is not inspected
            continue
        extraction, error = extract(flow, match, max_body)
        if unknown and error is None and not extraction.prompt.strip():
            yield None
            continue
        answer: Answer | None = None
        decoder = new_decoder(match)
        response = flow.response
        blocked_here = response is not None and response.headers.get("x-promptfence") is not None
        if decoder is not None and response is not None and not blocked_here:
            answer = decode_whole(decoder, response.raw_content or b"", response.headers.get("content-encoding", ""))
        conversation = extraction.conversation_id or (answer.conversation_id if answer else None)
        operation = operation_of(flow, match, extraction, who.identify(flow), conversation, host)
        yield ReplayedFlow(index, operation, error, answer, response.status_code if response else None)
