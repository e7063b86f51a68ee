"""Issue 18: the CLI says what an investigation needs, and commands do what a user expects.

In-process ``promptfence`` on a real SQLite log holding the records of
:mod:`tests.test_console_viewer` (a blocked record with SSN and e-mail spans, a fail-closed block,
a Share, a low-confidence one): ``logs list`` never prints a ``none`` confidence and says why a
fail-closed record has no topics, ``logs show`` prints the evidence (the matched text only
because this command decrypts locally), ``logs conversation`` takes a record id prefix, and
``policy explain --record`` lists the detectors that ran. Progress draws only on a terminal.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from logs.sealing import KeyPair, write_key_pair
from logs.store import LogStore, Recipient
from promptfence.cli import main
from promptfence.cli.progress import Progress, stage
from tests.test_console_viewer import EMAIL, FAILED_REASON, PROMPT, SSN, USER_MESSAGE, records


class Env:
    def __init__(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        self.key = tmp_path / "admin.key"
        write_key_pair(KeyPair.generate(), self.key, tmp_path / "admin.pub")
        url = f"sqlite:///{tmp_path / 'logs.db'}"
        self.config = tmp_path / "promptfence.yaml"
        self.config.write_text(f"data_dir: {tmp_path / 'home'}\nlogs:\n  database_url: '{url}'\n")
        self.store = LogStore(url, [Recipient.from_file(tmp_path / "admin.pub")])
        self.blocked, self.failed, self.shared, self.low = records(time.time() - 600)
        for record in (self.blocked, self.failed, self.shared, self.low):
            self.store.write(record)
        self.capsys = capsys

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*args, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def env(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    e = Env(tmp_path, capsys)
    yield e
    e.store.close()


def test_list_shows_no_none_confidence_and_why_a_fail_closed_record_has_no_topics(env: Env) -> None:
    code, out, _ = env.run("logs", "list")
    assert code == 0
    assert ":none" not in out and "FINANCIAL" not in out  # 0.1 is no detection
    rows = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert f"inspection failed: unavailable: {FAILED_REASON}" in rows[env.failed.record_id[:8]]
    assert "PII:low" in rows[env.low.record_id[:8]]


def test_show_prints_the_evidence(env: Env) -> None:
    code, out, err = env.run("logs", "show", env.blocked.record_id[:10], "--key", str(env.key))
    assert code == 0, err
    ssn_at = PROMPT.index(SSN)
    assert f"finding:      US_SSN 0.85 PII by presidio [{ssn_at}:{ssn_at + len(SSN)}] {SSN!r}" in out
    assert f"EMAIL_ADDRESS 0.70 PII by presidio [{PROMPT.index(EMAIL)}:" in out and repr(EMAIL) in out
    assert "detector:     presidio 12.5 ms ok" in out
    assert "detector:     intent 5000.0 ms FAILED timeout: no answer within 5s" in out
    assert f"user saw:     {USER_MESSAGE}" in out
    assert "undone:       base64" in out and "centroid 17" in out
    code, out, _ = env.run("logs", "show", env.failed.record_id, "--key", str(env.key))
    assert f"topics:       inspection failed: unavailable: {FAILED_REASON}" in out


def test_conversation_takes_a_record_id_prefix_and_shows_a_share(env: Env) -> None:
    code, out, err = env.run("logs", "conversation", env.blocked.record_id[:8], "--key", str(env.key))
    assert code == 0, err
    assert out.startswith("conversation conv-evidence: 1 record(s)") and PROMPT in out
    code, out, _ = env.run("logs", "conversation", "conv-shared-42", "--key", str(env.key))
    assert code == 0 and "user shared conversation conv-shared-42" in out and "user:\n" not in out
    code, _, err = env.run("logs", "conversation", "no-such-thing", "--key", str(env.key))
    assert code == 2 and "no record with that id" in err


def test_policy_explain_record_lists_the_detectors_that_ran(env: Env) -> None:
    code, out, err = env.run("policy", "explain", "--record", env.blocked.record_id)
    assert code == 0, err
    assert "detector: presidio ok 12.5 ms" in out and "detector: secrets ok 0.8 ms" in out
    assert "detector: intent timeout 5000.0 ms: no answer within 5s" in out
    code, out, _ = env.run("policy", "explain", "--record", env.failed.record_id)
    assert f"detector: inspector unavailable 3.0 ms: {FAILED_REASON}" in out


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_draws_on_a_terminal_and_is_silent_when_piped() -> None:
    piped = io.StringIO()
    with Progress("inspecting prompts", 3, piped) as progress, stage("loading detectors", piped):
        for _ in range(3):
            progress.advance()
    assert piped.getvalue() == ""
    tty = _Tty()
    with Progress("inspecting prompts", 4, tty) as progress:
        for _ in range(4):
            progress.advance()
    drawn = tty.getvalue()
    assert "inspecting prompts [" in drawn and "4/4" in drawn and drawn.endswith("\r\x1b[K")
    tty = _Tty()
    with stage("loading detectors", tty):
        time.sleep(0.35)
    assert "loading detectors" in tty.getvalue() and tty.getvalue().endswith("\r\x1b[K")
