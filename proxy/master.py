"""The mitmproxy master PromptFence runs: mitmdump's DumpMaster, no flow dumper, our addons.

mitmproxy's own log lines can carry request data: a client that drops before its headers are
complete is logged as ``Client closed connection before completing request headers:
b'GET /search?q=<prompt> ... Cookie: ...'``, a malformed request line or header is echoed in
the error, and so on. :class:`RedactingFilter` sits on every handler of the proxy process and
rewrites such records before anything is printed: raw bytes become ``<host> [redacted]``, URLs
of catalogue hosts become ``<host> [redacted]`` (others lose their query), request lines lose
their target, and Cookie / Set-Cookie / Authorization / Proxy-Authorization values are
redacted wherever they appear.
"""

from __future__ import annotations

import ast
import logging
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mitmproxy import options
from mitmproxy.tools.dump import DumpMaster

from proxy.addon import PromptFenceAddon

REDACTED = "[redacted]"
# A Python bytes repr (what mitmproxy prints raw data as). Alternatives are disjoint, so the
# scan is linear; a repr is always closed (quotes inside it are escaped).
_BYTES = re.compile(r"""(?<!\w)(bytearray\()?b(?:'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")\)?""", re.S)
_URL = re.compile(r"""\b(?:https?|wss?)://([^\s/'"?#\\]+)((?:[/?#][^\s'"\\]*)?)""", re.I)
_REQUEST_LINE = re.compile(
    r"\b(GET|POST|PUT|PATCH|DELETE|HEAD|OPTIONS|TRACE|CONNECT|PROPFIND)[ \t]+(\S+)([ \t]+HTTP/\d(?:\.\d)?)?"
)
_SECRET_HEADER = re.compile(
    r"""\b((?:set-)?cookie|(?:proxy-)?authorization|x-api-key|api-key)(['"][ \t]*[:,]|[ \t]*[:=])"""
    r"""(?! \[redacted\])(?:[ \t]*'[^']*'|[ \t]*"[^"]*"|[^\r\n'"\\]*)""",
    re.I,
)
_HOST_LINE = re.compile(rb"(?im)^[ \t]*host[ \t]*:[ \t]*([^\s]+)")
_TARGET_HOST = re.compile(rb"^[A-Za-z]{1,20}[ \t]+(?:[A-Za-z][A-Za-z0-9+.-]{0,15}://)?([^\s/?#]+)")
_HOST_CHARS = re.compile(r"[a-z0-9.-]{1,253}")
MAX_LITERAL = 1 << 20  # bytes reprs longer than this are not parsed for a host name


