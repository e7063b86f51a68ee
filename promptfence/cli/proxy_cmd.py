"""``promptfence proxy``: mitmproxy's dump master with the PromptFence addon, and nothing heavy.

This process imports mitmproxy, the policy engine, SQLAlchemy and the inspector *client*; it
never imports torch, transformers or Presidio (a test checks ``sys.modules``).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
from typing import TYPE_CHECKING, Any

from promptfence.cli import add_config_option
from promptfence.config import Config, ensure_private_dir, load_config
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from classifiers.client import InspectorClient
    from logs.recorder import AsyncRecorder, SpoolingWriter
    from logs.store import Recipient

log = logging.getLogger("promptfence.proxy")


def build_master(config: Config) -> tuple[Any, AsyncRecorder, InspectorClient]:
    """Everything the proxy needs, wired; configuration errors surface here, before listening."""
    from classifiers.client import InspectorClient
    from logs.recorder import AsyncRecorder
    from logs.store import Recipient
    from policies.reload import ReloadingPolicySet
    from proxy.addon import PromptFenceAddon
    from proxy.catalogue import load_catalogue
    from proxy.drift import DriftMonitor, DriftSettings
    from proxy.identity import build_identity
    from proxy.master import build_dump_master
    from proxy.websocket_guard import WebSocketGuard

    catalogue = load_catalogue()
    policies = ReloadingPolicySet(config.policies.files)  # follows edits; keeps the last good set
    identity = build_identity(config.identity)
    recipients = []
    for path in config.recipient_keys:
        try:
            recipients.append(Recipient.from_file(path))
        except ValueError as exc:  # KeyFileError names the file and the problem
            raise ConfigError(str(exc), field="logs.recipients") from None
    writer = build_writer(config, recipients)
    # Its thread migrates the schema, applies retention and replays the spool: a database that
    # is down at start only means records are spooled until it is back.
    recorder = AsyncRecorder(writer, retention_days=config.logs.retention_days)
    client = InspectorClient.for_config(config)
    ensure_private_dir(config.mitmproxy_confdir)
    settings: dict[str, object] = {
        "promptfence_inspect_timeout": config.proxy.inspect_timeout_s,
        "promptfence_max_body": config.proxy.max_body_bytes,
        "promptfence_timeout_uninspectable_chars": config.proxy.timeout_uninspectable_chars,
        "promptfence_resolve": ",".join(f"{h}={t}" for h, t in config.proxy.resolve.items()),
        "promptfence_warn_window": config.policies.warn_resend_window_s,
    }
    if config.proxy.upstream_ca is not None:
        settings["ssl_verify_upstream_trusted_ca"] = str(config.proxy.upstream_ca)
    try:
        drift_settings = DriftSettings(**dataclasses.asdict(config.proxy.drift))
    except ValueError as exc:
        raise ConfigError(str(exc), source=config.source, field="proxy.drift") from None
    config.ensure_data_dir()
    drift = DriftMonitor(drift_settings, config.drift_state_path)
    drift.write_state()  # a fresh file: `apps status` shows this run's counters, not the last run's
    master = build_dump_master(
        PromptFenceAddon(catalogue, client, policies, recorder, identity, drift),
        listen_host=config.proxy.listen_host,
        listen_port=config.proxy.listen_port,
        confdir=config.mitmproxy_confdir,
        settings=settings,
        # Client WebSocket messages to catalogue hosts: inspected, decided and recorded alike.
        extra_addons=[WebSocketGuard(catalogue, client, policies, recorder, identity, drift=drift)],
    )
    return master, recorder, client


def build_writer(config: Config, recipients: list[Recipient]) -> SpoolingWriter:
    """The recorder's writer as the proxy runs it (also used by ``promptfence bench logs``)."""
    from logs.recorder import ON_UNRECORDABLE, SpoolingWriter
    from logs.spool import Spool
    from logs.store import LogStore, load_or_create_digest_key

    if config.logs.on_unrecordable not in ON_UNRECORDABLE:
        raise ConfigError(
            f"expected block or allow, not {config.logs.on_unrecordable!r}",
            source=config.source,
            field="logs.on_unrecordable",
        )
    config.ensure_data_dir()
    timeout = config.logs.db_timeout_s
    store = LogStore(
        config.database_url,
        recipients,
        digest_key=load_or_create_digest_key(config.digest_key_path),
        timeout_s=timeout if timeout > 0 else None,
    )
    return SpoolingWriter(
        store,
        Spool(config.spool_path),
        retry_interval_s=config.logs.retry_interval_s,
        on_unrecordable=config.logs.on_unrecordable,
        db_timeout_s=timeout,
        health_path=config.logs_health_path,
    )


async def run_master(
    master: Any, recorder: AsyncRecorder, client: InspectorClient, message: str, *args: object
) -> None:
    """Run a built master until SIGINT/SIGTERM (logging ``message`` once it is set to stop on
    them), then close the inspector client and flush the recorder."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    log.info(message, *args)
    try:
        await master.run()
    finally:
        await client.close()
        recorder.close()


async def _serve(config: Config) -> None:
    master, recorder, client = build_master(config)
    await run_master(
        master,
        recorder,
        client,
        "proxy listening on %s:%d, CA certificate %s",
        config.proxy.listen_host,
        config.proxy.listen_port,
        config.ca_cert_path,
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    from promptfence.runtimes import PROXY, require

    require(PROXY)
    config = load_config(args.config)
    asyncio.run(_serve(config))
    return 0
