"""The app catalogue: which hosts belong to which GenAI app, and which requests are which operation.

Apps are data (one YAML file per app in ``proxy/apps/``); this module validates them, with
file and line in every error, and compiles them once into a :class:`Catalogue` whose ``match``
is a dict lookup on the host plus a short ordered list of method/path(/query) regexes. Patterns
are matched case-insensitively against the *canonical* path and query (:mod:`proxy.canonical`),
never the raw bytes, so a respelling of a prompt endpoint is still that endpoint.

An operation names its request ``extractor``, its answer ``decoder`` and its ``block_reply``
by registry name (:mod:`proxy.registry`); ``query`` is an optional regex over the raw query
string, for apps that put the operation there (Gemini's ``batchexecute?rpcids=...``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from promptfence.core import OperationKind
from promptfence.errors import ConfigError
from promptfence.yamlsource import YamlList, YamlMap, load_yaml_file
from proxy.canonical import canonical_host, canonical_path, canonical_query, split_target
from proxy.registry import BLOCK_REPLIES, DECODERS, DEFAULT_BLOCK_REPLY, EXTRACTORS

BUILTIN_APPS_DIR = Path(__file__).parent / "apps"


@dataclass(frozen=True)
class OperationSpec:
    operation_id: str
    kind: OperationKind
    method: str | None
    path: re.Pattern[str]
    extractor: str | None
    block_reply: str
    inspect: bool
    decoder: str | None = None
    query: re.Pattern[str] | None = None
    host: re.Pattern[str] | None = None


@dataclass(frozen=True)
class AppSpec:
    app: str
    name: str
    app_type: str
    hosts: tuple[str, ...]
    operations: tuple[OperationSpec, ...]
    source: str
    # Body fields (JSON keys, form names) holding the app's own tokens, e.g. Gemini's XSRF "at":
    # not inspected as "other request fields" (they would read as credentials on every prompt).
    opaque_fields: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Match:
    app: AppSpec
    operation: OperationSpec


class Catalogue:
    """Compiled matcher over every app: host -> app, then the first matching operation."""

    def __init__(self, apps: Sequence[AppSpec]) -> None:
        self.apps = tuple(apps)
        self._exact: dict[str, AppSpec] = {}
        self._suffixes: list[tuple[str, AppSpec]] = []
        for app in self.apps:
            for host in app.hosts:
                if host.startswith("*."):
                    self._suffixes.append((host[1:], app))
                elif host in self._exact:
                    other = self._exact[host].source
                    raise ConfigError(f"host {host!r} is already claimed by {other}", source=app.source)
                else:
                    self._exact[host] = app

    def app_for_host(self, host: str) -> AppSpec | None:
        host = canonical_host(host)
        if not host:
            return None
        app = self._exact.get(host)
        if app is not None:
            return app
        for suffix, candidate in self._suffixes:
            if host.endswith(suffix):
                return candidate
        return None

    def match(self, host: str, method: str, target: str) -> Match | None:
        """The operation of a request: ``target`` is the raw request target (path and query),
        matched in its canonical form (:mod:`proxy.canonical`), so every spelling of one path
        is the same operation."""
        app = self.app_for_host(host)
        if app is None:
            return None
        raw_path, raw_query = split_target(target)
        path = canonical_path(raw_path)
        query = canonical_query(raw_query)
        host = canonical_host(host)
        method = method.strip().upper()
        for op in app.operations:
            if op.method is not None and op.method != method:
                continue
            if op.host is not None and not op.host.search(host):
                continue
            if op.path.search(path) and (op.query is None or op.query.search(query)):
                return Match(app, op)
        return None

    @property
    def hosts(self) -> frozenset[str]:
        return frozenset(self._exact) | frozenset(s for s, _ in self._suffixes)


def _require_str(data: YamlMap, key: str, field: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise data.error(key if key in data else None, field, "required string")
    return value


def _optional_regex(data: YamlMap, key: str, field_base: str) -> re.Pattern[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise data.error(key, f"{field_base}.{key}", "expected a regex string")
    try:
        return re.compile(value, re.IGNORECASE)
    except re.error as exc:
        raise data.error(key, f"{field_base}.{key}", f"invalid regex: {exc}") from None


def _parse_operation(data: object, seq: YamlList, index: int, app_id: str) -> OperationSpec:
    field_base = f"operations[{index}]"
    if not isinstance(data, YamlMap):
        raise seq.error(index, field_base, "each operation must be a mapping")
    allowed = {"id", "kind", "method", "host", "path", "query", "extractor", "decoder", "block_reply", "inspect"}
    for key in data:
        if key not in allowed:
            raise data.error(key, f"{field_base}.{key}", f"unknown key (expected: {', '.join(sorted(allowed))})")
    op_id = _require_str(data, "id", f"{field_base}.id")
    if not op_id.startswith(app_id + "."):
        raise data.error("id", f"{field_base}.id", f"operation ids start with the app id ({app_id}.)")
    kind_name = _require_str(data, "kind", f"{field_base}.kind")
    try:
        kind = OperationKind(kind_name)
    except ValueError:
        kinds = ", ".join(k.value for k in OperationKind)
        raise data.error(
            "kind", f"{field_base}.kind", f"unknown kind {kind_name!r} (expected one of: {kinds})"
        ) from None
    method = data.get("method")
    if method is not None and not isinstance(method, str):
        raise data.error("method", f"{field_base}.method", "expected an HTTP method")
    pattern = _require_str(data, "path", f"{field_base}.path")
    try:
        path_re = re.compile(pattern, re.IGNORECASE)  # matched against canonical paths
    except re.error as exc:
        raise data.error("path", f"{field_base}.path", f"invalid regex: {exc}") from None
    query_re = _optional_regex(data, "query", field_base)
    host_re = _optional_regex(data, "host", field_base)
    extractor = data.get("extractor")
    if extractor is not None and extractor not in EXTRACTORS:
        raise data.error("extractor", f"{field_base}.extractor", f"unknown extractor {extractor!r}")
    decoder = data.get("decoder")
    if decoder is not None and decoder not in DECODERS:
        raise data.error("decoder", f"{field_base}.decoder", f"unknown decoder {decoder!r}")
    block_reply = data.get("block_reply", DEFAULT_BLOCK_REPLY)
    if block_reply not in BLOCK_REPLIES:
        raise data.error("block_reply", f"{field_base}.block_reply", f"unknown block reply {block_reply!r}")
    inspect = data.get("inspect", True)
    if not isinstance(inspect, bool):
        raise data.error("inspect", f"{field_base}.inspect", "expected true or false")
    return OperationSpec(
        operation_id=op_id,
        kind=kind,
        method=method.upper() if isinstance(method, str) else None,
        path=path_re,
        extractor=extractor,
        block_reply=block_reply,
        inspect=inspect,
        decoder=decoder,
        query=query_re,
        host=host_re,
    )


def parse_app(data: object, source: str) -> AppSpec:
    if not isinstance(data, YamlMap):
        raise ConfigError("an app file must be a mapping", source=source)
    allowed = {"app", "name", "app_type", "hosts", "operations", "opaque_fields"}
    for key in data:
        if key not in allowed:
            raise data.error(key, key, f"unknown key (expected: {', '.join(sorted(allowed))})")
    app_id = _require_str(data, "app", "app")
    name = _require_str(data, "name", "name")
    app_type = _require_str(data, "app_type", "app_type")
    hosts = data.get("hosts")
    if not isinstance(hosts, YamlList) or not hosts or not all(isinstance(h, str) for h in hosts):
        raise data.error("hosts" if "hosts" in data else None, "hosts", "a non-empty list of host names")
    ops = data.get("operations")
    if not isinstance(ops, YamlList) or not ops:
        raise data.error("operations" if "operations" in data else None, "operations", "a non-empty list")
    operations = tuple(_parse_operation(op, ops, i, app_id) for i, op in enumerate(ops))
    opaque = data.get("opaque_fields", [])
    if not isinstance(opaque, list) or not all(isinstance(f, str) and f for f in opaque):
        raise data.error("opaque_fields", "opaque_fields", "a list of field names")
    return AppSpec(
        app=app_id,
        name=name,
        app_type=app_type,
        hosts=tuple(h.lower() for h in hosts),
        operations=operations,
        source=source,
        opaque_fields=frozenset(opaque),
    )


def load_catalogue(extra_dirs: Iterable[Path] = ()) -> Catalogue:
    files: list[Path] = sorted(BUILTIN_APPS_DIR.glob("*.yaml"))
    for directory in extra_dirs:
        files.extend(sorted(Path(directory).glob("*.yaml")))
    apps = [parse_app(load_yaml_file(path), str(path)) for path in files]
    return Catalogue(apps)


def by_app(catalogue: Catalogue) -> Mapping[str, AppSpec]:
    return {app.app: app for app in catalogue.apps}
