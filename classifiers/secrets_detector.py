"""Secrets and credentials in prompts: provider key formats, private keys, passwords in context,
connection strings, JWTs and high-entropy tokens near credential words.

Rules are data (``classifiers/rules/secrets.toml``, see ``NOTICE.md`` beside it) plus the regex
plugins of Yelp's detect-secrets, used directly. Every pattern is compiled with RE2, whose
matching time is linear in the text, so no prompt can make a rule backtrack; a pattern RE2 cannot
compile is adapted where that is mechanical (look-arounds at the edges) and otherwise rejected and
counted in :attr:`SecretsDetector.rejected`.

Each finding's value is vetted before it is reported: placeholders (``AKIAIOSFODNN7EXAMPLE``,
``your-api-key-here``, ``<TOKEN>``, ``${API_KEY}``, ``os.environ[...]``) and code that merely
refers to a credential score nothing. Explanations name the rule, never the value. Nothing is
written anywhere: detection works on the string in memory. The detector holds only immutable
state after construction, so one instance serves any number of threads.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import functools
import importlib
import itertools
import json
import math
import tomllib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import re2  # type: ignore[import-untyped]

from promptfence.core import Finding, Span, Topic

DEFAULT_RULES_PATH = Path(__file__).with_name("rules") / "secrets.toml"
MAX_FINDINGS_PER_RULE = 64

_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False
_RE2_OPTIONS.max_mem = 64 << 20


class _KeywordSet:
    """Which of the rules' keywords occur in a text, in one linear pass (an RE2 set): testing
    each of ~500 keywords with ``in`` scanned a 128 KB chunk ~500 times."""

    def __init__(self, keywords: Iterable[str]) -> None:
        self.keywords = tuple(dict.fromkeys(keywords))
        self._set: Any = None
        if self.keywords:
            self._set = re2.Set.SearchSet(_RE2_OPTIONS)
            for keyword in self.keywords:
                self._set.Add(re2.escape(keyword))
            self._set.Compile()

    def present(self, lowered: str) -> frozenset[str]:
        if self._set is None:
            return frozenset()
        return frozenset(self.keywords[i] for i in self._set.Match(lowered) or ())


def compile_re2(pattern: str) -> Any:
    """Compile with RE2 (linear-time matching); raises ``re2.error`` for unsupported syntax."""
    return re2.compile(pattern, _RE2_OPTIONS)


# --------------------------------------------------------------------------- value screening

_PLACEHOLDER_MARKERS = (
    "example",
    "sample",
    "dummy",
    "placeholder",
    "your",
    "xxx",
    "***",
    "changeme",
    "change_me",
    "change-me",
    "replace",
    "insert",
    "redacted",
    "${",
    "{{",
    "}}",
    "%(",
    "$(",
    "%s",
    "{}",
    "{0}",
    "process.env",
    "environ",
    "getenv",
    "env(",
    "env.",
    "env[",
    "secrets.",
    "vault(",
    "...",
    "\u2026",
    "fake",
    "todo",
    "tbd",
    "fixme",
    "_here",
    "-here",
    " here",
    "mock",
    "notreal",
    "not_real",
    "not-a-real",
)

_WEAK_VALUES = frozenset(
    {
        "password",
        "passwd",
        "pass",
        "pwd",
        "secret",
        "token",
        "key",
        "apikey",
        "api_key",
        "value",
        "string",
        "str",
        "int",
        "bool",
        "bytes",
        "none",
        "null",
        "nil",
        "undefined",
        "true",
        "false",
        "empty",
        "blank",
        "required",
        "optional",
        "default",
        "test",
        "testing",
        "foo",
        "bar",
        "baz",
        "foobar",
        "abc",
        "abc123",
        "123",
        "1234",
        "12345",
        "123456",
        "hidden",
        "masked",
        "omitted",
        "removed",
        "unknown",
        "any",
        "object",
        "text",
        "char",
        "varchar",
    }
)

_SEQUENCES = ("abcdefghijklmnopqrstuvwxyz", "0123456789", "1234567890", "qwertyuiop", "asdfghjkl")

_ENV_NAME = compile_re2(r"^\$?[A-Z][A-Z0-9]*(?:_[A-Z0-9]+)+$")
_VARIABLE_REF = compile_re2(
    r"^(?:\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|%[A-Za-z_][A-Za-z0-9_]*%|@[A-Za-z_][A-Za-z0-9_]*@|:[A-Za-z_][A-Za-z0-9_]*)$"
)
_MEMBER_ACCESS = compile_re2(r"^[A-Za-z_$][A-Za-z0-9_$]*(?:(?:\.|->|::)[A-Za-z_$][A-Za-z0-9_$]*)+$")
_IDENTIFIER = compile_re2(r"^[A-Za-z_$][A-Za-z0-9_$]*$")
_UUID = compile_re2(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def shannon_entropy(value: str) -> float:
    """Bits per character of the value's own character distribution."""
    if not value:
        return 0.0
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values())


