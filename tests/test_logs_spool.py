"""The spool and the recorder: a database outage loses nothing, duplicates nothing, keeps order,
never blocks the event loop, and the spool holds no plaintext."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import pytest

from logs.recorder import AsyncRecorder, Outcome, SpoolingWriter
from logs.spool import Spool, spool_size
from logs.store import LogStore, Recipient, seal_record
from tests.support.logdb import LogDB, make_record


def test_spool_round_trip_torn_line_and_junk(tmp_path: Path, recipients: list[Recipient]) -> None:
    spool = Spool(tmp_path / "spool" / "logs.spool")
    assert not spool.pending() and spool.read() == []
    records = [seal_record(make_record(f"p{i}"), recipients) for i in range(3)]
    for r in records:
        spool.append(r)
    assert spool.pending() and spool_size(spool.path) == 3
    with spool.path.open("ab") as fh:
        fh.write(b"not json\n")
        fh.write(b'{"record_id": "torn", "meta')  # a crash in the middle of a write
    assert [r.record_id for r in spool.read()] == [r.record_id for r in records]
    assert spool.path.with_name("logs.spool.bad").read_bytes() == b"not json\n"
    stored: list[str] = []

    def store_batch(batch: object) -> int:
        stored.extend(r.record_id for r in batch)  # type: ignore[attr-defined]
        return len(stored)

    assert spool.drain(store_batch)[0] == 3
    assert stored == [r.record_id for r in records] and not spool.pending()
    assert oct(spool.path.stat().st_mode & 0o777) == "0o600"


def test_a_failed_replay_leaves_the_spool_untouched(tmp_path: Path, recipients: list[Recipient]) -> None:
    spool = Spool(tmp_path / "logs.spool")
    spool.append(seal_record(make_record("p"), recipients))
    before = spool.path.read_bytes()

    def broken(_batch: object) -> int:
        raise RuntimeError("database went away")

    with pytest.raises(RuntimeError):
        spool.drain(broken)
    assert spool.path.read_bytes() == before


def test_outage_spools_in_order_and_replays_exactly_once(
    log_db: LogDB, tmp_path: Path, recipients: list[Recipient]
) -> None:
    canary = f"canary-{uuid.uuid4().hex}"
    store = LogStore(log_db.url, recipients)
    spool = Spool(tmp_path / "spool" / "logs.spool")
    writer = SpoolingWriter(store, spool, retry_interval_s=0.2)
    writer.startup(retention_days=None)
    records = [make_record(f"{canary} #{i}", conversation=f"conv-{i}") for i in range(12)]
    outcomes = [writer.write(r) for r in records[:3]]
    with log_db.outage():
        outcomes += [writer.write(r) for r in records[3:8]]
        assert spool_size(spool.path) == 5
        assert canary.encode() not in spool.path.read_bytes()  # sealed in the spool too
        time.sleep(0.3)
        assert writer.flush() is False  # still down: nothing lost, spool kept
        assert spool_size(spool.path) == 5
    time.sleep(0.3)  # past retry_interval_s: the writer tries the database again
    outcomes += [writer.write(r) for r in records[8:]]  # back: the spool is replayed first, then these
    assert outcomes[:3] == [Outcome.STORED] * 3 and outcomes[3:8] == [Outcome.SPOOLED] * 5
    assert outcomes[8:] == [Outcome.STORED] * 4
    assert not spool.pending()
    # Every record exactly once, in the order it was recorded (id order is insertion order).
    assert store.record_ids() == [r.record_id for r in records]
    store.close()
    assert canary.encode() not in log_db.dump_text()


def test_replaying_records_already_stored_does_not_duplicate(
    log_db: LogDB, tmp_path: Path, recipients: list[Recipient]
) -> None:
    store = LogStore(log_db.url, recipients)
    spool = Spool(tmp_path / "logs.spool")
    sealed = [seal_record(make_record(f"p{i}"), recipients) for i in range(4)]
    store.insert_many(sealed[:2])  # a crash after these reached the database, before truncation
    for s in sealed:
        spool.append(s)
    assert spool.drain(store.insert_many) == (4, 2)
    assert store.record_ids() == [s.record_id for s in sealed]
    store.close()


async def test_recorder_never_blocks_the_event_loop_during_an_outage(
    log_db: LogDB, tmp_path: Path, recipients: list[Recipient]
) -> None:
    store = LogStore(log_db.url, recipients)
    spool = Spool(tmp_path / "logs.spool")
    recorder = AsyncRecorder(SpoolingWriter(store, spool, retry_interval_s=0.3))
    await recorder.record(make_record("warm-up"))
    gaps: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    records = [make_record(f"during outage {i}") for i in range(5)]
    with log_db.outage():  # (stopping and starting the server blocks this test, so tick only inside)
        stop = asyncio.Event()
        task = asyncio.create_task(ticker(stop))
        # Each record is durable (spooled) when record() returns; the loop keeps ticking meanwhile.
        await asyncio.gather(*(recorder.record(r) for r in records))
        stop.set()
        await task
        assert spool_size(spool.path) == 5
    stop = asyncio.Event()
    task = asyncio.create_task(ticker(stop))
    deadline = time.monotonic() + 20
    while spool.pending() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)  # the writer thread replays on its own once the database is back
    stop.set()
    await task
    recorder.close()
    assert not spool.pending()
    assert gaps and max(gaps) < 0.25, f"event loop stalled for {max(gaps):.3f}s"
    fresh = LogStore(log_db.url)
    assert len(fresh.record_ids()) == 6
    fresh.close()
