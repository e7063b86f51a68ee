"""``promptfence proxy``: mitmproxy's dump master with the PromptFence addon, and nothing heavy.

This process imports mitmproxy, the policy engine, SQLAlchemy and the inspector *client*; it
never imports torch, transformers or Presidio (a test checks ``sys.modules``). Beside the proxy
it serves ``/metrics``, ``/healthz`` and ``/readyz`` on ``proxy.metrics_host:metrics_port``
(:mod:`promptfence.metrics`): a port that is taken costs the metrics (a warning), never the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from promptfence import metrics
from promptfence.cli import add_config_option
from promptfence.config import Config, ensure_private_dir, load_config
from promptfence.errors import ConfigError

if TYPE_CHECKING:
    from classifiers.client import InspectorClient
    from logs.recorder import AsyncRecorder, SpoolingWriter
    from logs.store import Recipient

log = logging.getLogger("promptfence.proxy")


class LogHealthCollector:
    """The recorder's state at scrape time: spool depth, database up, records by outcome."""

    def __init__(self, recorder: AsyncRecorder) -> None:
        self.recorder = recorder

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        health = self.recorder.health()
        yield GaugeMetricFamily(
            "promptfence_log_spool_depth",
            "Records waiting in the spool for the database.",
            value=health["spool_pending"],
        )
        yield GaugeMetricFamily(
            "promptfence_log_database_up", "1 while the log database accepts writes.", value=health["database"] == "up"
        )
        yield GaugeMetricFamily(
            "promptfence_log_degraded", "1 while the log is degraded (database down or spool failing).",
            value=bool(health["degraded"]),
        )  # fmt: skip
        records = CounterMetricFamily(
            "promptfence_log_records",
            "Log writes by outcome (stored, spooled, lost, unrecordable).",
            labels=["outcome"],
        )
        counts = health["records"]
        for outcome in ("stored", "spooled", "lost", "unrecordable"):
            records.add_metric([outcome], float(counts.get(outcome, 0)))
        yield records
        failures = CounterMetricFamily(
            "promptfence_log_write_failures",
            "Log writes that failed: the database refused (the record was spooled) or the spool too.",
            labels=["where"],
        )
        failures.add_metric(["database"], float(counts.get("spooled", 0)))
        failures.add_metric(["spool"], float(counts.get("lost", 0) + counts.get("unrecordable", 0)))
        yield failures

    def ready(self) -> str | None:
        health = self.recorder.health()
        if not health["degraded"]:
            return None
        return "log spool failing" if health["spool"] != "ok" else "log database down (spooling)"


def build_master(config: Config) -> tuple[Any, AsyncRecorder, InspectorClient]:
    """Everything the proxy needs, wired; configuration errors surface here, before listening."""
    from classifiers.client import InspectorClient
    from logs.recorder import AsyncRecorder
    from logs.store import Recipient
    from proxy.addon import PromptFenceAddon
    from proxy.catalogue import load_catalogue
    from proxy.drift import DriftCollector, DriftMonitor, DriftSettings
    from proxy.identity import build_identity
    from proxy.master import build_dump_master
    from proxy.telemetry import TelemetryAddon
    from proxy.websocket_guard import WebSocketGuard

    catalogue = load_catalogue()
    policies = build_policies(config)
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
    metrics.register_collector(DriftCollector(drift))
    telemetry = TelemetryAddon()
    log_health = LogHealthCollector(recorder)
    metrics.register_collector(log_health)
    metrics.add_readiness_check("log", log_health.ready)
    metrics.add_readiness_check("inspector", lambda: telemetry.inspector_problem)
    master = build_dump_master(
        PromptFenceAddon(catalogue, client, policies, recorder, identity, drift),
        listen_host=config.proxy.listen_host,
        listen_port=config.proxy.listen_port,
        confdir=config.mitmproxy_confdir,
        settings=settings,
        # Client WebSocket messages to catalogue hosts: inspected, decided and recorded alike.
        extra_addons=[WebSocketGuard(catalogue, client, policies, recorder, identity, drift=drift), telemetry],
    )
    return master, recorder, client


def build_policies(config: Config) -> Any:
    """The enforced policy set (following edits, keeping the last good set), with the shadow
    set beside it when ``policies.shadow`` names candidate files: its verdict is recorded,
    never enforced. Rules may select the custom topics the topic files declare."""
    from classifiers.custom_topics import configured_topic_names
    from policies.reload import ReloadingPolicySet
    from policies.shadow import ShadowedPolicySet

    names = configured_topic_names(config.topics.files, config.topics.builtin)
    enforced = ReloadingPolicySet(config.policies.files, custom_topics=names)
    if not config.policies.shadow:
        return enforced
    return ShadowedPolicySet(enforced, ReloadingPolicySet(config.policies.shadow, custom_topics=names))


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
    master: Any,
    recorder: AsyncRecorder,
    client: InspectorClient,
    message: str,
    *args: object,
    metrics_at: tuple[str, int] = ("127.0.0.1", 0),
) -> None:
    """Run a built master until SIGINT/SIGTERM (logging ``message`` once it is set to stop on
    them) with the metrics endpoint on ``metrics_at`` (port 0: none), then close the inspector
    client and flush the recorder."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, master.shutdown)
    log.info(message, *args)
    runner = await start_metrics(*metrics_at)
    try:
        await master.run()
    finally:
        if runner is not None:
            await runner.cleanup()
        await client.close()
        recorder.close()


async def start_metrics(host: str, port: int) -> Any:
    """Serve /metrics, /healthz, /readyz; None when off (port 0) or the port cannot be bound."""
    from aiohttp import web

    if not port:
        return None
    runner = web.AppRunner(metrics.build_app(), access_log=None)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        log.warning("metrics not served: cannot listen on %s:%d (%s); set proxy.metrics_port", host, port, exc.strerror)
        return None
    log.info("metrics on http://%s:%d/metrics (and /healthz, /readyz)", host, port)
    return runner


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
        metrics_at=(config.proxy.metrics_host, config.proxy.metrics_port),
    )


def configure(parser: argparse.ArgumentParser) -> None:
    add_config_option(parser)


def run(args: argparse.Namespace) -> int:
    from promptfence.runtimes import PROXY, require

    require(PROXY)
    config = load_config(args.config)
    asyncio.run(_serve(config))
    return 0
