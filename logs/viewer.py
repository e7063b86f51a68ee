"""The web viewer's server: static files plus a small JSON API over the store.

The server hands out clear metadata and *sealed* blobs only. Decryption happens in the admin's
browser (``static/hpke.js``: WebCrypto X25519 + HKDF, ChaCha20-Poly1305 from the vendored
@noble/ciphers), with a private key file the admin loads into the page; no route accepts a key.
A strict Content-Security-Policy keeps the page from talking to any other origin.

Safe to put behind an SSO reverse proxy (:class:`ViewerSettings`): only listed ``Host`` names
are served (a DNS-rebinding page gets 421), every response (errors included) carries the
security headers and ``Cache-Control: no-store``, limits are clamped, a feedback post needs a
JSON body, the ``X-PromptFence-Viewer`` header (which no cross-site page can send without a
CORS preflight, never answered here) and, if it has an Origin, one of ours; and the reporter is
taken from a trusted SSO header, believed only from ``trusted_sources``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from aiohttp import web

from logs.store import LogFilter, LogStore, StoredRecord, StoreUnavailable
from promptfence.core import Action, Confidence, Topic, is_topic_name

log = logging.getLogger("promptfence.viewer")

STATIC = Path(__file__).resolve().parent / "static"
MAX_LIMIT = 500
MAX_OFFSET = 10**9
CSRF_HEADER = "X-PromptFence-Viewer"
MAX_USER_CHARS = 320
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
BUCKETS = {"hour": 3600, "day": 86400}
# The chart counts a topic from this confidence up unless the query names min_confidence.
CHART_TOPIC_CONFIDENCE = Confidence.MEDIUM
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _host_key(value: str) -> tuple[str, str | None] | None:
    """``name[:port]`` of a Host header or allow-list entry, lowercased; None when garbled."""
    value = value.strip().lower().rstrip(".")
    if not value or _CONTROL.search(value) or "/" in value or "@" in value or " " in value:
        return None
    if value.startswith("["):
        name, sep, rest = value.partition("]")
        name += "]"
        if sep and rest and not rest.startswith(":"):
            return None
        port = rest[1:] or None
    else:
        name, _, raw_port = value.partition(":")
        port = raw_port or None
    if port is not None and not port.isdigit():
        return None
    name = name.rstrip(".")
    return (name, port) if name else None


@dataclass(frozen=True)
class ViewerSettings:
    """Who may reach the viewer by which name, and whose SSO header to believe."""

    # Host header values served: "name:port" or a bare "name" (any port). Default: loopback forms.
    allowed_hosts: tuple[str, ...] = LOOPBACK_NAMES
    # A header set by the SSO reverse proxy in front (e.g. X-Authenticated-User); None: off.
    identity_header: str | None = None
    # Addresses the identity header is believed from (the reverse proxy).
    trusted_sources: tuple[Network, ...] = ()
    # The proxy's drift state file (proxy/drift.py) shown as an alarm banner; None: not shown.
    drift_state_path: Path | None = None
    _keys: frozenset[tuple[str, str | None]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        keys = set()
        for entry in self.allowed_hosts:
            key = _host_key(entry)
            if key is None:
                raise ValueError(f"not a host name or host:port: {entry!r}")
            keys.add(key)
        object.__setattr__(self, "_keys", frozenset(keys))

    def allows(self, host: str | None) -> bool:
        key = _host_key(host) if host else None
        return key is not None and (key in self._keys or (key[0], None) in self._keys)

    def trusts(self, address: str | None) -> bool:
        if not address:
            return False
        try:
            addr = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        return any(addr.version == net.version and addr in net for net in self.trusted_sources)


def default_allowed_hosts(bind_host: str, port: int) -> tuple[str, ...]:
    """The bind address (unless it is a wildcard) and the loopback names, with the port."""
    names = list(LOOPBACK_NAMES)
    if bind_host not in ("0.0.0.0", "::", "", "*"):
        names.append(f"[{bind_host}]" if ":" in bind_host and not bind_host.startswith("[") else bind_host)
    return tuple(dict.fromkeys(f"{name}:{port}" for name in names))


STORE_KEY = web.AppKey("store", LogStore)
SETTINGS_KEY = web.AppKey("settings", ViewerSettings)
T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class BadQuery(ValueError):
    pass


def _bool(value: str | None) -> bool | None:
    if value in (None, "", "any"):
        return None
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise BadQuery(f"expected true or false, got {value!r}")


def _float(value: str | None) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except ValueError:
        raise BadQuery(f"expected a number, got {value!r}") from None


def filter_from_query(query: Any) -> LogFilter:
    def text(name: str) -> str | None:
        value = query.get(name)
        return str(value) if value else None

    try:
        topic = _topic(str(query["topic"])) if query.get("topic") else None
        action = Action(query["action"]) if query.get("action") else None
        confidence = Confidence.parse(query["min_confidence"]) if query.get("min_confidence") else Confidence.LOW
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    return LogFilter(
        since=_float(query.get("since")),
        until=_float(query.get("until")),
        user=text("user"),
        group=text("group"),
        app=text("app"),
        app_type=text("app_type"),
        operation=text("operation"),
        topic=topic,
        min_confidence=confidence,
        action=action,
        dlp_match=_bool(query.get("dlp_match")),
        prompt_captured=_bool(query.get("prompt_captured")),
        conversation_id=text("conversation_id"),
    )


def _topic(name: str) -> str:
    """A built-in topic or a custom topic's name; anything else is a bad query."""
    if is_topic_name(name):
        return name
    raise ValueError(f"unknown topic {name!r}")


