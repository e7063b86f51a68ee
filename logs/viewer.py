"""The web viewer's server: static files plus a small JSON API over the store.

The server hands out clear metadata and *sealed* blobs only. Decryption happens in the admin's
browser (``static/hpke.js``: WebCrypto X25519 + HKDF, ChaCha20-Poly1305 from the vendored
@noble/ciphers), with a private key file the admin loads into the page; no route accepts a key.
A strict Content-Security-Policy keeps the page from talking to any other origin.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from logs.store import LogFilter, LogStore, StoredRecord, StoreUnavailable
from promptfence.core import Action, Confidence, Topic

log = logging.getLogger("promptfence.viewer")

STATIC = Path(__file__).resolve().parent / "static"
MAX_LIMIT = 500
BUCKETS = {"hour": 3600, "day": 86400}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

STORE_KEY = web.AppKey("store", LogStore)
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
        topic = Topic(query["topic"]) if query.get("topic") else None
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


def _sealed(record: StoredRecord) -> dict[str, Any]:
    return {"record_id": record.record_id, "metadata": record.metadata, "sealed": record.sealed}


async def _in_thread(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """The store is synchronous: run it off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, functools.partial(func, *args, **kwargs))


@web.middleware
async def _guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        response = await handler(request)
    except BadQuery as exc:
        response = web.json_response({"error": str(exc)}, status=400)
    except StoreUnavailable as exc:
        response = web.json_response({"error": str(exc)}, status=503)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    if request.path.startswith("/api/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def facets(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    return web.json_response(await _in_thread(store.facets))


async def records(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    flt = filter_from_query(request.query)
    try:
        limit = min(int(request.query.get("limit", "100")), MAX_LIMIT)
        offset = max(int(request.query.get("offset", "0")), 0)
    except ValueError:
        raise BadQuery("limit and offset must be integers") from None
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


async def stats(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    by = request.query.get("by", "app")
    bucket = BUCKETS.get(request.query.get("bucket", "hour"))
    if bucket is None:
        raise BadQuery(f"bucket must be one of {', '.join(BUCKETS)}")
    if by not in ("app", "topic", "action"):
        raise BadQuery("by must be app, topic or action")
    return web.json_response(await _in_thread(store.stats, filter_from_query(request.query), by, bucket))


async def feedback_list(request: web.Request) -> web.Response:
    store = request.app[STORE_KEY]
    reports = await _in_thread(store.feedback_reports, record_id=request.match_info["record_id"])
    return web.json_response({"reports": [r.to_dict() for r in reports]})


async def feedback_add(request: web.Request) -> web.Response:
    # A JSON content type cannot be sent cross-site without a CORS preflight, which this server
    # never answers: another site open in the admin's browser cannot post reports.
    if request.content_type != "application/json":
        return web.json_response({"error": "send application/json"}, status=415)
    origin = request.headers.get("Origin")
    if origin is not None and origin != f"{request.scheme}://{request.host}":
        return web.json_response({"error": "cross-origin request refused"}, status=403)
    try:
        body = await request.json()
        topic = Topic(str(body["topic"]))
        verdict = str(body["verdict"])
        note = str(body.get("note") or "")
        reporter = str(body.get("reporter") or "viewer")
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


def build_app(store: LogStore, *, middlewares: Iterable[Any] = ()) -> web.Application:
    """The viewer application; ``middlewares`` run before the viewer's own (tests spy with one)."""
    app = web.Application(middlewares=[*middlewares, _guard], client_max_size=64 * 1024)
    app[STORE_KEY] = store
    app.router.add_get("/", index)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/api/facets", facets)
    app.router.add_get("/api/records", records)
    app.router.add_get("/api/records/{record_id}", record)
    app.router.add_get("/api/records/{record_id}/feedback", feedback_list)
    app.router.add_post("/api/records/{record_id}/feedback", feedback_add)
    app.router.add_get("/api/conversations/{conversation_id}", conversation)
    app.router.add_get("/api/stats", stats)
    app.router.add_static("/static/", STATIC, follow_symlinks=False)
    return app