def _host_of(raw: bytes) -> str:
    """The host a chunk of raw HTTP names (Host header, absolute target, CONNECT authority),
    or ``request`` when it names none we can print safely."""
    first = raw.split(b"\n", 1)[0]
    found = _TARGET_HOST.match(first)
    candidates = [found.group(1)] if found and (b"://" in first or first[:7].upper() == b"CONNECT") else []
    header = _HOST_LINE.search(raw)
    if header is not None:
        candidates.append(header.group(1))
    for candidate in candidates:
        host = candidate.decode("latin-1").rsplit("@", 1)[-1].lower()
        host = host.split("]")[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
        if _HOST_CHARS.fullmatch(host):
            return host
    return "request"


def redact(message: str, sensitive_host: Callable[[str], bool]) -> str:
    """``message`` with raw HTTP data, catalogue URLs, request targets and credential header
    values replaced (see the module docstring); other text is left as it is."""

    def literal(found: re.Match[str]) -> str:
        text = found.group(0)
        raw = b""
        if len(text) <= MAX_LITERAL:
            try:
                start = len("bytearray(") if found.group(1) else 0
                end = len(text) - (1 if text.endswith(")") else 0)
                value = ast.literal_eval(text[start:end])
                raw = bytes(value) if isinstance(value, bytes) else b""
            except (ValueError, SyntaxError):
                raw = b""
        return f"{_host_of(raw)} {REDACTED}"

    def url(found: re.Match[str]) -> str:
        authority, rest = found.group(1), found.group(2)
        host = authority.rsplit("@", 1)[-1].split(":")[0].lower()
        if sensitive_host(host) or "@" in authority:
            return f"{host} {REDACTED}"
        path = rest.split("?", 1)[0].split("#", 1)[0]
        return f"{found.group(0)[: found.start(2) - found.start(0)]}{path}{'?' + REDACTED if path != rest else ''}"

    def request_line(found: re.Match[str]) -> str:
        method, target, version = found.group(1), found.group(2), found.group(3) or ""
        if target.startswith(REDACTED) or (version and method == "CONNECT" and "/" not in target):
            return found.group(0)
        if not version and not target.startswith("/"):
            return found.group(0)  # a word like "GET" in prose, not a request line
        return f"{method} {REDACTED}{version}"

    message = _BYTES.sub(literal, message)
    message = _URL.sub(url, message)
    message = _REQUEST_LINE.sub(request_line, message)
    return _SECRET_HEADER.sub(lambda m: f"{m.group(1)}{m.group(2)} {REDACTED}", message)


class RedactingFilter(logging.Filter):
    """A handler filter: rewrites each record's message (and traceback) with :func:`redact`;
    never drops a record, never raises (a record it cannot render is replaced by a notice)."""

    def __init__(self, sensitive_host: Callable[[str], bool]) -> None:
        super().__init__()
        self.sensitive_host = sensitive_host
        self._formatter = logging.Formatter()

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "promptfence_redacted", False):
            return True
        try:
            message = record.getMessage()
            if record.exc_info:
                message += "\n" + self._formatter.formatException(record.exc_info)
            if record.stack_info:
                message += "\n" + record.stack_info
            record.msg = redact(message, self.sensitive_host)
        except Exception as exc:  # a broken record must not print raw data or stop logging
            record.msg = f"[log record not shown: {type(exc).__name__} while redacting]"
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        record.promptfence_redacted = True
        return True


def install_redaction(sensitive_host: Callable[[str], bool], logger: logging.Logger | None = None) -> RedactingFilter:
    """Put a :class:`RedactingFilter` on every handler of ``logger`` (default: the root logger,
    where mitmproxy's termlog and the CLI's handlers live) that has none yet."""
    target = logger or logging.getLogger()
    found = [f for h in target.handlers for f in h.filters if isinstance(f, RedactingFilter)]
    redacting = found[0] if found else RedactingFilter(sensitive_host)
    for handler in target.handlers:
        if redacting not in handler.filters:
            handler.addFilter(redacting)
    if logging.lastResort is not None and redacting not in logging.lastResort.filters:
        logging.lastResort.addFilter(redacting)
    return redacting


def build_dump_master(
    addon: PromptFenceAddon,
    *,
    listen_host: str,
    listen_port: int,
    confdir: Path,
    settings: Mapping[str, object],
    extra_addons: Sequence[object] = (),
) -> DumpMaster:
    """The dumper (which prints every flow) is left out: URLs of GenAI apps can carry prompts.
    ``extra_addons`` (e.g. the WebSocket guard) are added after ``addon``, in order. Every log
    handler of the process then redacts request data (:class:`RedactingFilter`); the addon's
    catalogue says which hosts' URLs are redacted whole."""
    opts = options.Options(listen_host=listen_host, listen_port=listen_port, confdir=str(confdir))
    master = DumpMaster(opts, with_termlog=True, with_dumper=False)
    master.addons.add(addon, *extra_addons)  # type: ignore[no-untyped-call]
    master.options.update(**settings)  # type: ignore[no-untyped-call]
    catalogue = addon.catalogue
    install_redaction(lambda host: catalogue.app_for_host(host) is not None)
    return master
