"""Config: embedded defaults, overrides, and errors that name file, line and field."""

from __future__ import annotations

from pathlib import Path

import pytest

from promptfence.config import Config, load_config
from promptfence.errors import ConfigError


def test_no_file_means_embedded_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROMPTFENCE_CONFIG", raising=False)
    monkeypatch.setenv("PROMPTFENCE_HOME", str(tmp_path / "home"))
    config = load_config()
    assert config == Config()
    assert config.source is None
    assert config.proxy.listen_port == 8080
    assert config.database_url == f"sqlite:///{tmp_path / 'home' / 'promptfence-logs.db'}"
    assert config.recipient_keys == [tmp_path / "home" / "keys" / "admin.pub"]


def test_local_promptfence_yaml_is_picked_up_and_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PROMPTFENCE_CONFIG", raising=False)
    (tmp_path / "promptfence.yaml").write_text(
        "proxy:\n  listen_port: 9999\n  resolve:\n    chatgpt.com: 10.0.0.1:443\nlogs:\n  recipients: [keys/a.pub]\n"
    )
    config = load_config()
    assert config.proxy.listen_port == 9999
    assert config.proxy.listen_host == "127.0.0.1"  # untouched default
    assert config.proxy.resolve == {"chatgpt.com": "10.0.0.1:443"}
    assert config.logs.recipients == [tmp_path / "keys" / "a.pub"]  # relative to the file


@pytest.mark.parametrize(
    ("text", "line", "field", "fragment"),
    [
        ("proxy:\n  listen_prot: 1\n", 2, "proxy.listen_prot", "unknown key"),
        ("proxy:\n  listen_port: eighty\n", 2, "proxy.listen_port", "expected an integer"),
        ("proxy:\n  listen_port: true\n", 2, "proxy.listen_port", "expected an integer"),
        ("bogus: 1\n", 1, "bogus", "unknown key"),
        ("inspector:\n  port: 1\n  detector_timeout_s: fast\n", 3, "inspector.detector_timeout_s", "expected a number"),
        ("proxy: [1, 2]\n", 1, "proxy", "expected a mapping"),
        ("logs:\n  recipients: a.pub\n", 2, "logs.recipients", "expected a list"),
        ("logs:\n  recipients:\n    - a.pub\n    - 7\n", 4, "logs.recipients[1]", "expected a path"),
        ("proxy:\n  resolve:\n    chatgpt.com: [1]\n", 3, "proxy.resolve.chatgpt.com", "expected a string"),
    ],
)
def test_errors_name_file_line_and_field(tmp_path: Path, text: str, line: int, field: str, fragment: str) -> None:
    path = tmp_path / "promptfence.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    err = info.value
    assert (err.source, err.line, err.field) == (str(path), line, field)
    assert fragment in str(err)
    assert str(err).startswith(f"{path}:{line}:")


def test_yaml_syntax_error_has_a_position(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("proxy:\n  listen_port: [1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line is not None and "invalid YAML" in str(info.value)


def test_missing_explicit_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
