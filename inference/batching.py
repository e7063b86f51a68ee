"""One encoder, many callers: embed each text once, and concurrent texts in one batch.

Two costs this removes (issue 17, measured with py-spy on the 2-core machine: the MiniLM
forward pass was most of an inspection's CPU):

- **The same text twice.** The intent head embeds the prompt's windows; the neighbour memory
  embeds the redacted prompt's windows. With nothing redacted (most prompts) those are the same
  strings, and each used to cost a forward pass. :class:`SharedEmbedder` keys every text by its
  SHA-256 (the text itself is not kept): a text already embedded comes from a small LRU cache, a
  text another thread is embedding right now is waited for, never recomputed.
- **One forward pass per request.** A serving framework's dynamic batcher: texts from concurrent
  inspections go through the encoder as one batch (at most ``max_batch`` texts), which on CPU
  costs far less than the same texts one call each (one graph launch, wide matrix products).

The batcher has no thread of its own (leader/follower): the caller that finds the encoder idle
runs the batch itself. It waits for more texts (at most ``max_wait_s``) only when it found the
encoder busy or others queued, that is when there is concurrency to gather; a lone prompt on
an idle inspector goes straight to the encoder and pays no extra latency. A batch that raises
is retried text by text, so a text the model cannot take fails only the caller it came from
(with the model's exception, prompt-free by contract), never the prompts batched with it.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from inference.embedder import Embedder, Vector
from promptfence import metrics

EMBED_TEXTS = metrics.counter(
    "promptfence_embed_texts_total",
    "Texts asked of the shared encoder, by how they were answered (computed, cached, shared).",
    ("outcome",),
)
EMBED_BATCH = metrics.histogram(
    "promptfence_embed_batch_texts",
    "Texts per encoder call (micro-batches of concurrent inspections).",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)


@dataclass
class _Slot:
    """One distinct text on its way through the encoder."""

    text: str
    vector: Vector | None = None
    error: BaseException | None = None
    done: bool = False


@dataclass(frozen=True)
class BatchStats:
    """Counters since start (for tests, ``bench``, and the metrics endpoint)."""

    batches: tuple[int, ...]  # sizes of the most recent batches, oldest first
    waited: int  # batches whose leader waited for more texts
    computed: int  # texts the encoder embedded
    cached: int  # texts answered from the cache
    shared: int  # texts answered by another caller's batch in flight


class SharedEmbedder:
    """An :class:`~inference.embedder.Embedder` in front of another: memoised, shared, batched.

    ``name``, ``dimension`` and ``spec`` are the inner embedder's (the intent detector reads the
    window settings from ``spec``); ``embed_windows`` cuts windows exactly as the inner one does.
    """

    def __init__(
        self,
        inner: Embedder,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.003,
        cache_entries: int = 4096,
        history: int = 256,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s cannot be negative")
        self.inner = inner
        self.name = inner.name
        self.dimension = inner.dimension
        self.spec: Any = getattr(inner, "spec", None)
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.cache_entries = max(0, cache_entries)
        self._cond = threading.Condition()
        self._queue: deque[tuple[bytes, _Slot]] = deque()
        self._inflight: dict[bytes, _Slot] = {}
        self._cache: OrderedDict[bytes, Vector] = OrderedDict()
        self._busy = False
        self._batches: deque[int] = deque(maxlen=history)
        self._waited = 0
        self._computed = 0
        self._cached = 0
        self._shared = 0

    # -- the Embedder protocol --------------------------------------------------------------
    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        keys = [_digest(t) for t in texts]
        slots: dict[bytes, _Slot] = {}
        with self._cond:
            contended = self._busy or bool(self._queue)
            for key, text in zip(keys, texts, strict=True):
                if key in slots:
                    continue
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    slots[key] = _Slot(text, cached, done=True)
                    self._cached += 1
                    EMBED_TEXTS.labels("cached").inc()
                    continue
                running = self._inflight.get(key)
                if running is not None:
                    slots[key] = running
                    self._shared += 1
                    EMBED_TEXTS.labels("shared").inc()
                    continue
                slot = _Slot(text)
                self._inflight[key] = slot
                self._queue.append((key, slot))
                slots[key] = slot
            self._cond.notify_all()  # a leader gathering a batch may take these texts too
            while not all(s.done for s in slots.values()):
                if not self._busy and self._queue:
                    self._lead(contended)
                    contended = True  # the rest of ours (a capped batch) queued behind others
                else:
                    self._cond.wait()
        for slot in slots.values():
            if slot.error is not None:
                raise slot.error
        return np.stack([slots[k].vector for k in keys]).astype(np.float32, copy=False)  # type: ignore[misc]

    def embed_windows(self, text: str) -> Vector:
        from inference.embedder import windows

        spec = self.spec
        if spec is None:
            return self.embed([text])
        return self.embed(windows(text, spec.window_words, spec.overlap_words, spec.max_windows))

    # -- batching ---------------------------------------------------------------------------
    def _lead(self, contended: bool) -> None:
        """Run one batch (called holding the lock; releases it around the model call)."""
        self._busy = True
        waited = False
        if contended and self.max_wait_s > 0:
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                waited = True
                self._cond.wait(left)
        batch = [self._queue.popleft() for _ in range(min(self.max_batch, len(self._queue)))]
        self._batches.append(len(batch))
        self._waited += waited
        EMBED_BATCH.observe(len(batch))
        self._cond.release()
        try:
            outcomes = self._run([slot.text for _key, slot in batch])
        finally:
            self._cond.acquire()
        for (key, slot), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                slot.error = outcome
            else:
                slot.vector = outcome
                self._computed += 1
                EMBED_TEXTS.labels("computed").inc()
                if self.cache_entries:
                    self._cache[key] = outcome
                    if len(self._cache) > self.cache_entries:
                        self._cache.popitem(last=False)
            slot.done = True
            self._inflight.pop(key, None)
        self._busy = False
        self._cond.notify_all()

    def _run(self, texts: list[str]) -> list[Vector | BaseException]:
        """One row (or the exception) per text. A batch that fails is retried text by text, so
        that a text the model cannot take fails only the inspection it came from."""
        try:
            vectors = self.inner.embed(texts)
            if vectors.shape[0] != len(texts):
                raise RuntimeError(f"{self.name} returned {vectors.shape[0]} vectors for {len(texts)} texts")
            return [np.array(row, dtype=np.float32) for row in vectors]
        except Exception as exc:
            if len(texts) == 1:
                return [exc]
        return [self._run([text])[0] for text in texts]

    def stats(self) -> BatchStats:
        with self._cond:
            return BatchStats(tuple(self._batches), self._waited, self._computed, self._cached, self._shared)

    def close(self) -> None:
        closer = getattr(self.inner, "close", None)
        if callable(closer):
            closer()


def _digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).digest()
