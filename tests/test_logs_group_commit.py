"""Group commit in the recorder: records queued together share one transaction, nobody is
answered before their record is durable, and a failing batch loses nothing."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Sequence
from pathlib import Path

import pytest

from logs.recorder import MAX_GROUP_COMMIT, AsyncRecorder, Outcome, SpoolingWriter
from logs.spool import Spool, spool_size
from logs.store import LogStore, Recipient, SealedRecord, answer_status
from promptfence.core import LogRecord
from tests.support.logdb import LogDB, make_record


class CountingStore(LogStore):
    """A real store that remembers each transaction's size and can hold the first one open."""

    def __init__(self, url: str, recipients: Sequence[Recipient]) -> None:
        super().__init__(url, recipients)
        self.batches: list[list[str]] = []
        self.hold = threading.Event()
        self.held = threading.Event()
        self.hold.set()

    def insert_many(self, records: Sequence[SealedRecord]) -> int:
        self.held.set()
        self.hold.wait(10)
        changed = super().insert_many(records)
        self.batches.append([r.record_id for r in records])
        return changed


async def test_records_queued_during_a_commit_share_the_next_one_and_wait_for_it(
    log_db: LogDB, tmp_path: Path, recipients: list[Recipient]
) -> None:
    store = CountingStore(log_db.url, recipients)
    recorder = AsyncRecorder(SpoolingWriter(store, Spool(tmp_path / "logs.spool"), db_timeout_s=15))
    await recorder.record(make_record("warm-up"))
    store.held.clear()
    store.hold.clear()  # the next commit stalls until released: the rest queue up behind it
    first = make_record("first")
    first_task = asyncio.ensure_future(recorder.record(first))
    for _ in range(500):
        if store.held.is_set():
            break
        await asyncio.sleep(0.01)
    assert store.held.is_set()
    queued = [make_record(f"queued {i}") for i in range(10)]
    tasks = {asyncio.ensure_future(recorder.record(r)): r for r in queued}
    await asyncio.sleep(0.2)
    assert not any(t.done() for t in (first_task, *tasks))  # nobody answered before a commit
    store.hold.set()
    await first_task
    reader = LogStore(log_db.url)
    for done in asyncio.as_completed(list(tasks)):
        await done
    # Answered only once durable: every queued record is readable by another connection.
    for r in queued:
        assert reader.get(r.record_id) is not None
    reader.close()
    recorder.close()
    queued_ids = {r.record_id for r in queued}
    batch_with_queued = [b for b in store.batches if queued_ids & set(b)]
    assert len(batch_with_queued) == 1 and set(batch_with_queued[0]) == queued_ids  # one transaction
    assert store.record_ids()[-11:] == [first.record_id, *(r.record_id for r in queued)]  # order kept
    store.close()


async def test_a_batch_the_database_refuses_is_spooled_record_by_record_and_replayed(
    log_db: LogDB, tmp_path: Path, recipients: list[Recipient]
) -> None:
    store = CountingStore(log_db.url, recipients)
    spool = Spool(tmp_path / "logs.spool")
    writer = SpoolingWriter(store, spool, retry_interval_s=0.3)
    writer.startup(retention_days=None)
    records = [make_record(f"batch {i}", conversation=f"c{i}") for i in range(6)]
    with log_db.outage():
        outcomes = writer.write_many(records)
    assert outcomes == [Outcome.SPOOLED] * 6
    assert spool_size(spool.path) == 6
    await asyncio.sleep(0.4)
    assert writer.flush() is True
    assert store.record_ids() == [r.record_id for r in records]  # each once, in order
    writer.close()


def test_a_record_that_cannot_be_sealed_fails_alone(
    tmp_path: Path, recipients: list[Recipient], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'log.db'}", recipients)
    writer = SpoolingWriter(store, Spool(tmp_path / "logs.spool"))
    writer.startup(retention_days=None)
    records = [make_record(f"r{i}") for i in range(4)]
    broken = records[1].record_id
    real_seal = store.seal

    def seal(record: LogRecord) -> SealedRecord:
        if record.record_id == broken:
            raise ValueError("unsealable")
        return real_seal(record)

    monkeypatch.setattr(store, "seal", seal)
    outcomes = writer.write_many(records)
    assert isinstance(outcomes[1], ValueError)
    assert [outcomes[0], *outcomes[2:]] == [Outcome.STORED] * 3
    assert store.batches[-1] == [r.record_id for r in records if r.record_id != broken]
    writer.close()


async def test_a_burst_larger_than_one_batch_is_split_and_all_stored(
    tmp_path: Path, recipients: list[Recipient]
) -> None:
    store = CountingStore(f"sqlite:///{tmp_path / 'log.db'}", recipients)
    recorder = AsyncRecorder(SpoolingWriter(store, Spool(tmp_path / "logs.spool")))
    await recorder.record(make_record("warm-up"))
    records = [make_record(f"burst {i}") for i in range(MAX_GROUP_COMMIT * 2 + 5)]
    await asyncio.gather(*(recorder.record(r) for r in records))
    recorder.close()
    assert max(len(b) for b in store.batches) <= MAX_GROUP_COMMIT
    assert store.record_ids()[1:] == [r.record_id for r in records]
    store.close()


def test_a_record_and_its_completion_in_one_batch_are_stored_once_complete(
    log_db: LogDB, recipients: list[Recipient]
) -> None:
    store = LogStore(log_db.url, recipients)
    earlier = make_record("earlier", topics={"PII": 0.9})
    store.insert_many([store.seal(dataclasses.replace(earlier, answer_status="pending"))])
    a = make_record("a", topics={"JAILBREAK": 0.8})
    b = make_record("b")
    batch = [
        dataclasses.replace(a, answer_status="pending", response_bytes=0),
        dataclasses.replace(b, answer_status="pending", response_bytes=0),
        dataclasses.replace(a, answer_status="complete"),
        dataclasses.replace(earlier, answer_status="complete", inspection=a.inspection),
        dataclasses.replace(a, answer_status="pending", response_bytes=0),  # stale: changes nothing
    ]
    assert store.insert_many([store.seal(r) for r in batch]) == 4
    assert store.record_ids() == [earlier.record_id, a.record_id, b.record_id]
    got = {r: store.get(r) for r in store.record_ids()}
    assert {r: answer_status(s.metadata) for r, s in got.items() if s} == {
        earlier.record_id: "complete",
        a.record_id: "complete",
        b.record_id: "pending",
    }
    # The completed earlier record's topic rows (what filters use) were replaced, not added to.
    with store.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT record_id, topic FROM log_topic ORDER BY record_id, topic").all()
    assert sorted((r, t) for r, t in rows) == sorted([(earlier.record_id, "JAILBREAK"), (a.record_id, "JAILBREAK")])
    store.close()