def is_placeholder(value: str) -> bool:
    """True for values that stand in for a credential rather than being one."""
    v = value.strip().strip("\"'`")
    if len(v) < 3:
        return True
    lv = v.lower()
    if lv in _WEAK_VALUES:
        return True
    if any(marker in lv for marker in _PLACEHOLDER_MARKERS):
        return True
    if len(set(lv)) <= 2 or (len(v) >= 8 and len(set(lv)) <= 3):
        return True
    if "<" in v and ">" in v[v.index("<") :]:
        return True  # <TOKEN>, <your key>
    if _VARIABLE_REF.search(v) or _ENV_NAME.search(v):
        return True
    alnum = "".join(c for c in lv if c.isalnum())
    return len(alnum) >= 6 and any(alnum in seq for seq in _SEQUENCES)


def _char_classes(value: str) -> int:
    return sum(
        (
            any(c.islower() for c in value),
            any(c.isupper() for c in value),
            any(c.isdigit() for c in value),
            any(not c.isalnum() for c in value),
        )
    )


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)


def _transition_ratio(value: str) -> float:
    """How often consecutive characters change class: high for random strings, low for words."""

    def cls(c: str) -> int:
        return 0 if c.islower() else 1 if c.isupper() else 2 if c.isdigit() else 3

    if len(value) < 2:
        return 0.0
    changes = sum(1 for a, b in itertools.pairwise(value) if cls(a) != cls(b))
    return changes / (len(value) - 1)


def identifier_words(identifier: str) -> set[str]:
    """Split ``DevPfxPassword`` / ``aws_secret_key`` / ``apiKey`` into lower-case words."""
    words: list[str] = []
    current = ""
    prev = ""
    for c in identifier:
        if not c.isalnum():
            if current:
                words.append(current)
            current = ""
        elif c.isupper() and prev and (prev.islower() or prev.isdigit()):
            words.append(current)
            current = c
        else:
            current += c
        prev = c
    if current:
        words.append(current)
    out: set[str] = set()
    for word in words:
        w = word.lower()
        out.add(w)
        for suffix in ("password", "passwd", "secret", "token", "key"):
            if w.endswith(suffix) and len(w) > len(suffix):
                out.add(suffix)
                out.add(w[: -len(suffix)])
    return out


_PASSWORD_WORDS = frozenset(
    {"password", "passwd", "pass", "pwd", "pw", "passphrase", "passcode", "pword", "psw", "passw"}
)
_SECRET_WORDS = frozenset({"secret", "secrets", "token", "credential", "credentials", "creds", "apikey", "authtoken"})
_KEY_QUALIFIERS = frozenset(
    {
        "api",
        "access",
        "private",
        "secret",
        "signing",
        "encryption",
        "client",
        "master",
        "auth",
        "app",
        "license",
        "licence",
        "service",
        "account",
        "subscription",
        "consumer",
        "admin",
        "write",
        "deploy",
        "ssh",
        "gpg",
        "pgp",
        "hmac",
        "webhook",
        "bot",
        "integration",
        "rest",
        "management",
        "storage",
        "insert",
        "ingest",
        "personal",
        "session",
        "jwt",
        "crypt",
        "cipher",
        "aes",
    }
)
_NON_SECRET_WORDS = frozenset(
    {
        "length",
        "len",
        "min",
        "max",
        "minlength",
        "maxlength",
        "field",
        "fields",
        "label",
        "prompt",
        "policy",
        "regex",
        "pattern",
        "hint",
        "error",
        "errors",
        "placeholder",
        "type",
        "types",
        "file",
        "filename",
        "path",
        "url",
        "uri",
        "endpoint",
        "name",
        "id",
        "ids",
        "expiry",
        "expires",
        "expiration",
        "ttl",
        "timeout",
        "age",
        "count",
        "strength",
        "validator",
        "validation",
        "template",
        "header",
        "mode",
        "enabled",
        "required",
        "format",
        "reset",
        "changed",
        "hash",
        "hashed",
        "digest",
        "salt",
        "rounds",
        "algorithm",
        "algo",
        "size",
        "bits",
        "tokens",
        "tokenizer",
        "tokenize",
        "usage",
        "limit",
        "index",
        "idx",
        "public",
        "pub",
        "publishable",
        "prefix",
        "version",
        "rotation",
        "ref",
        "arn",
        "input",
        "cache",
        "primary",
        "foreign",
        "sort",
        "partition",
        "keyboard",
        "keyword",
        "keywords",
        "keys",
        "hotkey",
        "button",
        "text",
        "message",
        "msg",
        "title",
        "description",
        "desc",
        "class",
        "style",
        "icon",
        "color",
        "visible",
        "show",
        "toggle",
        "confirmation",
        "manager",
        "provider",
        "store",
        "location",
        "region",
        "source",
        "kind",
        "method",
        "scheme",
        "schema",
        "scope",
        "scopes",
        "user",
        "username",
        "login",
        "email",
        "bypass",
        "compass",
        "passenger",
        "passport",
        "passive",
        "passthrough",
    }
)


