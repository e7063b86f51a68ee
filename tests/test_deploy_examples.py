"""The deployment examples (deploy/, docs/deployment.md) load with the product's own loader."""

from __future__ import annotations

from pathlib import Path

from promptfence.config import load_config

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_proxy_example_lists_inspectors_and_shares_the_ledger() -> None:
    config = load_config(str(DEPLOY / "promptfence-proxy.example.yaml"))
    assert len(config.inspector.urls) == 2
    assert config.policies.warn_store == "redis://127.0.0.1:6379/0"
    assert config.database_url.startswith("postgresql+psycopg://")


def test_the_inspector_example_runs_two_processes_on_onnx() -> None:
    config = load_config(str(DEPLOY / "promptfence-inspector.example.yaml"))
    assert config.inspector.processes == 2
    assert (config.inspector.embedder.backend, config.inspector.embedder.onnx_variant) == ("onnx", "int8")
    assert config.inspector.llm.url == "http://127.0.0.1:8000"


def test_the_units_start_the_commands_that_exist() -> None:
    inspector = (DEPLOY / "systemd" / "promptfence-inspector@.service").read_text()
    proxy = (DEPLOY / "systemd" / "promptfence-proxy@.service").read_text()
    assert "promptfence inspector --config /etc/promptfence/inspector-%i.yaml --prepare-models" in inspector
    assert "promptfence proxy --config /etc/promptfence/proxy-%i.yaml" in proxy
