"""The audit log under faults (issue 12): a record exists before its answer, a completion always
wins, a full or read-only spool disk with the database down refuses the record loudly (and never
tears the spool), a black-holed PostgreSQL is given up within 2 s, and the clear metadata holds a
keyed HMAC of the prompt, never a plain digest."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import pytest

from logs.recorder import AsyncRecorder, Outcome, SpoolingWriter
from logs.sealing import KeyPair, write_key_pair
from logs.spool import Spool, spool_size
from logs.store import LogStore, Recipient, load_or_create_digest_key, prompt_hmac
from promptfence.cli import main
from promptfence.core import LogRecord, Payload, text_digest
from promptfence.errors import RecordNotDurable
from tests.support.logdb import PG_BASE, LogDB, make_log_db, make_record
from tests.support.procs import free_port

CANARY = f"canary-{uuid.uuid4().hex}"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, list[Recipient]]:
    write_key_pair(KeyPair.generate(), tmp_path / "admin.key", tmp_path / "admin.pub")
    return tmp_path / "admin.key", [Recipient.from_file(tmp_path / "admin.pub")]


def _pending(prompt: str, **kw: object) -> LogRecord:
    record = make_record(prompt, response=None, **kw)  # type: ignore[arg-type]
    return dataclasses.replace(record, answer_status="pending", response_bytes=0)


def _completed(pending: LogRecord, answer: str, status: str = "complete") -> LogRecord:
    return dataclasses.replace(
        pending,
        payload=Payload(pending.payload.prompt, answer, pending.payload.attachments),
        response_bytes=len(answer.encode()),
        answer_status=status,
    )


# -- record at decision, complete at the end ------------------------------------------------------


def test_a_completion_wins_in_any_order_and_nothing_is_duplicated(
    log_db: LogDB, tmp_path: Path, keys: tuple[Path, list[Recipient]]
) -> None:
    private, recipients = keys
    store = LogStore(log_db.url, recipients)
    orders = {
        "in order": "PC",
        "completion first": "CP",
        "twice each": "PCPC",
        "stale pending last": "PCCP",
    }
    expected: dict[str, str] = {}
    for name, order in orders.items():
        pending = _pending(f"{CANARY} {name}", conversation=f"conv-{name}")
        complete = _completed(pending, f"answer {CANARY} {name}")
        for step in order:
            store.write(pending if step == "P" else complete)
        expected[pending.record_id] = f"answer {CANARY} {name}"
    # And through the spool: lines replayed out of order and twice, in one batch.
    spool = Spool(tmp_path / "spool" / "logs.spool")
    pending = _pending(f"{CANARY} spooled", topics={"PII": 0.4})
    complete = _completed(
        dataclasses.replace(pending, inspection=make_record("x", topics={"PII": 0.95}).inspection), "late"
    )
    for r in (complete, pending, pending, complete):
        spool.append(store.seal(r))
    assert spool.drain(store.insert_many) == (4, 1)
    expected[pending.record_id] = "late"
    spool.append(store.seal(pending))  # replayed again later: changes nothing
    assert spool.drain(store.insert_many) == (1, 0)

    ids = store.record_ids()
    assert sorted(ids) == sorted(expected) and len(ids) == len(set(ids))
    for rid, answer in expected.items():
        stored = store.get(rid)
        assert stored is not None
        assert stored.metadata["answer_status"] == "complete"
        assert stored.open(private).response == answer
        assert stored.metadata["response_chars"] == len(answer)
    [spooled] = [s for s in store.find() if s.record_id == pending.record_id]
    assert spooled.metadata["topics"]["PII"]["confidence"] == "high"  # the completion's topics replaced
    from logs.store import LogFilter
    from promptfence.core import Confidence, Topic

    assert [r.record_id for r in store.find(LogFilter(topic=Topic.PII, min_confidence=Confidence.HIGH))] == [
        pending.record_id
    ]
    store.close()
    assert CANARY.encode() not in log_db.dump_text()


def test_a_pending_record_is_listed_and_shown(
    log_db: LogDB, tmp_path: Path, keys: tuple[Path, list[Recipient]], capsys: pytest.CaptureFixture[str]
) -> None:
    private, recipients = keys
    store = LogStore(log_db.url, recipients)
    pending = _pending(f"{CANARY} never answered", conversation="conv-p")
    store.write(pending)
    store.close()
    config = tmp_path / "promptfence.yaml"
    config.write_text(f"data_dir: {tmp_path / 'home'}\nlogs:\n  database_url: '{log_db.url}'\n")

    def run(*args: str) -> str:
        capsys.readouterr()
        assert main([*args, "--config", str(config)]) == 0
        return capsys.readouterr().out

    table = run("logs", "list")
    assert "ANSWER" in table.splitlines()[0] and "pending" in table.splitlines()[1]
    [line] = run("logs", "list", "--json").splitlines()
    assert json.loads(line)["answer_status"] == "pending"
    assert CANARY not in table + line
    shown = run("logs", "show", pending.record_id, "--key", str(private))
    assert "answer:       pending" in shown and "the answer was never recorded" in shown
    assert "never answered" in shown  # decrypted locally
    conv = run("logs", "conversation", "conv-p", "--key", str(private))
    assert "assistant: (pending" in conv


async def test_recorder_record_then_complete_and_complete_never_raises(
    tmp_path: Path, keys: tuple[Path, list[Recipient]]
) -> None:
    private, recipients = keys
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}", recipients)
    recorder = AsyncRecorder(SpoolingWriter(store, Spool(tmp_path / "spool" / "logs.spool")))
    pending = _pending("decided")
    await recorder.record(pending)
    assert store.get(pending.record_id) is not None  # durable before anything is forwarded
    await recorder.complete(_completed(pending, "the answer"))
    # A completion that cannot be made durable is logged, never raised at the caller.
    from logs.store import StoreUnavailable

    def down(_sealed: object) -> bool:
        raise StoreUnavailable("log database error (test: down)")

    real_insert = store.insert
    store.insert = down  # type: ignore[method-assign,assignment]
    recorder.writer.spool = Spool(Path("/proc/promptfence-nowhere/logs.spool"))
    await recorder.complete(_completed(_pending("late"), "x"))
    with pytest.raises(RecordNotDurable):
        await recorder.record(_pending("refused"))
    assert recorder.degraded
    store.insert = real_insert  # type: ignore[method-assign]
    recorder.close()
    fresh = LogStore(f"sqlite:///{tmp_path / 'logs.db'}")
    stored = fresh.get(pending.record_id)
    assert stored is not None and stored.open(private).response == "the answer"
    assert len(fresh.record_ids()) == 1
    fresh.close()


# -- database down and the spool's disk full or read-only --------------------------------------


@contextmanager
def _tmpfs(path: Path, size: str, *, read_only: bool = False) -> Iterator[Path]:
    """A tiny filesystem of its own at ``path`` (root and mount(8) needed, else the test skips)."""
    path.mkdir(parents=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)], capture_output=True, check=False
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip()[:100]})")
    try:
        (path / "spool").mkdir()
        if read_only:
            (path / "spool" / "logs.spool").write_bytes(b"")
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True, capture_output=True)
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def _refused_url() -> str:
    return f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"  # nothing listens: refused


def _fill(writer: SpoolingWriter, limit: int = 400) -> tuple[list[Outcome], RecordNotDurable | None]:
    outcomes: list[Outcome] = []
    for i in range(limit):
        try:
            outcome = writer.write(make_record(f"{CANARY} #{i} " + "filler " * 60))
        except RecordNotDurable as exc:
            return outcomes, exc
        outcomes.append(outcome)
        if outcome is Outcome.LOST:
            return outcomes, None
    raise AssertionError("the tiny spool disk never filled up")


@pytest.mark.parametrize("policy", ["block", "allow"])
def test_full_spool_disk_with_the_database_down(
    tmp_path: Path, keys: tuple[Path, list[Recipient]], policy: str, caplog: pytest.LogCaptureFixture
) -> None:
    _, recipients = keys
    health = tmp_path / "logs-health.json"
    with _tmpfs(tmp_path / "tiny", "64k") as disk:
        spool = Spool(disk / "spool" / "logs.spool")
        writer = SpoolingWriter(
            LogStore(_refused_url(), recipients), spool, on_unrecordable=policy, health_path=health, retry_interval_s=60
        )
        writer.startup(retention_days=None)
        assert writer.degraded and json.loads(health.read_text())["database"] == "down"
        with caplog.at_level(logging.INFO, logger="promptfence"):
            outcomes, refused = _fill(writer)
        # Every acknowledged record is whole in the spool: the failed append was cut back.
        data = spool.path.read_bytes()
        assert data.endswith(b"\n") and outcomes.count(Outcome.SPOOLED) == spool_size(spool.path) > 3
        assert len(spool.read()) == spool_size(spool.path)
        assert CANARY.encode() not in data
        if policy == "block":
            assert refused is not None and "ENOSPC" in str(refused) and CANARY not in str(refused)
            # And it keeps refusing a record as large as the refused one (a much smaller one may
            # still fit in what the filled disk has left).
            with pytest.raises(RecordNotDurable):
                writer.write(make_record(f"{CANARY} #next " + "filler " * 60))
        else:
            assert refused is None and outcomes[-1] is Outcome.LOST
        assert spool.path.read_bytes() == data  # no torn line, whatever was refused
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert any("ENOSPC" in m and "LOG DEGRADED" in m for m in errors)
        assert not any(CANARY in r.getMessage() for r in caplog.records)
        state = json.loads(health.read_text())
        assert state["degraded"] and state["spool"] == "failing" and "ENOSPC" in state["spool_error"]
        assert state["records"]["unrecordable"] >= 1
        writer.close()


def test_read_only_spool_disk_with_the_database_down_refuses(
    tmp_path: Path, keys: tuple[Path, list[Recipient]], caplog: pytest.LogCaptureFixture
) -> None:
    _, recipients = keys
    with _tmpfs(tmp_path / "ro", "1m", read_only=True) as disk:
        spool = Spool(disk / "spool" / "logs.spool")
        writer = SpoolingWriter(LogStore(_refused_url(), recipients), spool)  # default: block
        writer.startup(retention_days=None)
        with caplog.at_level(logging.ERROR, logger="promptfence"), pytest.raises(RecordNotDurable, match="EROFS"):
            writer.write(make_record(CANARY))
        assert any("EROFS" in r.getMessage() for r in caplog.records)
        assert writer.health()["degraded"] and "EROFS" in str(writer.health()["spool_error"])
        assert spool.path.read_bytes() == b""
        writer.close()


# -- a PostgreSQL that stops answering --------------------------------------------------------


class Relay:
    """A TCP relay to PostgreSQL that can black-hole: it then keeps every connection (and accepts
    new ones) but forwards nothing, like a network that silently drops packets."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.forwarding = threading.Event()
        self.forwarding.set()
        self._stop = False
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._stop:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self._sockets.append(client)
            if not self.forwarding.is_set():
                continue  # accepted, and never answered
            upstream = socket.create_connection(self.target)
            self._sockets.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while not self.forwarding.is_set():  # black hole: hold it, forever
                    time.sleep(0.05)
                    if self._stop:
                        return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._stop = True
        self.listener.close()
        for s in self._sockets:
            s.close()


