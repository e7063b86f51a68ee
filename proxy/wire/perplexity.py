"""Perplexity (www.perplexity.ai): request extractors, the answer-stream decoder, the block reply.

Wire format: ``shared/design/apps/perplexity.md``. The prompt is ``query_str`` (repeated in
``params.dsl_query``). The answer is SSE (CRLF) of ``event: message`` JSON envelopes, ending
with ``event: end_of_stream``. The text rides in one of three carriers handled here: ``blocks``
with an ``ask_text`` ``markdown_block`` (chunks spliced at ``chunk_starting_offset``; the
terminal ``answer`` wins), ``diff_block`` (RFC 6902 patches against per-block state) and the
legacy ``text`` (JSON in JSON: steps -> FINAL -> ``answer``; cumulative snapshots). The thread
id (``context_uuid``) arrives only in the stream.
"""

from __future__ import annotations

import json
import re
import uuid
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from proxy.wire import jsonpatch
from proxy.wire.base import (
    DEFAULT_ANSWER_LIMIT,
    DEFAULT_MAX_EVENT,
    MAX_OPEN_TURNS,
    Answer,
    BlockReply,
    BlockReplyMaker,
    DecoderFactory,
    Extraction,
    Extractor,
    RequestData,
    SocketDecoderFactory,
    answer_reply,
    dict_get,
    json_object,
    loads_or_none,
    opt_str,
    sse_event,
    sse_json,
)
from proxy.wire.sse import SSEAnswerDecoder, SSEEvent

ANSWER_USAGES = ("ask_text", "ask_text_0_markdown")


def ask(request: RequestData) -> Extraction:
    """``POST /rest/sse/perplexity_ask``: ``query_str`` (+ ``dsl_query`` when it differs)."""
    data = json_object(request.body)
    params = data.get("params") if isinstance(data.get("params"), dict) else {}
    texts: list[str] = []
    for value in (data.get("query_str"), dict_get(params, "dsl_query")):
        if isinstance(value, str) and value and value not in texts:
            texts.append(value)
    attachments = dict_get(params, "attachments")
    return Extraction(
        prompt="\n".join(texts),
        message_id=opt_str(dict_get(params, "frontend_uuid")),
        parent_message_id=opt_str(dict_get(params, "last_backend_uuid")),
        model=opt_str(dict_get(params, "model_preference")),
        attachments=tuple(a for a in (attachments if isinstance(attachments, list) else []) if isinstance(a, str)),
    )


def upload_url(request: RequestData) -> Extraction:
    """``create_upload_url`` / ``batch_create_upload_urls``: the file names about to be uploaded."""
    data = json_object(request.body)
    names: list[str] = []
    name = opt_str(data.get("filename"))
    if name:
        names.append(name)
    files = data.get("files")
    for item in files.values() if isinstance(files, dict) else []:
        name = opt_str(dict_get(item, "filename"))
        if name:
            names.append(name)
    return Extraction(attachments=tuple(names))


def thread(request: RequestData) -> Extraction:
    """Thread operations (``update_thread_access``): the body is not confirmed, so look for ids."""
    data = json_object(request.body) if request.body.strip() else {}
    cid = next(
        (opt_str(data.get(k)) for k in ("context_uuid", "thread_uuid", "thread_id") if opt_str(data.get(k))),
        None,
    )
    return Extraction(
        conversation_id=cid or opt_str(data.get("thread_url_slug")),
        message_id=opt_str(data.get("entry_uuid")) or opt_str(data.get("backend_uuid")),
    )


def _final_answer(text: Any) -> str | None:
    """Carrier A: ``text`` -> steps -> FINAL ``content.answer`` -> ``answer`` (JSON in JSON;
    each level may also arrive already parsed, as a list or an object)."""
    steps = text if isinstance(text, (list, dict)) else loads_or_none(text)
    holder: Any = None
    if isinstance(steps, list):
        for step in steps:
            if dict_get(step, "step_type") == "FINAL":
                holder = dict_get(step, "content")
    elif isinstance(steps, dict):
        holder = steps
    answer = dict_get(holder, "answer")
    if isinstance(answer, dict) and isinstance(answer.get("answer"), str):
        return str(answer["answer"])
    if isinstance(answer, str):
        inner = loads_or_none(answer)
        if isinstance(inner, dict) and isinstance(inner.get("answer"), str):
            return str(inner["answer"])
        return answer
    return None


