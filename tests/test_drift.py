"""The drift monitor (issue 16, item 3): counters, the one-line alarm, the state file, ``apps status``."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from promptfence.cli import main as promptfence_main
from proxy.drift import DriftMonitor, DriftSettings, DriftSnapshot, read_state

SECRET = "my prompt about the merger"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_counts_per_operation_and_a_typed_snapshot() -> None:
    clock = Clock()
    drift = DriftMonitor(clock=clock)
    drift.request("chatgpt", "chatgpt.send_prompt", extracted=True)
    drift.answer("chatgpt", "chatgpt.send_prompt", decoded=True)
    clock.now = 1010.0
    drift.request("chatgpt", "chatgpt.send_prompt", extracted=False)
    drift.answer("chatgpt", "chatgpt.send_prompt", decoded=False, unknown_shapes=3)
    drift.unmapped("chatgpt", "chatgpt.unknown")
    snap = drift.snapshot()
    op = snap.get("chatgpt.send_prompt")
    assert op is not None
    assert (op.seen, op.extracted, op.extraction_failed, op.decoded, op.decode_errors, op.unknown_shapes) == (
        2,
        1,
        1,
        1,
        1,
        1,
    )
    assert op.last_seen == 1010.0 and not op.alarm
    unknown = snap.get("chatgpt.unknown")
    assert unknown is not None and unknown.seen == 1 and unknown.unmapped_text == 1
    assert DriftSnapshot.from_json(snap.to_json()) == snap


def test_the_alarm_fires_once_at_the_threshold_and_clears(caplog: pytest.LogCaptureFixture) -> None:
    drift = DriftMonitor(DriftSettings(alarm_rate=0.5, window=10, min_observations=4))
    caplog.set_level(logging.INFO, logger="promptfence.proxy")
    for _ in range(4):
        drift.request("gemini", "gemini.send_prompt", extracted=True)
        drift.answer("gemini", "gemini.send_prompt", decoded=True)
    assert not caplog.records
    drift.answer("gemini", "gemini.send_prompt", decoded=False)
    drift.answer("gemini", "gemini.send_prompt", decoded=False)
    assert not drift.snapshot().alarms  # 2 of 6 answers
    drift.answer("gemini", "gemini.send_prompt", decoded=False)
    drift.answer("gemini", "gemini.send_prompt", decoded=False)  # 4 of 8: the alarm
    for _ in range(3):
        drift.answer("gemini", "gemini.send_prompt", decoded=False)  # no second line
    alarms = [r for r in caplog.records if "DRIFT ALARM" in r.getMessage()]
    assert len(alarms) == 1 and alarms[0].levelno == logging.WARNING
    assert "app=gemini op=gemini.send_prompt" in alarms[0].getMessage()
    assert "4 of the last 8 answers failed" in alarms[0].getMessage()
    assert [op.operation for op in drift.snapshot().alarms] == ["gemini.send_prompt"]
    for _ in range(10):
        drift.answer("gemini", "gemini.send_prompt", decoded=True)
    assert not drift.snapshot().alarms
    assert any("drift alarm cleared" in r.getMessage() for r in caplog.records)


def test_unmapped_text_requests_alarm_on_their_own(caplog: pytest.LogCaptureFixture) -> None:
    drift = DriftMonitor(DriftSettings(min_observations=3))
    caplog.set_level(logging.WARNING, logger="promptfence.proxy")
    for _ in range(3):
        drift.unmapped("claude", "claude.unknown")
    assert [r.getMessage() for r in caplog.records if "DRIFT ALARM app=claude op=claude.unknown" in r.getMessage()]


def test_invalid_settings_are_refused() -> None:
    for bad in ({"alarm_rate": 0}, {"alarm_rate": 1.5}, {"window": 0}, {"min_observations": 0}):
        with pytest.raises(ValueError):
            DriftSettings(**bad)  # type: ignore[arg-type]


def test_state_file_is_written_atomically_and_throttled(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / "drift-state.json"
    drift = DriftMonitor(DriftSettings(write_interval_s=5), path, clock=clock)
    drift.request("chatgpt", "chatgpt.send_prompt", extracted=True)  # no loop: the first write is now
    first = read_state(path)
    assert first is not None and first.get("chatgpt.send_prompt") is not None
    clock.now += 1
    drift.request("chatgpt", "chatgpt.share", extracted=True)  # within the interval, no loop: written now
    again = read_state(path)
    assert again is not None and again.get("chatgpt.share") is not None
    assert [p.name for p in tmp_path.iterdir()] == ["drift-state.json"]  # no temporary file left


def test_malformed_state_is_a_clear_error_without_its_content(tmp_path: Path) -> None:
    path = tmp_path / "drift-state.json"
    path.write_text('{"version": 1, "taken_at": 1, "settings": {}, "operations": [{"app": "x"}]}')
    with pytest.raises(ValueError, match="malformed") as info:
        read_state(path)
    assert "operations" not in str(info.value)
    assert read_state(tmp_path / "none.json") is None


def _config(tmp_path: Path) -> Path:
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path / 'home'}\nproxy:\n  drift: {{alarm_rate: 0.5, min_observations: 2}}\n")
    return config


def test_apps_status_prints_every_catalogue_operation_and_the_alarm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config(tmp_path)
    assert promptfence_main(["apps", "status", "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "no drift state" in out and "chatgpt.send_prompt" in out and "perplexity.unknown" in out

    drift = DriftMonitor(DriftSettings(min_observations=2), tmp_path / "home" / "drift-state.json")
    drift.request("claude", "claude.send_prompt", extracted=True)
    drift.answer("claude", "claude.send_prompt", decoded=False, unknown_shapes=2)
    drift.answer("claude", "claude.send_prompt", decoded=False)
    drift.write_state()
    assert promptfence_main(["apps", "status", "--config", str(config)]) == 1  # an alarm is raised
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("claude.send_prompt "))
    assert row.split()[:4] == ["claude.send_prompt", "1", "1", "0"] and "ALARM (2/2)" in row
    assert promptfence_main(["apps", "status", "--json", "--config", str(config)]) == 1
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    claude = next(r for r in rows if r["operation"] == "claude.send_prompt")
    assert claude["decode_errors"] == 2 and claude["unknown_shapes"] == 1 and claude["alarm"] is True
    assert SECRET not in json.dumps(rows)


def test_drift_counters_are_on_the_metrics_endpoint() -> None:
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from proxy.drift import DriftCollector

    drift = DriftMonitor(DriftSettings(alarm_rate=0.5, window=10, min_observations=2))
    for _ in range(3):
        drift.answer("chatgpt", "chatgpt.conversation", decoded=False, unknown_shapes=2)
    drift.request("chatgpt", "chatgpt.conversation", extracted=True)
    registry = CollectorRegistry()
    registry.register(DriftCollector(drift))
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    labels = {"app": "chatgpt", "operation": "chatgpt.conversation"}

    def value(family: str) -> float:
        return next(s.value for s in families[family].samples if s.labels == labels and s.name.endswith("_total"))

    assert value("promptfence_drift_decode_errors") == 3
    assert value("promptfence_drift_unknown_shapes") == 3  # answers that carried unknown shapes
    assert value("promptfence_drift_seen") == 1  # requests; answers count as decoded or decode errors
    alarm = next(s.value for s in families["promptfence_drift_alarm"].samples if s.labels == labels)
    assert alarm == 1.0
