"""The shared, batching embedder (issue 17): each text once, concurrent texts in one batch.

The inner encoder here is a recording one (deterministic vectors from the text's bytes), so the
tests can assert what reached the model: how many calls, which texts, in which batches. No test
measures time: a lone request is shown not to wait by the batcher's own count of waits (with a
window of a minute, a wait would also hang the test), concurrency by the batch sizes the encoder
saw while a first call was held open.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pytest

from inference.batching import SharedEmbedder
from inference.embedder import EmbedderSpec, Vector, windows


def _vector(text: str, dimension: int = 8) -> Vector:
    raw = np.frombuffer(hashlib.sha256(text.encode()).digest()[:dimension], dtype=np.uint8).astype(np.float32) + 1
    return raw / np.linalg.norm(raw)


class Recording:
    """An encoder that records every call; ``gate`` (when set) holds the first call open."""

    name = "recording"
    dimension = 8

    def __init__(self, gate: threading.Event | None = None, fail_on: str | None = None) -> None:
        self.calls: list[list[str]] = []
        self.gate = gate
        self.entered = threading.Event()
        self.fail_on = fail_on
        self.spec = EmbedderSpec(path=__import__("pathlib").Path("."))
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> Vector:
        with self._lock:
            self.calls.append(list(texts))
            first = len(self.calls) == 1
        if first and self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30)
        if self.fail_on is not None and self.fail_on in texts:
            raise RuntimeError("model failed")
        return np.stack([_vector(t) for t in texts])

    def embed_windows(self, text: str) -> Vector:
        return self.embed(windows(text, 96, 24, 64))


def test_vectors_are_the_inner_encoders_in_the_callers_order() -> None:
    inner = Recording()
    shared = SharedEmbedder(inner)
    texts = ["b", "a", "b", "c"]
    got = shared.embed(texts)
    assert got.shape == (4, 8) and got.dtype == np.float32
    for row, text in zip(got, texts, strict=True):
        assert np.allclose(row, _vector(text))
    assert inner.calls == [["b", "a", "c"]]  # a text repeated within a call is embedded once
    assert shared.embed([]).shape == (0, 8)


def test_a_text_embedded_before_costs_no_forward_pass() -> None:
    """The intent head's windows and the memory's (unredacted) prompt are the same strings."""
    inner = Recording()
    shared = SharedEmbedder(inner)
    prompt = "Explain the difference between TCP and UDP in two paragraphs."
    shared.embed([prompt, "a request-like segment?"])  # the intent head's call
    memory_vector = shared.embed_windows(prompt)  # the neighbour memory's call
    assert np.allclose(memory_vector[0], _vector(prompt))
    assert inner.calls == [[prompt, "a request-like segment?"]]
    assert shared.stats().cached == 1


def test_the_cache_is_bounded_and_keyed_by_digest() -> None:
    inner = Recording()
    shared = SharedEmbedder(inner, cache_entries=2)
    shared.embed(["one", "two", "three"])
    shared.embed(["one"])  # evicted: embedded again
    assert inner.calls[-1] == ["one"]
    assert all(isinstance(k, bytes) and len(k) == 32 for k in shared._cache)  # digests, not text


def test_a_lone_request_on_an_idle_encoder_does_not_wait_the_window() -> None:
    inner = Recording()
    shared = SharedEmbedder(inner, max_wait_s=60.0)  # a wait would hang the test for a minute
    for i in range(3):
        shared.embed([f"prompt {i}"])
    stats = shared.stats()
    assert stats.waited == 0
    assert stats.batches == (1, 1, 1)


def _run_concurrently(shared: SharedEmbedder, inner: Recording, requests: list[list[str]]) -> dict[int, Vector]:
    """Start the first request, hold the encoder inside it, queue the rest, then let go."""
    results: dict[int, Vector] = {}
    errors: list[BaseException] = []

    def call(i: int) -> None:
        try:
            results[i] = shared.embed(requests[i])
        except BaseException as exc:
            errors.append(exc)

    first = threading.Thread(target=call, args=(0,))
    first.start()
    assert inner.entered.wait(30)
    others = [threading.Thread(target=call, args=(i,)) for i in range(1, len(requests))]
    for t in others:
        t.start()

    def queued() -> int:
        with shared._cond:
            return len(shared._queue)

    expected = len({t for r in requests[1:] for t in r} - set(requests[0]))
    for _ in range(3000):
        if queued() >= expected:
            break
        threading.Event().wait(0.01)
    assert queued() == expected
    assert inner.gate is not None
    inner.gate.set()
    for t in [first, *others]:
        t.join(30)
    assert not errors, errors
    return results


def test_concurrent_requests_go_through_the_encoder_as_one_batch() -> None:
    inner = Recording(gate=threading.Event())
    shared = SharedEmbedder(inner, max_batch=64, max_wait_s=0.0)
    requests = [[f"first {i}" for i in range(2)]] + [[f"prompt {i}", f"window {i}"] for i in range(7)]
    results = _run_concurrently(shared, inner, requests)
    assert [len(c) for c in inner.calls] == [2, 14]  # the held call, then all seven others at once
    for i, texts in enumerate(requests):
        assert np.allclose(results[i], np.stack([_vector(t) for t in texts]))
    assert shared.stats().batches == (2, 14)


def test_a_batch_never_exceeds_max_batch() -> None:
    inner = Recording(gate=threading.Event())
    shared = SharedEmbedder(inner, max_batch=4, max_wait_s=0.0)
    requests = [["held"]] + [[f"p{i}", f"q{i}"] for i in range(5)]
    _run_concurrently(shared, inner, requests)
    sizes = [len(c) for c in inner.calls]
    assert sizes[0] == 1 and max(sizes) <= 4 and sum(sizes) == 11


def test_a_text_in_flight_is_shared_not_recomputed() -> None:
    inner = Recording(gate=threading.Event())
    shared = SharedEmbedder(inner, max_wait_s=0.0)
    same = "Summarise this article about renewable energy."
    results = _run_concurrently(shared, inner, [[same], [same], [same, "other"]])
    assert inner.calls == [[same], ["other"]]
    assert np.allclose(results[1][0], _vector(same)) and np.allclose(results[2][0], _vector(same))
    assert shared.stats().shared == 2


def test_a_text_the_model_cannot_take_fails_only_its_own_caller() -> None:
    inner = Recording(gate=threading.Event(), fail_on="poison")
    shared = SharedEmbedder(inner, max_wait_s=0.0)
    results: dict[str, object] = {}

    def call(name: str, texts: list[str]) -> None:
        try:
            results[name] = shared.embed(texts)
        except RuntimeError as exc:
            results[name] = exc

    first = threading.Thread(target=call, args=("held", ["held"]))
    first.start()
    assert inner.entered.wait(30)
    bad = threading.Thread(target=call, args=("bad", ["poison"]))
    good = threading.Thread(target=call, args=("good", ["fine"]))
    bad.start()
    good.start()
    for _ in range(3000):
        with shared._cond:
            if len(shared._queue) == 2:
                break
        threading.Event().wait(0.01)
    assert inner.gate is not None
    inner.gate.set()
    for t in (first, bad, good):
        t.join(30)
    assert isinstance(results["bad"], RuntimeError)
    good_vector = results["good"]
    assert isinstance(good_vector, np.ndarray) and np.allclose(good_vector[0], _vector("fine"))
    assert ["poison", "fine"] in inner.calls or ["fine", "poison"] in inner.calls  # batched first
    with pytest.raises(RuntimeError):
        shared.embed(["poison"])  # failures are not cached: tried again, fails again


@dataclass
class _NoSpec:
    name: str = "nospec"
    dimension: int = 8

    def embed(self, texts: Sequence[str]) -> Vector:
        return np.stack([_vector(t) for t in texts])

    def embed_windows(self, text: str) -> Vector:
        return self.embed([text])


def test_the_wrapper_takes_name_dimension_and_spec_from_the_inner_encoder() -> None:
    inner = Recording()
    shared = SharedEmbedder(inner)
    assert (shared.name, shared.dimension, shared.spec) == ("recording", 8, inner.spec)
    assert SharedEmbedder(_NoSpec()).embed_windows("x").shape == (1, 8)
    with pytest.raises(ValueError):
        SharedEmbedder(inner, max_batch=0)