def _is_password_key(words: set[str]) -> bool:
    return bool(words & _PASSWORD_WORDS) and not (words & _NON_SECRET_WORDS - {"user", "username", "login", "email"})


def _is_secret_key(words: set[str]) -> bool:
    if words & _NON_SECRET_WORDS:
        return False
    if words & _SECRET_WORDS or words & _PASSWORD_WORDS:
        return True
    return "key" in words and bool(words & _KEY_QUALIFIERS)


def _looks_like_code(value: str) -> bool:
    return any(c in value for c in "()[]{}") or bool(_MEMBER_ACCESS.search(value))


# --------------------------------------------------------------------------- rules


@dataclass(frozen=True)
class SecretRule:
    """One compiled rule: ``regex`` is an RE2 object; ``source`` names the rule set."""

    id: str
    description: str
    pattern: str
    regex: Any
    score: float
    keywords: tuple[str, ...] = ()
    check: str = "value"
    min_entropy: float | None = None
    context_score: float | None = None
    source: str = "promptfence"


@dataclass(frozen=True)
class RejectedRule:
    id: str
    source: str
    reason: str


@dataclass(frozen=True)
class _Candidate:
    rule: SecretRule
    start: int
    end: int
    score: float
    note: str = ""


def load_rules(path: Path = DEFAULT_RULES_PATH) -> tuple[list[SecretRule], list[RejectedRule], dict[str, Any]]:
    """Compile the TOML rule file; returns (rules, rejected, raw config)."""
    with path.open("rb") as fh:  # read-only
        config = tomllib.load(fh)
    rules: list[SecretRule] = []
    rejected: list[RejectedRule] = []
    for raw in config.get("rules", ()):
        rule_id = str(raw["id"])
        try:
            regex = compile_re2(str(raw["regex"]))
        except re2.error as exc:
            rejected.append(RejectedRule(rule_id, "promptfence", f"RE2: {exc}"))
            continue
        rules.append(
            SecretRule(
                id=rule_id,
                description=str(raw["description"]),
                pattern=str(raw["regex"]),
                regex=regex,
                score=float(raw["score"]),
                keywords=tuple(str(k).lower() for k in raw.get("keywords", ())),
                check=str(raw.get("check", "value")),
                min_entropy=None if raw.get("min_entropy") is None else float(raw["min_entropy"]),
                context_score=None if raw.get("context_score") is None else float(raw["context_score"]),
            )
        )
    return rules, rejected, config


_LOOKBEHIND_START = "(?:(?<=\\W)|(?<=^))"
_NEG_LOOKAHEAD_END = "(?!\\w)"
_IGNORECASE = 2
_VERBOSE = 64


def adapt_for_re2(pattern: str, flags: int) -> str:
    """Rewrite the edge look-arounds detect-secrets uses into consuming RE2 equivalents.

    The secret stays in the named group ``s``; the consumed boundary characters fall outside it.
    """
    prefix = suffix = ""
    core = pattern
    if core.startswith(_LOOKBEHIND_START):
        core = core[len(_LOOKBEHIND_START) :]
        prefix = "(?:^|\\W)"
    if core.endswith(_NEG_LOOKAHEAD_END):
        core = core[: -len(_NEG_LOOKAHEAD_END)]
        suffix = "(?:\\W|$)"
    core = core.replace("{50,1024}", "{50,1000}")  # RE2 caps counted repetition at 1000
    inline = "(?i)" if flags & _IGNORECASE else ""
    return f"{inline}{prefix}(?P<s>{core}){suffix}"


