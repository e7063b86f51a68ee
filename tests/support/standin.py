"""A local HTTPS stand-in for chatgpt.com, run as its own process by the end-to-end tests.

It answers ChatGPT's send-prompt path with a delta-encoded SSE stream (the shape in
shared/design/apps/chatgpt.md) and appends every request it receives to a JSON-lines file,
so a test can tell whether a prompt reached "upstream" or was stopped at the proxy.
The other apps' send-prompt paths answer with their wire fixture's stream
(tests/fixtures/apps/<app>/send_prompt/response.body), and ``/stream/slow`` on any host
streams three chunks over about three seconds (a slow non-GenAI download). A request with
``X-Standin-Delay: S`` gets the first part of its answer at once and the rest S seconds later.
A send-prompt request with ``X-Standin-Fixture: PATH`` (relative to tests/fixtures/) is answered
with that file's bytes instead, in two chunks (an app that changed its stream shape).

With INSPECTOR_PORT it also serves a stand-in inspector over plain HTTP on that port
(``POST /v1/inspect`` answers "nothing found" unless the prompt carries ``[[topic:NAME=score]]``
or ``[[pii-spans]]`` markers, or the SSN 219-09-9999: see :func:`standin_inspection`; an
``[[answer:...]]`` marker gets a broken answer, see :data:`BROKEN_ANSWERS`), for tests of the
proxy alone.

Usage: python -m tests.support.standin PORT CERT KEY RECEIVED_FILE [INSPECTOR_PORT]
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from classifiers.registry import expected_detector_names
from promptfence.config import InspectorConfig, MemoryConfig

ANSWER_EVENTS = [
    'event: delta_encoding\ndata: "v1"\n\n',
    'event: delta\ndata: {"p": "", "o": "add", "v": {"message": {"id": "a-1", "author": {"role": "assistant"}, '
    '"content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "recipient": "all"}, '
    '"conversation_id": "CONV", "error": null}, "c": 0}\n\n',
    'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "Stand-in answer"}\n\n',
    'event: delta\ndata: {"v": " from upstream."}\n\n',
    'event: delta\ndata: {"p": "/message/status", "o": "replace", "v": "finished_successfully"}\n\n',
    'data: {"type": "message_stream_complete", "conversation_id": "CONV"}\n\n',
    "data: [DONE]\n\n",
]


FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "apps"
SLOW_CHUNKS = [b"first chunk\n", b"second chunk\n", b"last chunk\n"]
SLOW_PAUSE_S = 1.5


def _delay(request: web.Request) -> float:
    try:
        return float(request.headers.get("X-Standin-Delay", "0"))
    except ValueError:
        return 0.0


def build_app(received: Path) -> web.Application:
    async def record(request: web.Request) -> None:
        body = await request.read()
        with received.open("a", encoding="utf-8") as fh:
            fh.write(
                json.dumps(
                    {
                        "method": request.method,
                        "path": request.path,
                        "host": request.headers.get("Host"),
                        "headers": sorted(k.lower() for k in request.headers),
                        "body": body.decode("utf-8", "replace"),
                    }
                )
                + "\n"
            )

    async def conversation(request: web.Request) -> web.StreamResponse:
        await record(request)
        if "X-Standin-Fixture" in request.headers:
            return await chosen_fixture(request, "text/event-stream; charset=utf-8")
        data = json.loads(await request.read() or b"{}")
        conv = data.get("conversation_id") or "c-standin"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        delay = _delay(request)
        for index, event in enumerate(ANSWER_EVENTS):
            if index == 2 and delay:
                await asyncio.sleep(delay)
            await resp.write(event.replace("CONV", conv).encode())
        await resp.write_eof()
        return resp

    async def chosen_fixture(request: web.Request, content_type: str) -> web.StreamResponse:
        path = (FIXTURES.parent / request.headers["X-Standin-Fixture"]).resolve()
        if FIXTURES.parent not in path.parents or not path.is_file():
            raise web.HTTPNotFound()
        body = path.read_bytes()
        resp = web.StreamResponse(headers={"Content-Type": content_type})
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await resp.write(body[len(body) // 2 :])
        await resp.write_eof()
        return resp

    def fixture_stream(app: str, content_type: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            await record(request)
            if "X-Standin-Fixture" in request.headers:
                return await chosen_fixture(request, content_type)
            body = (FIXTURES / app / "send_prompt" / "response.body").read_bytes()
            resp = web.StreamResponse(headers={"Content-Type": content_type})
            await resp.prepare(request)
            half = len(body) // 2
            await resp.write(body[:half])
            await resp.write(body[half:])
            await resp.write_eof()
            return resp

        return handler

    async def slow(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await resp.prepare(request)
        for index, chunk in enumerate(SLOW_CHUNKS):
            if index:
                await asyncio.sleep(SLOW_PAUSE_S)
            await resp.write(chunk)
        await resp.write_eof()
        return resp

    async def anything(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_post("/backend-api/f/conversation", conversation)
    app.router.add_post("/backend-api/conversation", conversation)
    sse = "text/event-stream; charset=utf-8"
    app.router.add_post("/api/organizations/{org}/chat_conversations/{conv}/completion", fixture_stream("claude", sse))
    app.router.add_post(
        "/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate",
        fixture_stream("gemini", "application/json; charset=utf-8"),
    )
    app.router.add_post("/rest/sse/perplexity_ask", fixture_stream("perplexity", sse))
    app.router.add_get("/stream/slow", slow)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


# The proxy believes an answer only with a run for every detector its config says the inspector
# runs (the shipped defaults here), so the stand-in reports exactly those.
STANDIN_RUNS = [
    {"detector": name, "status": "ok", "elapsed_ms": 0.1}
    for name in expected_detector_names(InspectorConfig(), MemoryConfig())
]
_TOPIC_MARK = re.compile(r"\[\[topic:([A-Z_]+)=([0-9.]+)\]\]")
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


def standin_inspection(prompt: str) -> dict[str, object]:
    """Nothing found, unless the prompt says otherwise: ``[[topic:PII_REQUEST=0.9]]`` sets a
    topic score, and with ``[[pii-spans]]`` its e-mail addresses are PII findings with spans
    (for redaction tests)."""
    topics: dict[str, float] = {name: float(score) for name, score in _TOPIC_MARK.findall(prompt)}
    findings = [
        {
            "detector": "standin",
            "kind": "pii.EMAIL_ADDRESS",
            "topic": "PII",
            "score": 0.95,
            "span": [m.start(), m.end()],
            "explanation": "regex",
        }
        for m in _EMAIL.finditer(prompt)
        if "[[pii-spans]]" in prompt
    ]
    if findings or SSN_MARK in prompt:  # the bypass tests' stand-in for "an SSN is in it"
        topics["PII"] = max(topics.get("PII", 0.0), 0.95)
    return {"topics": topics, "findings": findings, "runs": STANDIN_RUNS}


# A prompt carrying one of these markers gets a broken answer from the stand-in inspector, so
# the bypass tests can show that a broken inspector never opens the gate.
BROKEN_ANSWERS: dict[str, Callable[[], web.Response]] = {
    "[[answer:empty]]": lambda: web.json_response({}),
    "[[answer:noruns]]": lambda: web.json_response({"topics": {}, "findings": [], "runs": []}),
    "[[answer:http500]]": lambda: web.json_response({"error": "boom"}, status=500),
    "[[answer:notjson]]": lambda: web.Response(text="<html>gateway</html>", content_type="text/html"),
    "[[answer:badscore]]": lambda: web.json_response(
        {"topics": {"PII": {"score": "high"}}, "findings": [], "runs": [{"detector": "standin", "status": "ok"}]}
    ),
}
SSN_MARK = "219-09-9999"


def build_inspector() -> web.Application:
    async def inspect(request: web.Request) -> web.Response:
        data = json.loads(await request.read() or b"{}")
        prompt = (data.get("operation") or {}).get("prompt") or data.get("prompt") or ""
        prompt = prompt if isinstance(prompt, str) else ""
        for marker, answer in BROKEN_ANSWERS.items():
            if marker in prompt:
                return answer()
        return web.json_response(standin_inspection(prompt))

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/v1/inspect", inspect)
    app.router.add_get("/healthz", healthz)
    return app


async def _serve(port: int, context: ssl.SSLContext, received: Path, inspector_port: int | None) -> None:
    runners = [web.AppRunner(build_app(received), access_log=None)]
    if inspector_port is not None:
        runners.append(web.AppRunner(build_inspector(), access_log=None))
    for runner in runners:
        await runner.setup()
    await web.TCPSite(runners[0], "127.0.0.1", port, ssl_context=context).start()
    if inspector_port is not None:
        await web.TCPSite(runners[1], "127.0.0.1", inspector_port).start()
    await asyncio.Event().wait()


def main() -> None:
    port, cert, key, received = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    inspector_port = int(sys.argv[5]) if len(sys.argv) > 5 else None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    if inspector_port is None:
        web.run_app(build_app(received), host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)
    else:
        asyncio.run(_serve(port, context, received, inspector_port))


if __name__ == "__main__":
    main()