async def test_a_black_holed_postgresql_falls_back_to_the_spool_within_2s(
    tmp_path: Path, keys: tuple[Path, list[Recipient]], caplog: pytest.LogCaptureFixture
) -> None:
    _, recipients = keys
    with make_log_db("postgresql", tmp_path) as db:
        host_port = PG_BASE.split("@", 1)[1].split("/", 1)[0]
        host, port = host_port.rsplit(":", 1)
        relay = Relay((host, int(port)))
        url = db.url.replace(host_port, f"127.0.0.1:{relay.port}", 1)
        store = LogStore(url, recipients, timeout_s=1.5)
        spool = Spool(tmp_path / "spool" / "logs.spool")
        writer = SpoolingWriter(store, spool, retry_interval_s=0.5, db_timeout_s=1.5)
        recorder = AsyncRecorder(writer)
        try:
            before = [make_record(f"before {i}") for i in range(2)]
            for r in before:
                await recorder.record(r)
            assert not spool.pending()
            relay.forwarding.clear()
            during = [make_record(f"during {i}") for i in range(3)]
            with caplog.at_level(logging.INFO, logger="promptfence.logs"):
                started = time.monotonic()
                await recorder.record(during[0])
                first = time.monotonic() - started
                for r in during[1:]:
                    await recorder.record(r)
                total = time.monotonic() - started
            assert first < 2.0, f"the first record waited {first:.2f}s on the black hole"
            assert total < 4.0
            assert spool_size(spool.path) == 3
            [line] = [json.loads(raw) for raw in spool.path.read_text().splitlines()][:1]
            assert "did not answer within 1.5s" in line["metadata"]["spooled"]["reason"]
            assert any("spooled" in r.getMessage() and during[0].record_id in r.getMessage() for r in caplog.records)
            assert any("did not answer within" in r.getMessage() for r in caplog.records)
            assert recorder.degraded and recorder.health()["database"] == "down"
            relay.forwarding.set()  # the network heals: the spool is replayed on its own
            deadline = time.monotonic() + 30
            while spool.pending() and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            after = make_record("after")
            await recorder.record(after)
        finally:
            recorder.close()
            relay.close()
        fresh = LogStore(db.url)
        ids = fresh.record_ids()
        assert sorted(ids) == sorted(r.record_id for r in [*before, *during, after]) and len(ids) == len(set(ids))
        replayed = fresh.get(during[1].record_id)
        assert replayed is not None and "spooled" in replayed.metadata
        fresh.close()