def load_detect_secrets_rules(config: Mapping[str, Any]) -> tuple[list[SecretRule], list[RejectedRule]]:
    """The regex plugins of detect-secrets named in the config, compiled with RE2."""
    section = config.get("detect_secrets") or {}
    if not section.get("enabled", False):
        return [], []
    rules: list[SecretRule] = []
    rejected: list[RejectedRule] = []
    for cls_name, spec in (section.get("plugins") or {}).items():
        try:
            module = importlib.import_module(f"detect_secrets.plugins.{spec['module']}")
            plugin = getattr(module, cls_name)
            denylist: Iterable[Any] = plugin.denylist
            description = str(plugin.secret_type)
        except (ImportError, AttributeError) as exc:
            rejected.append(RejectedRule(cls_name, "detect-secrets", f"unavailable: {type(exc).__name__}"))
            continue
        for index, compiled in enumerate(denylist):
            rule_id = f"ds-{cls_name}-{index}"
            flags = int(compiled.flags)
            if flags & _VERBOSE:
                rejected.append(RejectedRule(rule_id, "detect-secrets", "verbose pattern"))
                continue
            pattern = adapt_for_re2(str(compiled.pattern), flags)
            try:
                regex = compile_re2(pattern)
            except re2.error as exc:
                rejected.append(RejectedRule(rule_id, "detect-secrets", f"RE2: {exc}"))
                continue
            rules.append(
                SecretRule(
                    id=rule_id,
                    description=f"{description} (detect-secrets {cls_name})",
                    pattern=pattern,
                    regex=regex,
                    score=float(spec.get("score", 0.7)),
                    check=str(spec.get("check", "value")),
                    source="detect-secrets",
                )
            )
    return rules, rejected


# --------------------------------------------------------------------------- the detector

_CONTEXT_WORDS = (
    "key",
    "token",
    "secret",
    "passw",
    "pwd",
    "auth",
    "credential",
    "bearer",
    "api",
    "private",
    "signature",
    "access",
    "session",
    "cookie",
)
_NOT_SECRET_CONTEXT = (
    "sha1",
    "sha-1",
    "sha256",
    "sha-256",
    "sha384",
    "sha512",
    "md5",
    "hash",
    "checksum",
    "digest",
    "integrity",
    "commit",
    "etag",
    "base64,",
    "revision",
    "uuid",
    "guid",
)
_CONNSTR_KEYS = compile_re2(
    r"(?i)(?:server|data source|host|initial catalog|database|dsn|provider|driver|user id|uid|username|user)\s*="
)
_DB_SCHEMES = frozenset(
    {
        "postgres",
        "postgresql",
        "mysql",
        "mariadb",
        "mongodb",
        "mongodb+srv",
        "redis",
        "rediss",
        "amqp",
        "amqps",
        "mssql",
        "sqlserver",
        "oracle",
        "cockroachdb",
        "clickhouse",
        "cassandra",
        "neo4j",
        "bolt",
        "couchdb",
        "elasticsearch",
        "ldap",
        "ldaps",
        "ftp",
        "ftps",
        "sftp",
        "smtp",
        "smtps",
        "imap",
        "imaps",
        "pop3",
        "nats",
        "kafka",
        "memcached",
        "influxdb",
        "snowflake",
        "ssh",
        "git",
        "svn",
    }
)
_JWT_HEADER_KEYS = frozenset({"alg", "typ", "kid", "enc", "cty", "x5t", "jku"})


def _b64url_json(segment: str) -> Any:
    padded = segment + "=" * (-len(segment) % 4)
    try:
        return json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None


