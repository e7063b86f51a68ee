"""A local HTTPS stand-in for chatgpt.com, run as its own process by the end-to-end tests.

It answers ChatGPT's send-prompt path with a delta-encoded SSE stream (the shape in
shared/design/apps/chatgpt.md) and appends every request it receives to a JSON-lines file,
so a test can tell whether a prompt reached "upstream" or was stopped at the proxy.

Usage: python -m tests.support.standin PORT CERT KEY RECEIVED_FILE
"""

from __future__ import annotations

import json
import ssl
import sys
from pathlib import Path

from aiohttp import web

ANSWER_EVENTS = [
    'event: delta_encoding\ndata: "v1"\n\n',
    'event: delta\ndata: {"p": "", "o": "add", "v": {"message": {"id": "a-1", "author": {"role": "assistant"}, '
    '"content": {"content_type": "text", "parts": [""]}, "status": "in_progress", "recipient": "all"}, '
    '"conversation_id": "CONV", "error": null}, "c": 0}\n\n',
    'event: delta\ndata: {"p": "/message/content/parts/0", "o": "append", "v": "Stand-in answer"}\n\n',
    'event: delta\ndata: {"v": " from upstream."}\n\n',
    'data: {"type": "message_stream_complete", "conversation_id": "CONV"}\n\n',
    "data: [DONE]\n\n",
]


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
                        "body": body.decode("utf-8", "replace"),
                    }
                )
                + "\n"
            )

    async def conversation(request: web.Request) -> web.StreamResponse:
        await record(request)
        data = json.loads(await request.read() or b"{}")
        conv = data.get("conversation_id") or "c-standin"
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        for event in ANSWER_EVENTS:
            await resp.write(event.replace("CONV", conv).encode())
        await resp.write_eof()
        return resp

    async def anything(request: web.Request) -> web.Response:
        await record(request)
        return web.json_response({"ok": True, "path": request.path})

    app = web.Application()
    app.router.add_post("/backend-api/f/conversation", conversation)
    app.router.add_post("/backend-api/conversation", conversation)
    app.router.add_route("*", "/{tail:.*}", anything)
    return app


def main() -> None:
    port, cert, key, received = int(sys.argv[1]), sys.argv[2], sys.argv[3], Path(sys.argv[4])
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    web.run_app(build_app(received), host="127.0.0.1", port=port, ssl_context=context, print=None, access_log=None)


if __name__ == "__main__":
    main()
