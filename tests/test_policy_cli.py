"""The policy author's toolkit from the command line: lint, test (CI exit codes), explain."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from policies.policy import EXAMPLES_DIR
from tests.support.procs import child_env

EXAMPLE_TESTS = sorted(str(p) for p in EXAMPLES_DIR.glob("*.test.yaml"))
DIRECTORY = str(EXAMPLES_DIR / "identity" / "directory.yaml")


def _cli(tmp_path: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "promptfence.yaml"
    if not config.exists():
        config.write_text(f"data_dir: {tmp_path / 'home'}\n")
    extra = [] if args[0] == "identity" else ["--config", str(config)]
    return subprocess.run(
        [sys.executable, "-m", "promptfence", *args, *extra],
        capture_output=True,
        text=True,
        env=child_env(tmp_path / "home"),
        input=stdin,
        timeout=120,
    )


def test_shipped_examples_pass_their_policy_tests(tmp_path: Path) -> None:
    assert len(EXAMPLE_TESTS) >= 3
    result = _cli(tmp_path, "policy", "test", *EXAMPLE_TESTS, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 failed" in result.stderr and "FAIL" not in result.stdout
    assert (
        "engineering may not ask ChatGPT" in result.stdout
        and "-> block [block-pii-requests-outside-hr]" in result.stdout
    )


def test_a_failing_policy_test_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    tests = tmp_path / "t.test.yaml"
    tests.write_text(
        f"policies: [{EXAMPLES_DIR / 'block-pii-requests.yaml'}]\ndirectory: {DIRECTORY}\ntests:\n"
        "  - name: HR is blocked (wrong on purpose)\n    identity: {user: hannah@example.com}\n"
        "    topics: {PII_REQUEST: high}\n    expect: block\n"
    )
    result = _cli(tmp_path, "policy", "test", str(tests))
    assert result.returncode == 1
    assert f"FAIL  {tests}:4:5  HR is blocked (wrong on purpose): expected block, got allow" in result.stdout
    tests.write_text("tests:\n  - name: x\n    expect: maybe\n")
    broken = _cli(tmp_path, "policy", "test", str(tests))
    assert broken.returncode == 2 and f"{tests}:3:5: tests[0].expect: unknown action" in broken.stderr


def test_lint_clean_examples_and_errors_with_positions(tmp_path: Path) -> None:
    shipped = [str(p) for p in sorted(EXAMPLES_DIR.glob("*.yaml"))]
    ok = _cli(tmp_path, "policy", "lint", *shipped, "--directory", DIRECTORY)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "policy: bad\ndefault: allow\non_error: block\nrules:\n"
        "  - id: a\n    match: {groups: [engineering, sales]}\n    action: block\n"
        "  - id: b\n    match: {groups: engineering, topics: {PII: high}}\n    action: warn\n"
        "  - id: c\n    match: {topics: {PII: hi}}\n    action: log\n"
    )
    result = _cli(tmp_path, "policy", "lint", str(bad), "--directory", DIRECTORY)
    assert result.returncode == 1
    assert f"{bad}:12:22: error: rules[2].match.topics.PII: unknown confidence" in result.stdout
    bad.write_text(bad.read_text().replace("PII: hi}", "PII: high}"))
    result = _cli(tmp_path, "policy", "lint", str(bad), "--directory", DIRECTORY)
    assert f"{bad}:6:13: error: rules[0].match.groups: group sales is never defined in the directory" in result.stdout
    assert f"{bad}:8:5: error: rules[1].id: rule 'b' is unreachable: it is shadowed by rule 'a'" in result.stdout


def test_explain_shows_every_rule_and_why(tmp_path: Path) -> None:
    policy = str(EXAMPLES_DIR / "block-pii-requests.yaml")
    args = ["policy", "explain", "--topics", "PII_REQUEST=high", "--policy", policy, "--directory", DIRECTORY]
    alice = _cli(tmp_path, *args, "--user", "alice@example.com")
    assert alice.returncode == 0, alice.stderr
    assert "rule block-pii-requests-outside-hr" in alice.stdout and "MATCH -> block" in alice.stdout
    assert "yes groups: member of engineering" in alice.stdout
    assert "decision:   block" in alice.stdout
    hannah = _cli(tmp_path, *args, "--user", "hannah@example.com", "--json")
    data = json.loads(hannah.stdout)
    (rule,) = data["policies"][0]["rules"]
    assert not rule["matched"] and data["decision"]["action"] == "allow"
    assert {"selector": "not_groups", "ok": False, "detail": "excluded: member of hr"} in rule["checks"]


@pytest.mark.parametrize("stdin", ["s3cret\n"])
def test_hash_password_writes_a_users_file_line(tmp_path: Path, stdin: str) -> None:
    from proxy.identity import load_users_file, verify_password

    result = _cli(tmp_path, "identity", "hash-password", "alice@example.com", stdin=stdin)
    assert result.returncode == 0 and "s3cret" not in result.stdout + result.stderr
    users = tmp_path / "users"
    users.write_text(result.stdout)
    assert verify_password("s3cret", load_users_file(users)["alice@example.com"])