class SecretsDetector:
    """Finds credentials; findings are ``Topic.CREDENTIALS`` with kind ``secret.<rule id>``."""

    name = "secrets"

    def __init__(self, rules_path: Path | None = None, *, use_detect_secrets: bool = True) -> None:
        self._args = (rules_path, use_detect_secrets)
        rules, rejected, config = load_rules(rules_path or DEFAULT_RULES_PATH)
        if use_detect_secrets:
            ds_rules, ds_rejected = load_detect_secrets_rules(config)
            rules += ds_rules
            rejected += ds_rejected
        self.rules: tuple[SecretRule, ...] = tuple(rules)
        self._keywords = _KeywordSet(k for rule in self.rules for k in rule.keywords)
        self.rejected: tuple[RejectedRule, ...] = tuple(rejected)
        meta = config.get("meta") or {}
        self.version = f"1.0+rules.{meta.get('version', '0')}"

    # -- public --------------------------------------------------------------------------

    def worker_factory(self) -> Callable[[], SecretsDetector]:
        """A picklable way to build this detector again in a worker process."""
        rules_path, use_detect_secrets = self._args
        return functools.partial(SecretsDetector, rules_path, use_detect_secrets=use_detect_secrets)

    def detect(self, text: str) -> Sequence[Finding]:
        if not text:
            return []
        lowered = text.lower()
        present = self._keywords.present(lowered)
        candidates: list[_Candidate] = []
        for rule in self.rules:
            if rule.keywords and present.isdisjoint(rule.keywords):
                continue
            found = 0
            for match in rule.regex.finditer(text):
                candidate = self._vet(rule, match, text, lowered)
                if candidate is not None and candidate.score > 0.0:
                    candidates.append(candidate)
                    found += 1
                    if found >= MAX_FINDINGS_PER_RULE:
                        break  # enough evidence; bounds the work on adversarial input
        return [self._finding(c) for c in _non_overlapping(candidates)]

    # -- internals -----------------------------------------------------------------------

    def _finding(self, c: _Candidate) -> Finding:
        note = f"; {c.note}" if c.note else ""
        return Finding(
            detector=self.name,
            kind=f"secret.{c.rule.id}",
            topic=Topic.CREDENTIALS,
            score=c.score,
            span=Span(c.start, c.end),
            explanation=f"{c.rule.source} rule {c.rule.id}: {c.rule.description}{note}",
        )

    def _vet(self, rule: SecretRule, match: Any, text: str, lowered: str) -> _Candidate | None:
        groups: dict[str, Any] = match.groupdict()
        name = next((g for g in ("s", "q1", "q2", "q3", "q4", "u") if groups.get(g) is not None), None)
        if rule.source == "detect-secrets":
            inner = [i for i in range(1, len(match.groups()) + 1) if match.group(i) is not None]
            spans = [match.span(i) for i in inner if match.span(i)[1] - match.span(i)[0] >= 8]
            start, end = spans[-1] if spans else match.span(rule.regex.groupindex["s"])
        elif name is not None:
            start, end = match.span(rule.regex.groupindex[name])
        else:
            start, end = match.span()
        value = text[start:end]
        quoted = name in ("q1", "q2", "q3", "q4")
        check = rule.check
        score = rule.score
        if check == "none":
            return _Candidate(rule, start, end, score)
        if check == "pem":
            return _Candidate(rule, match.start(), match.end(), score) if _pem_body_ok(value) else None
        if check == "jwt":
            return _Candidate(rule, start, end, score) if _jwt_ok(value) else None
        if check == "entropy":
            return self._vet_entropy(rule, value, start, end, text, lowered)
        if is_placeholder(value):
            return None
        if rule.min_entropy is not None and shannon_entropy(value) < rule.min_entropy:
            return None
        if check == "uri":
            return _vet_uri(rule, groups, value, start, end)
        if check == "connstr":
            line_start = text.rfind("\n", 0, match.start()) + 1
            context = text[line_start:end]
            if value.startswith("{") and value.endswith("}"):
                value = value[1:-1]
            if is_placeholder(value) or value.startswith(("$", "%")):
                return None
            if not _CONNSTR_KEYS.search(context):
                if _looks_like_code(value) or (_IDENTIFIER.search(value) and not any(c.isdigit() for c in value)):
                    return None  # `password = other_variable` in code, not a connection string
                score = min(score, 0.7)
            return _Candidate(rule, start, end, score)
        key = groups.get("key")
        key_start = match.start()
        if key is not None:
            prefix = _extend_key(text, match.start(rule.regex.groupindex["key"]))
            key = prefix + key
            key_start = match.start(rule.regex.groupindex["key"]) - len(prefix)
        words = identifier_words(key) if key else set()
        op = (groups.get("op") or "").strip()
        if check == "password":
            if key is not None and not _is_password_key(words):
                return None
            return self._vet_password(rule, value, quoted, op, key, key_start, match, text, start, end)
        if check == "secret":
            if key is not None and not _is_secret_key(words):
                return None
            if key is not None and words & _PASSWORD_WORDS and not (words & _SECRET_WORDS):
                return None  # the password rule owns these
            return _vet_secret_value(rule, value, quoted, op, start, end)
        if check == "secret_weak":
            value = value.rstrip(",;)")
            if _looks_like_code(value) and not any(c.isdigit() for c in value):
                return None
            return _Candidate(rule, start, end, score)
        return _Candidate(rule, start, end, score)

    def _vet_password(
        self,
        rule: SecretRule,
        value: str,
        quoted: bool,
        op: str,
        key: str | None,
        key_start: int,
        match: Any,
        text: str,
        start: int,
        end: int,
    ) -> _Candidate | None:
        if key is not None and value.strip().lower() == key.strip("\"'[]").lower():
            return None
        config_line = not quoted and key is not None and _config_line(text, key_start, match, rule, op)
        if config_line and not _looks_like_code(value):
            return _Candidate(rule, start, end, min(rule.score, 0.72))
        if key is not None and identifier_words(value) & _PASSWORD_WORDS and _IDENTIFIER.search(value) and not quoted:
            return None  # password = user_password
        if quoted:
            if value.count(" ") >= 3 or ("\\" in value and len(value) > 40):
                return None
            return _Candidate(rule, start, end, rule.score)
        if op in ("==", "!="):
            return None
        if _looks_like_code(value):
            return None
        if _IDENTIFIER.search(value) and not any(c.isdigit() for c in value):
            return None  # an identifier on the right of a code assignment
        return _Candidate(rule, start, end, min(rule.score, 0.72))

    def _vet_entropy(
        self, rule: SecretRule, value: str, start: int, end: int, text: str, lowered: str
    ) -> _Candidate | None:
        if len(value) > 4000:
            return None
        token = value.strip("=.-~_")
        start += len(value) - len(value.lstrip("=.-~_"))
        end = start + len(token)
        n = len(token)
        if n < 20 or not any(c.isdigit() for c in token) or not any(c.isalpha() for c in token):
            return None
        if _UUID.search(token) or is_placeholder(token):
            return None
        if "." in token and any(part.isalpha() or not part for part in token.split(".")):
            return None  # dotted names, domains, versions
        if "/" in token and any(len(p) >= 3 and p.isalpha() for p in token.split("/")):
            return None  # paths
        line_start = text.rfind("\n", 0, start) + 1
        before = lowered[max(line_start, start - 48) : start]
        if any(word in before for word in _NOT_SECRET_CONTEXT):
            return None
        if _decodes_to_text(token):
            return None
        entropy = shannon_entropy(token)
        if _is_hex(token):
            if n < 32 or entropy < 3.0:
                return None
        else:
            if entropy < min(4.2, 0.78 * math.log2(n)) or _char_classes(token) < 3:
                return None
            if _transition_ratio(token) < 0.3:
                return None
        if any(word in before for word in _CONTEXT_WORDS):
            return _Candidate(rule, start, end, rule.context_score or rule.score, "credential keyword nearby")
        if n > 200:
            return None  # a long blob with nothing around it saying it is a credential
        return _Candidate(rule, start, end, rule.score)


