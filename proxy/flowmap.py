"""From a mitmproxy flow to what the wire modules need, shared by the addon and offline replay.

Both the live addon and ``promptfence replay`` go through these functions, so a replayed flow
is mapped, extracted and decoded exactly as the proxy would have done it.
"""

from __future__ import annotations

from mitmproxy import http

from promptfence.core import Identity, Operation
from proxy.catalogue import Catalogue, Match
from proxy.registry import DECODERS, EXTRACTORS
from proxy.wire.base import AnswerDecoder, Extraction, ExtractionError, RequestData


def match_flow(catalogue: Catalogue, flow: http.HTTPFlow) -> Match | None:
    return catalogue.match(flow.request.pretty_host, flow.request.method, flow.request.path)


def extract(flow: http.HTTPFlow, match: Match, max_body: int) -> tuple[Extraction, str | None]:
    """Run the operation's extractor; an error string (never quoting the body) instead of raising."""
    name = match.operation.extractor
    if name is None:
        return Extraction(), None
    raw = flow.request.raw_content or b""
    if len(raw) > max_body:
        return Extraction(), f"request body over {max_body} bytes"
    try:
        body = flow.request.get_content(strict=True) or b""
    except ValueError:
        return Extraction(), "request body has an undecodable content-encoding"
    path, _, query = flow.request.path.partition("?")
    data = RequestData(
        body=body,
        path=path,
        query=query,
        headers={k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in flow.request.headers.fields},
    )
    try:
        return EXTRACTORS[name](data), None
    except ExtractionError as exc:
        return Extraction(), f"could not decode request: {exc}"
    except Exception as exc:  # an extractor bug is a recorded error, never a crash of the flow
        return Extraction(), f"could not decode request: {type(exc).__name__}"


def operation_of(
    flow: http.HTTPFlow, match: Match, extraction: Extraction, identity: Identity, conversation_id: str | None
) -> Operation:
    """The operation a matched flow performs: the catalogue's ids, who sent it, what it carries."""
    return Operation(
        app=match.app.app,
        app_type=match.app.app_type,
        operation_id=match.operation.operation_id,
        kind=match.operation.kind,
        identity=identity,
        prompt=extraction.prompt,
        conversation_id=conversation_id,
        message_id=extraction.message_id,
        parent_message_id=extraction.parent_message_id,
        model=extraction.model,
        attachments=extraction.attachments,
        host=flow.request.pretty_host,
        path=flow.request.path.split("?", 1)[0],
    )


def new_decoder(match: Match | None) -> AnswerDecoder | None:
    if match is None or match.operation.decoder is None:
        return None
    return DECODERS[match.operation.decoder]()