def _sealed(record: StoredRecord) -> dict[str, Any]:
    return {"record_id": record.record_id, "metadata": record.metadata, "sealed": record.sealed}


async def _in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The store is synchronous: run it off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[SETTINGS_KEY]
    if request.path != "/healthz" and not settings.allows(request.headers.get("Host")):
        log.warning("refused a request for an unlisted Host from %s (viewer.allowed_hosts)", request.remote)
        return web.json_response({"error": "unknown Host (see viewer.allowed_hosts)"}, status=421)
    try:
        return await handler(request)
    except BadQuery as exc:
        return web.json_response({"error": str(exc)}, status=400)
    except StoreUnavailable as exc:
        return web.json_response({"error": str(exc)}, status=503)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        response = web.json_response({"error": exc.reason}, status=exc.status)
        if "Allow" in exc.headers:
            response.headers["Allow"] = exc.headers["Allow"]
        return response
    except Exception as exc:  # never a traceback (or a value in one) to the client
        log.error("viewer %s %s failed (%s)", request.method, request.path, type(exc).__name__)
        return web.json_response({"error": "internal error"}, status=500)


async def _secure_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every response the application prepares, whatever produced it, gets these."""
    response.headers.update(SECURITY_HEADERS)


def _int(query: Any, name: str, default: int, maximum: int, *, clamp: bool) -> int:
    raw = query.get(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        raise BadQuery(f"{name} must be an integer") from None
    if value < 0:
        raise BadQuery(f"{name} must not be negative")
    if value > maximum:
        if not clamp:
            raise BadQuery(f"{name} must be at most {maximum}")
        value = maximum
    return value


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def drift(request: web.Request) -> web.Response:
    """The drift alarm of a proxy on this machine (its state file): per operation, counts and
    whether its alarm is up; no request content is in that file."""
    from proxy.drift import read_state

    path = request.app[SETTINGS_KEY].drift_state_path
    if path is None:
        return web.json_response({"available": False, "operations": []})
    try:
        snapshot = await _in_thread(read_state, path)
    except (OSError, ValueError) as exc:
        return web.json_response({"available": False, "operations": [], "error": type(exc).__name__})
    if snapshot is None:
        return web.json_response({"available": False, "operations": []})
    operations = [
        {
            "app": op.app,
            "operation": op.operation,
            "seen": op.seen,
            "extraction_failed": op.extraction_failed,
            "decode_errors": op.decode_errors,
            "unknown_shapes": op.unknown_shapes,
            "unmapped_text": op.unmapped_text,
            "recent_rate": round(op.recent_rate, 3),
            "alarm": op.alarm,
            "last_seen": op.last_seen,
        }
        for op in snapshot.operations
    ]
    return web.json_response({"available": True, "taken_at": snapshot.taken_at, "operations": operations})


async def facets(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return web.json_response(await _in_thread(store.facets))


async def records(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    flt = filter_from_query(request.query)
    limit = _int(request.query, "limit", 100, MAX_LIMIT, clamp=True)
    offset = _int(request.query, "offset", 0, MAX_OFFSET, clamp=False)
    found = await _in_thread(store.find, flt, limit=limit, offset=offset)
    total = await _in_thread(store.count, flt)
    return web.json_response(
        {
            "total": total,
            "records": [{"record_id": r.record_id, "metadata": r.metadata, "key_ids": r.key_ids} for r in found],
        }
    )


async def record(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    found = await _in_thread(store.get, request.match_info["record_id"])
    if found is None:
        return web.json_response({"error": "no such record"}, status=404)
    return web.json_response(_sealed(found))


async def conversation(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    cid = request.match_info["conversation_id"]
    found = await _in_thread(store.conversation, cid)
    if not found:
        return web.json_response({"error": "no such conversation"}, status=404)
    return web.json_response({"conversation_id": cid, "records": [_sealed(r) for r in found]})


async def shadow_diff(request: web.Request) -> web.Response:
    """Where the shadow policy set (``policies.shadow``) disagreed with the enforced one, over
    the filtered records (at most ``SHADOW_DIFF_LIMIT`` newest): counts per change, rule, app
    and group, from clear metadata only."""
    from logs.rollout import shadow_diff as diff_of

    store = request.app[STORE_KEY]
    found = await _in_thread(store.find, filter_from_query(request.query), limit=SHADOW_DIFF_LIMIT)
    diff = diff_of((r.record_id, r.metadata) for r in found)
    return web.json_response({**diff.to_dict(), "record_ids": diff.record_ids[:MAX_LIMIT]})


SHADOW_DIFF_LIMIT = 100_000


async def stats(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    by = request.query.get("by", "app")
    bucket = BUCKETS.get(request.query.get("bucket", "hour"))
    if bucket is None:
        raise BadQuery(f"bucket must be one of {', '.join(BUCKETS)}")
    if by not in ("app", "topic", "action"):
        raise BadQuery("by must be app, topic or action")
    flt = filter_from_query(request.query)
    counted = flt.min_confidence
    if by == "topic" and not request.query.get("min_confidence"):
        # Low-confidence topics are shown on records but not counted unless the filter asks.
        counted = CHART_TOPIC_CONFIDENCE
        flt = dataclasses.replace(flt, min_confidence=counted)
    data = await _in_thread(store.stats, flt, by, bucket)
    return web.json_response({**data, "min_confidence": counted.name.lower()})


async def feedback_list(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    reports = await _in_thread(store.feedback_reports, record_id=request.match_info["record_id"])
    return web.json_response({"reports": [r.to_dict() for r in reports]})


def _origin_ok(request: web.Request) -> bool:
    """A browser's post is same-origin: any Origin must name one of our hosts and match the
    Host it was sent to; Sec-Fetch-Site, when sent, must say same-origin."""
    site = request.headers.get("Sec-Fetch-Site")
    if site is not None and site != "same-origin":
        return False
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return False
    default = "443" if parts.scheme == "https" else "80"
    key, host = _host_key(parts.netloc), _host_key(request.headers.get("Host", ""))
    if key is None or host is None:
        return False

    def bare(k: tuple[str, str | None]) -> tuple[str, str]:
        return (k[0], k[1] or default)

    return request.app[SETTINGS_KEY].allows(parts.netloc) and bare(key) == bare(host)


def _sso_user(request: web.Request) -> str | None:
    """The SSO header's user when the request comes from a trusted source; None otherwise."""
    settings = request.app[SETTINGS_KEY]
    if settings.identity_header is None:
        return None
    values = request.headers.getall(settings.identity_header, [])
    if not values:
        return None
    if not settings.trusts(request.remote):
        log.warning("ignored identity header %s from untrusted address %s", settings.identity_header, request.remote)
        return None
    user = values[0].strip()
    if len(values) != 1 or not user or len(user) > MAX_USER_CHARS or _CONTROL.search(user):
        return None
    return user