def _config_line(text: str, key_start: int, match: Any, rule: SecretRule, op: str) -> bool:
    """``DB_PASSWORD=x`` / ``password: x`` on a line of its own (env, ini, YAML), not code."""
    index = rule.regex.groupindex
    if "key" not in index or "u" not in index or op not in ("=", ":"):
        return False
    line_start = text.rfind("\n", 0, key_start) + 1
    before = text[line_start:key_start].strip().lower()
    for lead in ("export", "set", "#", "//", ";", "- ", "env", "-d"):
        before = before.removeprefix(lead).strip()
    if before:
        return False
    between = text[match.end(index["key"]) : match.start(index["u"])]
    line_end = text.find("\n", match.end(index["u"]))
    rest = text[match.end(index["u"]) : len(text) if line_end < 0 else line_end].strip()
    if op == "=" and " " in between:
        return False  # `password = value` with spaces reads as code
    return not rest or rest.startswith("#")


_KEY_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.$@-[]\"'")


def _extend_key(text: str, start: int, limit: int = 60) -> str:
    """The identifier characters just before ``start``: ``AdminPassword`` from ``Password``."""
    i = start
    while i > 0 and start - i < limit and text[i - 1] in _KEY_CHARS:
        i -= 1
    return text[i:start]


def _vet_uri(rule: SecretRule, groups: Mapping[str, Any], password: str, start: int, end: int) -> _Candidate | None:
    scheme = str(groups.get("scheme") or "").lower()
    user = str(groups.get("user") or "")
    host = str(groups.get("host") or "")
    if scheme.startswith("jdbc:"):
        scheme = scheme[5:]
    if password.isdigit() and len(password) <= 5 and "." in user:
        return None  # host:port@..., not a password
    if password.startswith(("$", "%", ":")) or host.startswith(("$", "{", "<")):
        return None
    score = 0.9 if scheme in _DB_SCHEMES else 0.8 if scheme in ("http", "https") else 0.75
    if user and user.lower() == password.lower():
        score = 0.45
    return _Candidate(rule, start, end, min(score, max(rule.score, score)))