class PerplexityStreamDecoder(SSEAnswerDecoder):
    def __init__(self, *, answer_limit: int = DEFAULT_ANSWER_LIMIT, max_event: int = DEFAULT_MAX_EVENT) -> None:
        super().__init__(answer_limit=answer_limit, max_event=max_event)
        # Per usage, the carrier that last wrote its chunks / terminal answer: "markdown" (kept in
        # _chunks / _terminal) or "diff" (read from the diff document once, at the end: linear).
        self._chunks: dict[str, list[str]] = {}
        self._terminal: dict[str, str] = {}
        self._chunks_from: dict[str, str] = {}
        self._terminal_from: dict[str, str] = {}
        self._diff: dict[tuple[str, str], Any] = {}
        self._text_answer: str | None = None
        self._ended = False
        self._completed = False
        self._failed = False
        self._failed_patches = 0

    def _finish(self) -> Answer:
        answer = self._answer
        for usage in ANSWER_USAGES:
            terminal = self._terminal_text(usage)
            if terminal is not None:
                answer.text = terminal
                break
            chunks = self._chunk_list(usage)
            if chunks is not None:
                answer.text = "".join(chunks)
                break
        else:
            answer.text = self._text_answer if self._text_answer is not None else self._workflow_text()
        answer.complete = (self._ended or self._completed) and not self._failed
        app = ["the app reported status FAILED"] if self._failed else []
        if self._failed_patches:
            app.append(f"{self._failed_patches} diff_block patches did not apply")
        answer.error = self._notes(
            ended=self._ended or self._completed,
            end="before end_of_stream",
            app=app,
            no_answer="no answer carrier in the stream",
        )
        return answer

    def _workflow_text(self) -> str | None:
        """Carrier D (``workflow_block``, no ``ask_text`` at all): the last ``text_payload``'s chunks."""
        found: str | None = None
        for (_usage, field), doc in self._diff.items():
            if field != "workflow_block":
                continue
            stack: list[tuple[Any, int]] = [(doc, 0)]
            while stack:  # depth-first, in document order; bounded depth
                node, depth = stack.pop()
                if depth > 12:
                    continue
                if isinstance(node, dict):
                    chunks = dict_get(node.get("text_payload"), "chunks")
                    if isinstance(chunks, list):
                        found = "".join(t for t in map(jsonpatch.text, chunks) if t is not None)
                    stack.extend((child, depth + 1) for child in reversed(list(node.values())))
                elif isinstance(node, list):
                    stack.extend((child, depth + 1) for child in reversed(node))
        return found

    def _diff_doc(self, usage: str) -> Any:
        return self._diff.get((usage, "markdown_block"))

    def _terminal_text(self, usage: str) -> str | None:
        source = self._terminal_from.get(usage)
        if source == "diff":
            return jsonpatch.text(dict_get(self._diff_doc(usage), "answer"))
        return self._terminal.get(usage) if source == "markdown" else None

    def _chunk_list(self, usage: str) -> list[str] | None:
        source = self._chunks_from.get(usage)
        if source == "diff":
            chunks = dict_get(self._diff_doc(usage), "chunks")
            return [t for t in map(jsonpatch.text, chunks if isinstance(chunks, list) else []) if t is not None]
        return self._chunks.get(usage) if source == "markdown" else None

    def _event(self, event: SSEEvent) -> None:
        if event.event == "end_of_stream":
            self._ended = True
            return
        value = loads_or_none(event.data)
        if not isinstance(value, dict):
            if event.data.strip():
                self._undecodable += 1
            return
        if event.event != "message":
            self._unknown += 1  # an event name we do not know; its envelope is still read
        self._envelope(value)

    def _envelope(self, value: Mapping[str, Any]) -> None:
        """One answer envelope, from an SSE ``message`` or a socket.io ``query_progress``."""
        answer = self._answer
        answer.conversation_id = opt_str(value.get("context_uuid")) or answer.conversation_id
        answer.message_id = opt_str(value.get("backend_uuid")) or answer.message_id
        answer.title = opt_str(value.get("thread_title")) or answer.title
        status = value.get("status")
        if status in ("COMPLETED", "completed") or value.get("final_sse_message") is True:
            self._completed = True
        if status in ("FAILED", "failed"):
            self._failed = True
            return  # FAILED frames still carry text: it is not the answer
        blocks = value.get("blocks")
        for block in blocks if isinstance(blocks, list) else []:
            if isinstance(block, dict):
                self._block(block)
        if "text" in value:
            text = _final_answer(value.get("text"))
            if text is not None:
                self._text_answer = text

    def _block(self, block: Mapping[str, Any]) -> None:
        usage = block.get("intended_usage")
        if not isinstance(usage, str):
            return
        markdown = block.get("markdown_block")
        if isinstance(markdown, dict):
            self._markdown(usage, markdown)
        diff = block.get("diff_block")
        if isinstance(diff, dict):
            field = diff.get("field")
            patches = diff.get("patches")
            if not isinstance(field, str) or not isinstance(patches, list):
                self._undecodable += 1
                return
            doc = self._diff.get((usage, field))
            for patch in patches:
                path = dict_get(patch, "path")
                if not isinstance(patch, dict) or not isinstance(path, str) or not isinstance(patch.get("op"), str):
                    self._failed_patches += 1  # counted and noted: never dropped silently with its text
                    continue
                op, value = str(patch["op"]), patch.get("value")
                grows = len(value) if op in ("add", "append") and isinstance(value, str) else 0
                if not self._grow(grows + jsonpatch.cost(doc, op, path)):
                    break  # past the answer limit: noted once in the answer's error
                doc, ok = jsonpatch.apply(doc, op, path, value, builders=True)
                if not ok:
                    self._failed_patches += 1
            self._diff[(usage, field)] = doc
            if field == "markdown_block" and isinstance(doc, dict):
                if isinstance(doc.get("chunks"), list):
                    self._chunks_from[usage] = "diff"
                if jsonpatch.text(doc.get("answer")) is not None:
                    self._terminal_from[usage] = "diff"

    def _markdown(self, usage: str, markdown: Mapping[str, Any]) -> None:
        chunks = markdown.get("chunks")
        if isinstance(chunks, list):
            offset = markdown.get("chunk_starting_offset")
            start = offset if isinstance(offset, int) and not isinstance(offset, bool) and offset >= 0 else 0
            if self._chunks_from.get(usage) != "markdown":
                self._chunks[usage] = []  # a carrier switch starts over
            kept = self._chunks[usage]
            if start < len(kept):  # splice in place: only what is replaced is touched
                self._answer_chars -= sum(map(len, kept[start:]))
                del kept[start:]
            new = [c for c in chunks if isinstance(c, str)]
            if self._grow(sum(map(len, new))):
                kept.extend(new)
            self._chunks_from[usage] = "markdown"
        if isinstance(markdown.get("answer"), str):
            self._terminal[usage] = markdown["answer"]
            self._terminal_from[usage] = "markdown"

    @property
    def finished(self) -> bool:
        """The envelope said the answer is final (``end_of_stream`` or a completed status)."""
        return self._ended or self._completed or self._failed

    def envelope(self, value: Mapping[str, Any]) -> None:
        """Feed one envelope that did not come as SSE (socket.io)."""
        self._envelope(value)

    def end(self) -> Answer:
        """The answer from the envelopes fed so far (the socket path's :meth:`close`)."""
        answer = self._finish()
        answer.unknown_shapes = self._unknown
        return answer


