"""From a mitmproxy flow to what the wire modules need, shared by the addon and offline replay.

Both the live addon and ``promptfence replay`` go through these functions, so a replayed flow
is mapped, extracted and decoded exactly as the proxy would have done it.

**Which host a request is for.** A request names its host up to four times: the ``CONNECT``
target of its tunnel, the TLS SNI, the request target (absolute form, or ``:authority``) and the
``Host`` header. mitmproxy connects to the tunnel's target (or, outside a tunnel, the request
target), and a CDN in front of an app may route on the ``Host`` header or the SNI, so if *any*
of them is a catalogue host they must all agree;
otherwise the request is refused as misdirected (:class:`Route` ``conflict``), never forwarded
as somebody else's traffic.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from mitmproxy import http

from promptfence.core import Identity, Operation
from proxy.canonical import canonical_host, canonical_path, split_target
from proxy.catalogue import Catalogue, Match
from proxy.registry import DECODERS, EXTRACTORS
from proxy.request_body import Uninspectable, decoded_body
from proxy.wire.base import AnswerDecoder, Extraction, ExtractionError, RequestData
from proxy.wire.generic import other_fields_text

# Extractors that already read every text of the body: nothing is left for other_fields_text.
FULL_READ_EXTRACTORS = frozenset({"generic.text_leaves", "upload.raw"})

_SURROGATES = re.compile("[\ud800-\udfff]")
INVALID_UNICODE_NOTE = "prompt held invalid code points (lone surrogates); replaced with U+FFFD before inspection"


def scrub(text: str) -> str:
    """Text every detector, the sealer and the database can take: lone surrogates (which a
    JSON ``\\ud800`` escape yields and UTF-8 cannot encode) become U+FFFD."""
    return _SURROGATES.sub("\ufffd", text)


def has_invalid_code_points(text: str) -> bool:
    return _SURROGATES.search(text) is not None


@dataclass(frozen=True)
class Route:
    """The catalogue host a request belongs to (None: not an app's traffic), or why it is refused."""

    host: str | None
    conflict: str | None = None


def route(catalogue: Catalogue, flow: http.HTTPFlow, tunnel_host: str | None = None) -> Route:
    """Decide the host from every name the request carries; see the module docstring.

    Inside a tunnel mitmproxy connects to the tunnel's (possibly pinned) address whatever the
    request says, so the tunnel is the destination; without one (plain proxy requests) the
    request target is."""
    request = flow.request
    names = {
        "Host header": request.host_header or "",
        "request target": request.authority or ("" if tunnel_host else request.host),
        "tunnel": tunnel_host or "",
        "TLS SNI": flow.client_conn.sni or "",
    }
    hosts = {what: canonical_host(value) for what, value in names.items() if value}
    hosts = {what: host for what, host in hosts.items() if host}
    if not any(catalogue.app_for_host(host) is not None for host in hosts.values()):
        return Route(None)
    destination = canonical_host(tunnel_host or request.host)
    disagree = sorted(what for what, host in hosts.items() if host != destination)
    if disagree:
        verb = "disagrees" if len(disagree) == 1 else "disagree"
        return Route(None, f"{', '.join(disagree)} {verb} with the {'tunnel' if tunnel_host else 'request target'}")
    return Route(destination)


def recorded_host(flow: http.HTTPFlow) -> str:
    """The host a captured flow was for, offline: the TLS names first (a live capture's request
    host can be a pinned address), then the Host header, then the request target."""
    request = flow.request
    for name in (flow.server_conn.sni, flow.client_conn.sni, request.host_header, request.host):
        host = canonical_host(name or "")
        if host:
            return host
    return ""


def match_flow(catalogue: Catalogue, flow: http.HTTPFlow, host: str | None = None) -> Match | None:
    return catalogue.match(host or flow.request.host, flow.request.method, flow.request.path)


def content_encoding(flow: http.HTTPFlow) -> str:
    return ",".join(flow.request.headers.get_all("content-encoding"))


def extract(flow: http.HTTPFlow, match: Match, max_body: int) -> tuple[Extraction, str | None]:
    """Run the operation's extractor. The error string (never quoting the body) says why the
    request is *uninspectable*: everything that can fail here is the sender's doing."""
    name = match.operation.extractor
    if name is None:
        return Extraction(), None
    try:
        body = decoded_body(flow.request.raw_content or b"", content_encoding(flow), max_body)
    except Uninspectable as exc:
        return Extraction(), str(exc)
    raw_path, query = split_target(flow.request.path)
    data = RequestData(
        body=body,
        path=canonical_path(raw_path),
        query=query,
        headers={k.decode("latin-1").lower(): v.decode("utf-8", "replace") for k, v in flow.request.headers.fields},
    )
    try:
        extraction = EXTRACTORS[name](data)
        if name not in FULL_READ_EXTRACTORS:
            other = other_fields_text(data, extraction, match.app.opaque_fields)
            # Scrubbed here, once, like every other extracted text (see operation_of).
            extraction = dataclasses.replace(extraction, other_text=scrub(other) if other.strip() else "")
        return extraction, None
    except ExtractionError as exc:
        return Extraction(), f"could not decode request: {exc}"
    except RecursionError:
        return Extraction(), "could not decode request: nested too deep"
    except Exception as exc:  # an extractor bug is a recorded refusal, never a crash of the flow
        return Extraction(), f"could not decode request: {type(exc).__name__}"


def _clean(value: str | None) -> str | None:
    return None if value is None else scrub(value)


def operation_of(
    flow: http.HTTPFlow,
    match: Match,
    extraction: Extraction,
    identity: Identity,
    conversation_id: str | None,
    host: str | None = None,
) -> Operation:
    """The operation a matched flow performs: the catalogue's ids, who sent it, what it carries.
    Every text field is :func:`scrub`-bed once, here, so nothing downstream can choke on it."""
    return Operation(
        app=match.app.app,
        app_type=match.app.app_type,
        operation_id=match.operation.operation_id,
        kind=match.operation.kind,
        identity=identity,
        prompt=scrub(extraction.prompt),
        conversation_id=_clean(conversation_id),
        message_id=_clean(extraction.message_id),
        parent_message_id=_clean(extraction.parent_message_id),
        model=_clean(extraction.model),
        attachments=tuple(scrub(a) for a in extraction.attachments),
        host=host or canonical_host(flow.request.host),
        path=scrub(canonical_path(split_target(flow.request.path)[0])),
    )


def new_decoder(match: Match | None) -> AnswerDecoder | None:
    if match is None or match.operation.decoder is None:
        return None
    return DECODERS[match.operation.decoder]()