def _vet_secret_value(rule: SecretRule, value: str, quoted: bool, op: str, start: int, end: int) -> _Candidate | None:
    v = value.strip("\"'")
    if not quoted and (op in ("==", "!=") or _looks_like_code(v)):
        return None
    if not quoted and _IDENTIFIER.search(v) and not any(c.isdigit() for c in v):
        return None
    if " " in v.strip():
        return None
    n = len(v)
    entropy = shannon_entropy(v)
    classes = _char_classes(v)
    if n >= 16 and entropy >= 3.0 and classes >= 2:
        return _Candidate(rule, start, end, rule.score)
    if n >= 8 and entropy >= 2.5 and classes >= 2:
        return _Candidate(rule, start, end, min(rule.score, 0.65))
    if quoted and n >= 6:
        return _Candidate(rule, start, end, min(rule.score, 0.45))
    return None


def _decodes_to_text(token: str) -> bool:
    """Base64 of readable text (an encoded instruction, say) rather than random key material."""
    if len(token) < 24:
        return False
    chunk = token[: len(token) // 4 * 4]
    try:
        raw = base64.b64decode(chunk, altchars=b"-_" if ("-" in chunk or "_" in chunk) else None, validate=True)
    except (binascii.Error, ValueError):
        return False
    printable = sum(1 for b in raw if 32 <= b < 127 or b in (9, 10, 13))
    return bool(raw) and printable / len(raw) > 0.95 and raw.count(b" ") >= len(raw) // 12


def _pem_body_ok(body: str) -> bool:
    cleaned = body.replace("\\n", "").replace("\\r", "")
    lines = [ln.strip() for ln in cleaned.splitlines() if ln.strip() and ":" not in ln]
    material = "".join(lines).replace(" ", "")
    if len(material) < 64 or (is_placeholder(material[:200]) and "xxx" in material.lower()):
        return False
    lowered = material.lower()
    if any(marker in lowered for marker in ("...", "<", "your", "redacted", "example", "xxxx")):
        return False
    b64 = sum(1 for c in material if c.isalnum() or c in "+/=")
    return b64 / len(material) > 0.95 and shannon_entropy(material) >= 4.5


def _jwt_ok(token: str) -> bool:
    parts = token.split(".")
    if len(parts) < 2:
        return False
    header = _b64url_json(parts[0])
    payload = _b64url_json(parts[1])
    return isinstance(header, dict) and bool(_JWT_HEADER_KEYS & header.keys()) and isinstance(payload, dict)


def _non_overlapping(candidates: list[_Candidate]) -> list[_Candidate]:
    """Keep the strongest evidence for each stretch of text; overlapping weaker matches go."""
    starts: list[int] = []  # kept spans, disjoint and sorted by start
    ends: list[int] = []
    kept: list[_Candidate] = []
    for c in sorted(candidates, key=lambda c: (-c.score, c.start, -(c.end - c.start))):
        i = bisect.bisect_right(starts, c.start)
        if i > 0 and ends[i - 1] > c.start:
            continue  # overlaps the kept span starting before it
        if i < len(starts) and starts[i] < c.end:
            continue  # overlaps the kept span starting after it
        starts.insert(i, c.start)
        ends.insert(i, c.end)
        kept.append(c)
    kept.sort(key=lambda c: c.start)
    return kept
