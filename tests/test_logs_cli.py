"""``promptfence logs ...`` and ``promptfence feedback``, in-process, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from logs.sealing import KeyPair, write_key_pair
from logs.spool import Spool
from logs.store import LogStore, Recipient, seal_record
from promptfence.cli import main
from tests.support.logdb import LogDB, make_record

CANARY = f"canary-{uuid.uuid4().hex}"


class Env:
    def __init__(self, tmp_path: Path, db: LogDB, capsys: pytest.CaptureFixture[str]) -> None:
        self.key = tmp_path / "admin.key"
        write_key_pair(KeyPair.generate(), self.key, tmp_path / "admin.pub")
        self.spool = tmp_path / "spool" / "logs.spool"
        self.config = tmp_path / "promptfence.yaml"
        self.config.write_text(
            f"data_dir: {tmp_path / 'home'}\n"
            f"logs:\n  database_url: '{db.url}'\n  recipients: [{tmp_path / 'admin.pub'}]\n"
            f"  spool_path: {self.spool}\n  retention_days: 30\n"
        )
        self.store = LogStore(db.url, [Recipient.from_file(tmp_path / "admin.pub")])
        self.capsys = capsys

    def run(self, *args: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        code = main([*args, "--config", str(self.config)])
        out, err = self.capsys.readouterr()
        return code, out, err


@pytest.fixture
def env(tmp_path: Path, log_db: LogDB, capsys: pytest.CaptureFixture[str]) -> Iterator[Env]:
    e = Env(tmp_path, log_db, capsys)
    t = time.time() - 60
    e.store.write(make_record(f"first {CANARY}", conversation="conv-1", timestamp=t, response="answer one"))
    e.store.write(
        make_record(
            f"second {CANARY}",
            conversation="conv-1",
            timestamp=t + 1,
            topics={"PII": 0.9},
            action="block",
            response=None,
        )
    )
    e.store.write(make_record("third", conversation="conv-2", user="bob", groups=("sales",), app="gemini"))
    e.store.write(make_record("ancient", conversation="conv-old", timestamp=time.time() - 40 * 86400))
    yield e
    e.store.close()


def test_list_table_and_json_lines_with_filters(env: Env) -> None:
    code, out, _ = env.run("logs", "list")
    assert code == 0 and "conv-1" in out and "conv-2" in out and out.splitlines()[0].startswith("ID")
    code, out, _ = env.run("logs", "list", "--json", "--user", "bob")
    [line] = out.splitlines()
    doc = json.loads(line)
    assert doc["conversation_id"] == "conv-2" and doc["key_ids"] and "prompt" not in doc
    cases: list[tuple[list[str], set[str]]] = [
        (["--since", "1d"], {"conv-1", "conv-2"}),
        (["--until", "7d"], {"conv-old"}),
        (["--group", "sales"], {"conv-2"}),
        (["--app", "gemini"], {"conv-2"}),
        (["--app-type", "genai_chat", "--app", "chatgpt", "--since", "1d"], {"conv-1"}),
        (["--operation", "SendPrompt", "--user", "bob"], {"conv-2"}),
        (["--topic", "pii"], {"conv-1"}),
        (["--topic", "PII", "--min-confidence", "high"], {"conv-1"}),
        (["--action", "block"], {"conv-1"}),
        (["--dlp-match"], {"conv-1"}),
        (["--no-dlp-match", "--since", "1d"], {"conv-1", "conv-2"}),
        (["--prompt-captured", "--conversation", "conv-2"], {"conv-2"}),
        (["--no-prompt-captured"], set()),
    ]
    for extra, expected in cases:
        code, out, err = env.run("logs", "list", "--json", *extra)
        assert code == 0, err
        assert {json.loads(x)["conversation_id"] for x in out.splitlines()} == expected, extra
    assert CANARY not in out


def test_show_and_conversation_decrypt_locally(env: Env, tmp_path: Path) -> None:
    rid = env.store.find()[-1].record_id  # oldest, "ancient"
    code, out, _ = env.run("logs", "show", rid[:10], "--key", str(env.key))
    assert code == 0 and "ancient" in out and "--- response ---" in out
    code, out, _ = env.run("logs", "conversation", "conv-1", "--key", str(env.key))
    assert code == 0
    first, second, answer = out.index(f"first {CANARY}"), out.index(f"second {CANARY}"), out.index("answer one")
    assert first < answer < second  # first prompt, its answer, then the next prompt
    assert "blocked" in out[second:]
    code, out, _ = env.run("logs", "conversation", "conv-1", "--key", str(env.key), "--json")
    assert [json.loads(x)["payload"]["response"] for x in out.splitlines()] == ["answer one", None]
    write_key_pair(KeyPair.generate(), tmp_path / "other.key", tmp_path / "other.pub")
    code, out, err = env.run("logs", "conversation", "conv-1", "--key", str(tmp_path / "other.key"))
    assert code == 2 and "sealed to key id" in err and CANARY not in out + err
    code, _, err = env.run("logs", "conversation", "nope", "--key", str(env.key))
    assert code == 2 and "no log records" in err


def test_purge_uses_the_configured_retention(env: Env) -> None:
    code, out, _ = env.run("logs", "purge")
    assert code == 0 and "deleted 1 record(s) older than 30 days" in out
    assert "conv-old" not in {r.metadata["conversation_id"] for r in env.store.find()}
    code, out, _ = env.run("logs", "purge", "--older-than-days", "0")
    assert "nothing deleted" in out and len(env.store.find()) == 3


def test_replay_and_migrate(env: Env) -> None:
    spool = Spool(env.spool)
    spooled = seal_record(make_record("spooled", conversation="conv-spool"), env.store.recipients)
    spool.append(spooled)
    spool.append(spooled)  # a duplicate is stored once
    code, out, _ = env.run("logs", "replay")
    assert code == 0 and "replayed 2 spooled record(s)" in out and "1 new" in out
    assert not spool.pending()
    assert env.store.get(spooled.record_id) is not None
    code, out, _ = env.run("logs", "migrate")
    assert code == 0 and "revision 0004" in out


def test_feedback_command(env: Env) -> None:
    rid = next(r.record_id for r in env.store.find() if r.metadata["decision"]["action"] == "block")
    code, out, _ = env.run("feedback", rid, "--false-positive", "PII", "--note", "a street name", "--by", "sec")
    assert code == 0 and "recorded false positive for PII" in out
    code, out, _ = env.run("feedback", rid[:8], "--true-positive", "credentials")
    assert code == 0
    [fp, tp] = env.store.feedback_reports(record_id=rid)
    assert (fp.topic.value, fp.verdict, fp.reporter, fp.source, fp.note) == (
        "PII",
        "false_positive",
        "sec",
        "cli",
        "a street name",
    )
    assert (tp.topic.value, tp.verdict) == ("CREDENTIALS", "true_positive")
    code, out, _ = env.run("feedback", "--list", "--json")
    assert [json.loads(x)["verdict"] for x in out.splitlines()] == ["false_positive", "true_positive"]
    code, _, err = env.run("feedback", rid)
    assert code == 2 and "--false-positive" in err
    code, _, err = env.run("feedback", "does-not-exist", "--false-positive", "PII")
    assert code == 2 and "no log record" in err
    with pytest.raises(SystemExit):
        env.run("feedback", rid, "--false-positive", "NOT_A_TOPIC")


def test_list_filters_on_a_custom_topic_and_rejects_a_malformed_name(env: Env) -> None:
    import dataclasses

    from logs.viewer import BadQuery, filter_from_query

    base = make_record("falcon", conversation="conv-falcon")
    env.store.write(
        dataclasses.replace(base, inspection=dataclasses.replace(base.inspection, custom_topics={"PROJECT_FALCON": 0.9}))
    )
    code, out, err = env.run("logs", "list", "--json", "--topic", "project_falcon")
    assert code == 0, err
    assert {json.loads(x)["conversation_id"] for x in out.splitlines()} == {"conv-falcon"}
    with pytest.raises(SystemExit):
        env.run("logs", "list", "--topic", "not a topic!")
    assert "unknown topic 'not a topic!'" in env.capsys.readouterr().err
    assert filter_from_query({"topic": "PROJECT_FALCON"}).topic == "PROJECT_FALCON"
    with pytest.raises(BadQuery, match="unknown topic"):
        filter_from_query({"topic": "lower case"})