# socket.io over engine.io: "4" (message) + "2" (event) or "3" (ack), an optional "/namespace,",
# an optional ack id, then the JSON array: 42["query_progress",{...}], 431[{...}], 42/ns,7["x",{}].
_SOCKETIO = re.compile(r"4([23])(?:/[^,\[]{0,200},)?(\d{0,20})(?=\[)")
ANSWER_EVENTS = ("query_progress", "query_answered")


class PerplexitySocketDecoder:
    """Perplexity's socket.io delivery (before its SSE endpoint, and Labs still): each
    ``query_progress`` / ``query_answered`` event or ack payload is one envelope of the SSE
    format, per ``backend_uuid``; Labs' ``<model>_query_progress`` carries a cumulative ``output``.
    A turn ends with a completed (or failed) status or ``final``."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_EVENT) -> None:
        self._turns: OrderedDict[str, PerplexityStreamDecoder] = OrderedDict()
        self._labs: dict[str, Answer] = {}
        self._max = max_message
        self.undecodable = 0

    def message(self, content: bytes) -> list[Answer]:
        if len(content) > self._max:
            self.undecodable += 1
            return []
        text = content.decode("utf-8", "replace")
        match = _SOCKETIO.match(text)
        if match is None:
            return []  # engine.io pings, upgrades, connects: no answer
        packet = loads_or_none(text[match.end() :])
        if not isinstance(packet, list):
            self.undecodable += 1
            return []
        if match.group(1) == "2":
            name, payloads = packet[0] if packet else None, packet[1:]
            if not isinstance(name, str):
                return []
        else:
            name, payloads = None, packet
        done: list[Answer] = []
        for payload in payloads:
            if not isinstance(payload, dict):
                continue
            if isinstance(name, str) and name.endswith("_query_progress") and name not in ANSWER_EVENTS:
                done.extend(self._lab(name, payload))
            elif name is None or name in ANSWER_EVENTS:
                done.extend(self._ask(payload, final=name == "query_answered"))
        return done

    def _ask(self, payload: Mapping[str, Any], *, final: bool) -> list[Answer]:
        if not any(k in payload for k in ("text", "blocks", "status", "backend_uuid")):
            return []  # an ack of something else (threads, uploads)
        key = opt_str(payload.get("backend_uuid")) or opt_str(payload.get("uuid")) or ""
        done: list[Answer] = []
        decoder = self._turns.get(key)
        if decoder is None:
            if len(self._turns) >= MAX_OPEN_TURNS:
                done.append(self._turns.pop(next(iter(self._turns))).end())
            decoder = self._turns[key] = PerplexityStreamDecoder()
        decoder.envelope(payload)
        if final or decoder.finished:
            done.append(self._turns.pop(key).end())
        return done

    def _lab(self, name: str, payload: Mapping[str, Any]) -> list[Answer]:
        answer = self._labs.setdefault(name, Answer())
        if isinstance(payload.get("output"), str):
            answer.text = payload["output"]
        status = payload.get("status")
        if payload.get("final") is True or status in ("completed", "failed"):
            answer.complete = status != "failed"
            answer.error = "the app reported status failed" if status == "failed" else None
            return [self._labs.pop(name)]
        return []

    def close(self) -> list[Answer]:
        answers = [self._turns.pop(key).end() for key in list(self._turns)]
        for answer in self._labs.values():
            answer.error = "socket closed before the answer was final"
            answers.append(answer)
        self._labs.clear()
        return answers


def assistant_notice(message: str, extraction: Extraction) -> BlockReply:
    """One terminal event carrying the notice in both carriers, then ``end_of_stream``."""
    backend = str(uuid.uuid4())
    final_text = json.dumps(
        [{"step_type": "FINAL", "content": {"answer": json.dumps({"answer": message, "web_results": []})}}]
    )
    event = {
        "backend_uuid": backend,
        "context_uuid": extraction.conversation_id or str(uuid.uuid4()),
        "status": "COMPLETED",
        "text_completed": True,
        "final": True,
        "final_sse_message": True,
        "reconnectable": False,
        "blocks": [
            {
                "intended_usage": "ask_text",
                "markdown_block": {
                    "progress": "DONE",
                    "chunks": [message],
                    "chunk_starting_offset": 0,
                    "answer": message,
                },
            }
        ],
        "text": final_text,
    }
    body = sse_json(event, "message", eol="\r\n") + sse_event("{}", "end_of_stream", eol="\r\n")
    return answer_reply(body.encode())


EXTRACTORS: Mapping[str, Extractor] = {
    "perplexity.ask": ask,
    "perplexity.upload_url": upload_url,
    "perplexity.thread": thread,
}
DECODERS: Mapping[str, DecoderFactory] = {"perplexity.sse": PerplexityStreamDecoder}
SOCKET_DECODERS: Mapping[str, SocketDecoderFactory] = {"perplexity.websocket": PerplexitySocketDecoder}
BLOCK_REPLIES: Mapping[str, BlockReplyMaker] = {"perplexity.assistant_notice": assistant_notice}
