"""``promptfence viewer``: serve the prompt-log web viewer (decryption happens in the browser)."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from typing import TYPE_CHECKING

from promptfence.cli import add_config_option
from promptfence.config import Config, load_config
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from logs.viewer import ViewerSettings

log = logging.getLogger("promptfence.viewer")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", help="listen address (default: viewer.host, 127.0.0.1)")
    parser.add_argument("--port", type=int, help="listen port (default: viewer.port, 8733)")
    add_config_option(parser)


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a name: it may resolve to anything


def viewer_settings(config: Config, host: str, port: int) -> ViewerSettings:
    """``viewer:`` as the server's settings; a bad entry is a ConfigError naming the field."""
    from logs.viewer import ViewerSettings, default_allowed_hosts

    section = config.viewer
    networks = []
    for i, value in enumerate(section.trusted_sources):
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"not an IP address or network: {value!r}", source=config.source, field=f"viewer.trusted_sources[{i}]"
            ) from None
    if section.identity_header and not networks:
        raise ConfigError(
            "an identity header needs trusted_sources: it is only believed from those addresses",
            source=config.source,
            field="viewer.trusted_sources",
        )
    try:
        return ViewerSettings(
            allowed_hosts=tuple(section.allowed_hosts) or default_allowed_hosts(host, port),
            identity_header=section.identity_header,
            trusted_sources=tuple(networks),
            drift_state_path=config.drift_state_path,
        )
    except ValueError as exc:
        raise ConfigError(str(exc), source=config.source, field="viewer.allowed_hosts") from None


def exposure_warning(host: str, settings: ViewerSettings) -> str | None:
    """What to say loudly when the viewer listens beyond this machine; None on loopback."""
    if is_loopback(host):
        return None
    return (
        f"WARNING: the log viewer listens on {host}, reachable from the network. Anyone who reaches it reads "
        "every record's metadata (users, apps, topics, decisions) and can post feedback. Put it behind an SSO "
        "reverse proxy (viewer.identity_header, viewer.trusted_sources) or bind 127.0.0.1. Host names served: "
        f"{', '.join(settings.allowed_hosts)} (viewer.allowed_hosts)."
    )


def run(args: argparse.Namespace) -> int:
    from aiohttp import web

    from logs.store import LogStore
    from logs.viewer import build_app

    config = load_config(args.config)
    host = args.host or config.viewer.host
    port = args.port or config.viewer.port
    settings = viewer_settings(config, host, port)
    warning = exposure_warning(host, settings)
    if warning is not None:
        log.warning("%s", warning)
        print("\n" + "!" * 78 + "\n" + warning + "\n" + "!" * 78 + "\n", file=sys.stderr, flush=True)
    store = LogStore(config.database_url, recipients=())
    try:
        print(
            f"PromptFence log viewer on http://{host}:{port}/ : load your private key file in the page;"
            " it is used in the browser only and never sent to this server.",
            flush=True,
        )
        web.run_app(
            build_app(store, settings=settings),
            host=host,
            port=port,
            print=None,
            access_log=None,
            handle_signals=True,
        )
    finally:
        store.close()
    return 0