async def feedback_add(request: web.Request) -> web.Response:
    # A JSON content type and a custom header cannot be sent cross-site without a CORS
    # preflight, which this server never answers: another site open in the admin's browser
    # (or a DNS-rebinding page, refused by Host already) cannot post reports.
    if request.content_type != "application/json":
        return web.json_response({"error": "send application/json"}, status=415)
    if request.headers.get(CSRF_HEADER) != "1" or not _origin_ok(request):
        return web.json_response({"error": "cross-origin request refused"}, status=403)
    settings = request.app[SETTINGS_KEY]
    sso = _sso_user(request)
    if settings.identity_header is not None and sso is None:
        return web.json_response({"error": "feedback needs a signed-in user (SSO identity header)"}, status=403)
    try:
        body = await request.json()
        topic = Topic(str(body["topic"]))
        verdict = str(body["verdict"])
        note = str(body.get("note") or "")
        reporter = sso or str(body.get("reporter") or "viewer")
    except (ValueError, KeyError, TypeError):
        raise BadQuery("expected {topic, verdict, note?, reporter?}") from None
    store = request.app[STORE_KEY]
    try:
        report = await _in_thread(
            store.add_feedback,
            request.match_info["record_id"],
            topic,
            verdict,
            reporter=reporter,
            source="viewer",
            note=note,
        )
    except KeyError:
        return web.json_response({"error": "no such record"}, status=404)
    except ValueError as exc:
        raise BadQuery(str(exc)) from None
    return web.json_response(report.to_dict(), status=201)


def build_app(
    store: LogStore, *, middlewares: Iterable[Any] = (), settings: ViewerSettings | None = None
) -> web.Application:
    """The viewer application; ``middlewares`` run before the viewer's own (tests spy with one);
    ``settings`` default: loopback Host names only, no SSO header."""
    app = web.Application(middlewares=[*middlewares, _guard], client_max_size=64 * 1024)
    app[STORE_KEY] = store
    app[SETTINGS_KEY] = settings or ViewerSettings()
    app.on_response_prepare.append(_secure_headers)
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/facets", facets)
    app.router.add_get("/api/drift", drift)
    app.router.add_get("/api/records", records)
    app.router.add_get("/api/records/{record_id}", record)
    app.router.add_get("/api/records/{record_id}/feedback", feedback_list)
    app.router.add_post("/api/records/{record_id}/feedback", feedback_add)
    app.router.add_get("/api/conversations/{conversation_id}", conversation)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/shadow-diff", shadow_diff)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