# -- secrets at rest --------------------------------------------------------------------------


def test_records_carry_a_keyed_hmac_never_a_plain_digest(
    log_db: LogDB, tmp_path: Path, keys: tuple[Path, list[Recipient]]
) -> None:
    _, recipients = keys
    key_file = tmp_path / "home" / "keys" / "log-digest.key"
    key = load_or_create_digest_key(key_file)
    assert load_or_create_digest_key(key_file) == key and len(key) == 32
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    assert oct(key_file.parent.stat().st_mode & 0o777) == "0o700"
    prompt = "123-45-6789"  # a short, guessable prompt
    store = LogStore(log_db.url, recipients, digest_key=key)
    first, again = make_record(prompt), make_record(prompt)
    store.write(first)
    store.write(again)
    store.write(make_record("something else"))
    metas = {r.record_id: r.metadata for r in store.find()}
    assert "prompt_digest" not in metas[first.record_id]
    assert metas[first.record_id]["prompt_hmac"] == prompt_hmac(key, prompt)
    assert metas[first.record_id]["prompt_hmac"] == metas[again.record_id]["prompt_hmac"]  # de-duplication
    assert len({m["prompt_hmac"] for m in metas.values()}) == 2
    other = LogStore(log_db.url, recipients, digest_key=os.urandom(32))  # another deployment's key
    other_record = make_record(prompt)
    other.write(other_record)
    assert other.get(other_record.record_id).metadata["prompt_hmac"] != prompt_hmac(key, prompt)  # type: ignore[union-attr]
    other.close()
    store.close()
    assert text_digest(prompt).encode() not in log_db.dump_text()


def test_the_proxy_writer_makes_its_data_private(tmp_path: Path, keys: tuple[Path, list[Recipient]]) -> None:
    from promptfence.cli.proxy_cmd import build_writer
    from promptfence.config import load_config

    _, recipients = keys
    home = tmp_path / "new" / "home"
    config_file = tmp_path / "promptfence.yaml"
    config_file.write_text(f"data_dir: {home}\n")
    writer = build_writer(load_config(config_file), recipients)
    writer.startup(retention_days=None)
    writer.write(make_record("p"))
    writer.close()
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    assert oct((home / "promptfence-logs.db").stat().st_mode & 0o777) == "0o600"
    assert oct((home / "keys" / "log-digest.key").stat().st_mode & 0o777) == "0o600"
    assert oct((home / "logs-health.json").stat().st_mode & 0o777) == "0o600"
    assert not json.loads((home / "logs-health.json").read_text())["degraded"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"data_dir: {home}\nlogs:\n  on_unrecordable: maybe\n")
    from promptfence.errors import ConfigError

    with pytest.raises(ConfigError, match="on_unrecordable"):
        build_writer(load_config(bad), recipients)
