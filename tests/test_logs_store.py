"""The log store, on SQLite and on PostgreSQL: sealing per recipient, rotation, filters, retention,
feedback, migrations, and no plaintext anywhere in the database."""

from __future__ import annotations

import base64
import dataclasses
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from pyhpke import AEADId, CipherSuite, KDFId, KEMId
from sqlalchemy import create_engine, text

from logs.sealing import KeyPair, write_key_pair
from logs.store import MIGRATIONS, LogFilter, LogStore, Recipient, StoredRecord
from promptfence.core import Action, Confidence, LogRecord, OperationKind, Topic
from promptfence.errors import KeyMaterialError
from tests.support.logdb import LogDB, make_record

DAY = 86400.0


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    write_key_pair(KeyPair.generate(), private, public)
    return private, public


@pytest.fixture
def store(log_db: LogDB, tmp_path: Path) -> Iterator[LogStore]:
    _, pub = _keys(tmp_path, "admin")
    s = LogStore(log_db.url, [Recipient.from_file(pub)])
    yield s
    s.close()


def test_two_recipients_each_open_and_a_third_key_gets_a_clear_error(log_db: LogDB, tmp_path: Path) -> None:
    a_priv, a_pub = _keys(tmp_path, "a")
    b_priv, b_pub = _keys(tmp_path, "b")
    c_priv, _ = _keys(tmp_path, "c")
    store = LogStore(log_db.url, [Recipient.from_file(a_pub), Recipient.from_file(b_pub)])
    canary = f"canary-{uuid.uuid4().hex}"
    record = make_record(f"secret plans {canary}", response=f"answer {canary}-r", attachments=(f"{canary}.pdf",))
    store.write(record)
    [stored] = store.find()
    assert stored.metadata["user"] == "alice" and stored.metadata["conversation_id"] == "c-1"
    assert len(stored.key_ids) == 2
    for key in (a_priv, b_priv):
        payload = stored.open(key)
        assert canary in payload.prompt and payload.response == f"answer {canary}-r"
        assert payload.attachments == (f"{canary}.pdf",)
    with pytest.raises(KeyMaterialError, match="sealed to key id") as info:
        stored.open(c_priv)
    assert canary not in str(info.value)
    assert store.get(record.record_id[:8]) is not None  # prefix lookup
    store.close()
    assert canary.encode() not in log_db.dump_text()  # nor its answer or attachment name


def test_key_rotation_new_records_to_the_new_key_old_ones_still_open(log_db: LogDB, tmp_path: Path) -> None:
    old_priv, old_pub = _keys(tmp_path, "old")
    new_priv, new_pub = _keys(tmp_path, "new")
    before = LogStore(log_db.url, [Recipient.from_file(old_pub)])
    first = make_record("before rotation")
    before.write(first)
    before.close()
    after = LogStore(log_db.url, [Recipient.from_file(new_pub)])  # the config now lists the new key
    second = make_record("after rotation")
    after.write(second)
    old_rec, new_rec = after.get(first.record_id), after.get(second.record_id)
    assert old_rec is not None and new_rec is not None
    assert old_rec.open(old_priv).prompt == "before rotation"
    assert new_rec.open(new_priv).prompt == "after rotation"
    with pytest.raises(KeyMaterialError, match="sealed to key id"):
        new_rec.open(old_priv)
    with pytest.raises(KeyMaterialError, match="sealed to key id"):
        old_rec.open(new_priv)
    after.close()


def test_independent_hpke_implementation_opens_a_stored_record(store: LogStore, tmp_path: Path) -> None:
    """pyhpke, not our code, opens the blob the store wrote (matched-data-cli v3 layout)."""
    priv_path = tmp_path / "admin.key"
    record = make_record("opened by pyhpke", response="and its answer", attachments=("a.txt",))
    store.write(record)
    stored = store.get(record.record_id)
    assert stored is not None
    private = base64.b64decode(json.loads(priv_path.read_text())["private_key"])
    [blob] = stored.sealed.values()
    raw = base64.b64decode(blob)
    assert raw[0] == 3
    enc, length, ct_and_tag = raw[1:33], int.from_bytes(raw[33:41], "little"), raw[41:]
    assert length == len(ct_and_tag) - 16
    suite = CipherSuite.new(KEMId.DHKEM_X25519_HKDF_SHA256, KDFId.HKDF_SHA256, AEADId.CHACHA20_POLY1305)
    ctx = suite.create_recipient_context(enc, suite.kem.deserialize_private_key(private))
    payload = json.loads(ctx.open(ct_and_tag, aad=b""))
    assert payload == {"prompt": "opened by pyhpke", "response": "and its answer", "attachments": ["a.txt"]}


def test_refuses_to_store_without_a_recipient(log_db: LogDB) -> None:
    store = LogStore(log_db.url, [])
    with pytest.raises(KeyMaterialError, match="no recipient"):
        store.write(make_record("p"))
    store.close()


def test_metadata_in_clear(store: LogStore) -> None:
    record = make_record("x" * 40, topics={"PII": 0.9, "FINANCIAL": 0.4}, action="block", response=None)
    store.write(record)
    [stored] = store.find()
    meta = stored.metadata
    for key in ("timestamp", "user", "groups", "app", "app_type", "operation", "conversation_id", "topics"):
        assert key in meta
    assert meta["topics"]["PII"] == {"score": 0.9, "confidence": "high"}
    assert meta["detectors_run"] == ["test"] and meta["detectors_failed"] == []
    assert meta["detector_ms"] == {"test": 1.5} and meta["inspection_ms"] == 2.0
    assert meta["decision"]["action"] == "block" and meta["decision"]["rule_ids"] == ["r-1"]
    assert meta["prompt_chars"] == 40 and meta["response_chars"] is None


def test_insert_is_idempotent_on_record_id(store: LogStore) -> None:
    from logs.store import seal_record

    sealed = seal_record(make_record("once"), store.recipients)
    assert store.insert(sealed) is True
    assert store.insert(sealed) is False
    assert store.insert_many([sealed, sealed]) == 0
    assert store.record_ids() == [sealed.record_id]


def _ids(records: list[StoredRecord]) -> set[str]:
    return {r.metadata["conversation_id"] for r in records}


def test_every_filter(store: LogStore) -> None:
    now = time.time()
    store.write(make_record("a", conversation="c-a", timestamp=now - 3 * DAY, topics={"PII": 0.9}, action="block"))
    store.write(make_record("b", conversation="c-b", user="bob", groups=("sales", "emea"), topics={"PII": 0.4}))
    store.write(make_record("c", conversation="c-c", app="gemini", app_type="genai_search", kind="UploadFile"))
    store.write(make_record("", conversation="c-d", kind="Other", response=None))
    f = LogFilter
    assert _ids(store.find(f(since=now - DAY))) == {"c-b", "c-c", "c-d"}
    assert _ids(store.find(f(until=now - DAY))) == {"c-a"}
    assert _ids(store.find(f(user="bob"))) == {"c-b"}
    assert _ids(store.find(f(group="emea"))) == {"c-b"}
    assert _ids(store.find(f(group="eng"))) == {"c-a", "c-c", "c-d"}
    assert _ids(store.find(f(app="gemini"))) == {"c-c"}
    assert _ids(store.find(f(app_type="genai_search"))) == {"c-c"}
    assert _ids(store.find(f(operation=OperationKind.UPLOAD_FILE.value))) == {"c-c"}
    assert _ids(store.find(f(topic=Topic.PII))) == {"c-a", "c-b"}
    assert _ids(store.find(f(topic=Topic.PII, min_confidence=Confidence.HIGH))) == {"c-a"}
    assert _ids(store.find(f(action=Action.BLOCK))) == {"c-a"}
    assert _ids(store.find(f(dlp_match=True))) == {"c-a", "c-b"}
    assert _ids(store.find(f(dlp_match=False))) == {"c-c", "c-d"}
    assert _ids(store.find(f(prompt_captured=False))) == {"c-d"}
    assert _ids(store.find(f(prompt_captured=True))) == {"c-a", "c-b", "c-c"}
    assert _ids(store.find(f(conversation_id="c-b"))) == {"c-b"}
    assert _ids(store.find(f(user="bob", app="gemini"))) == set()
    assert store.count(f(dlp_match=True)) == 2
    assert [r.metadata["conversation_id"] for r in store.find(limit=2)] == ["c-d", "c-c"]  # newest first


def test_conversation_is_in_order_first_prompt_to_last_answer(store: LogStore) -> None:
    base = time.time() - 100
    for i in (2, 0, 1):
        store.write(make_record(f"turn {i}", conversation="conv-x", timestamp=base + i))
    store.write(make_record("elsewhere", conversation="conv-y"))
    assert [r.metadata["timestamp"] for r in store.conversation("conv-x")] == [base, base + 1, base + 2]


def test_stats_and_facets(store: LogStore) -> None:
    hour = 3600.0
    t0 = (time.time() // hour) * hour - 5 * hour
    store.write(make_record("1", timestamp=t0 + 1, topics={"PII": 0.9}, action="block"))
    store.write(make_record("2", timestamp=t0 + 2, app="gemini"))
    store.write(make_record("3", timestamp=t0 + hour + 1, topics={"PII": 0.7, "CREDENTIALS": 0.95}))
    by_app = store.stats(None, "app", 3600)
    assert by_app["buckets"] == [int(t0), int(t0 + hour)]
    assert by_app["series"] == {"chatgpt": [1, 1], "gemini": [1, 0]}
    by_topic = store.stats(None, "topic", 3600)
    assert by_topic["series"] == {"CREDENTIALS": [0, 1], "PII": [1, 1]}
    by_action = store.stats(LogFilter(app="chatgpt"), "action", 86400)
    assert sum(by_action["series"]["block"]) == 1 and sum(by_action["series"]["allow"]) == 1
    facets = store.facets()
    assert facets["app"] == ["chatgpt", "gemini"] and facets["topic"] == ["CREDENTIALS", "PII"]
    with pytest.raises(ValueError, match="cannot count by"):
        store.stats(None, "prompt", 3600)


def test_retention_purges_old_records_with_their_children(store: LogStore) -> None:
    old = make_record("old", timestamp=time.time() - 100 * DAY, topics={"PII": 0.9}, groups=("g",))
    new = make_record("new", topics={"PII": 0.9})
    store.write(old)
    store.write(new)
    store.add_feedback(old.record_id, Topic.PII, "false_positive", reporter="t", source="cli")
    assert store.enforce_retention(None) == 0 and store.enforce_retention(0) == 0
    assert store.enforce_retention(90) == 1
    assert store.record_ids() == [new.record_id]
    assert store.feedback_reports() == []
    assert store.facets()["group"] == ["eng"]


def test_feedback_reports_read_api(store: LogStore, tmp_path: Path) -> None:
    record = make_record("is this PII?", topics={"PII": 0.7, "FINANCIAL": 0.5})
    store.write(record)
    store.add_feedback(record.record_id, Topic.PII, "false_positive", reporter="sec", source="cli", note="a street")
    store.add_feedback(record.record_id, Topic.FINANCIAL, "true_positive", reporter="sec", source="viewer")
    with pytest.raises(KeyError):
        store.add_feedback("nope", Topic.PII, "false_positive", reporter="x", source="cli")
    with pytest.raises(ValueError, match="verdict"):
        store.add_feedback(record.record_id, Topic.PII, "maybe", reporter="x", source="cli")
    reports = store.feedback_reports(with_records=True)
    assert [(r.topic, r.verdict, r.source) for r in reports] == [
        (Topic.PII, "false_positive", "cli"),
        (Topic.FINANCIAL, "true_positive", "viewer"),
    ]
    assert reports[0].false_positive and reports[0].note == "a street"
    assert reports[0].record is not None and reports[0].record.open(tmp_path / "admin.key").prompt == "is this PII?"
    assert [r.topic for r in store.feedback_reports(topic=Topic.FINANCIAL)] == [Topic.FINANCIAL]
    assert store.feedback_reports(verdict="false_positive", since=time.time() + 10) == []


def test_schema_is_made_by_alembic_and_a_skeleton_database_is_upgraded(log_db: LogDB, tmp_path: Path) -> None:
    """A database at the walking skeleton's schema (revision 0001) keeps its records through the head revision."""
    priv, pub = _keys(tmp_path, "admin")
    engine = create_engine(log_db.url)
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    record = make_record("from the skeleton days", topics={"PII": 0.9}, groups=("eng", "ops"))
    from logs.store import seal_record

    sealed = seal_record(record, [Recipient.from_file(pub)])
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "0001")
        conn.execute(
            text(
                'INSERT INTO prompt_log (record_id, timestamp, "user", groups, app, app_type, operation, operation_id,'
                " conversation_id, action, rule_ids, topics, dlp_match, prompt_captured, meta, sealed) VALUES"
                " (:rid, :ts, 'alice', '[]', 'chatgpt', 'genai_chat', 'SendPrompt', 'chatgpt.send_prompt', 'c-1',"
                " 'allow', '[]', '{}', true, true, :meta, :sealed)"
            ),
            {
                "rid": record.record_id,
                "ts": record.timestamp,
                "meta": json.dumps(sealed.metadata),
                "sealed": json.dumps(sealed.seals),
            },
        )
        # The skeleton made its table with create_all: no alembic_version. The store adopts it.
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    store = LogStore(log_db.url)
    store.migrate()
    assert store.schema_revision() == "0004"
    [stored] = store.find(LogFilter(group="ops", topic=Topic.PII))
    assert stored.open(priv).prompt == "from the skeleton days"
    store.migrate()  # idempotent
    store.close()
    fresh = LogStore(log_db.url)  # a second process finds it at head
    assert fresh.schema_revision() == "0004"
    fresh.close()


LONG_CUSTOM = "PROJECT_FALCON_ROADMAP_AND_CONTRACT_TERMS_2027"  # 46 characters: over the old 32


def _record_ids(records: list[StoredRecord]) -> set[str]:
    return {r.record_id for r in records}


def _with_custom_topics(record: LogRecord, scores: dict[str, float]) -> LogRecord:
    return dataclasses.replace(record, inspection=dataclasses.replace(record.inspection, custom_topics=scores))


def test_custom_topics_are_filtered_counted_and_offered_like_built_in_ones(store: LogStore) -> None:
    hour = 3600.0
    t0 = (time.time() // hour) * hour - 2 * hour
    hit = _with_custom_topics(make_record("roadmap", timestamp=t0 + 1), {LONG_CUSTOM: 0.9, "OTHER_TOPIC": 0.1})
    miss = make_record("weather", timestamp=t0 + 2, topics={"PII": 0.9})
    store.write(hit)
    store.write(miss)
    assert _record_ids(store.find(LogFilter(topic=LONG_CUSTOM))) == {hit.record_id}
    assert store.find(LogFilter(topic="OTHER_TOPIC")) == []  # below low confidence
    assert _record_ids(store.find(LogFilter(topic="OTHER_TOPIC", min_confidence=Confidence.NONE))) == {hit.record_id}
    by_topic = store.stats(None, "topic", 3600)
    assert by_topic["series"][LONG_CUSTOM] == [1] and by_topic["series"]["PII"] == [1]
    assert LONG_CUSTOM in store.facets()["topic"]


def test_migration_0004_backfills_custom_topics_of_older_records(log_db: LogDB, tmp_path: Path) -> None:
    _, pub = _keys(tmp_path, "admin")
    store = LogStore(log_db.url, [Recipient.from_file(pub)])
    record = _with_custom_topics(make_record("roadmap", topics={"PII": 0.9}), {LONG_CUSTOM: 0.8})
    store.write(record)
    store.close()
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    engine = create_engine(log_db.url)
    with engine.begin() as conn:  # back to the schema that kept built-in topics only
        cfg.attributes["connection"] = conn
        command.downgrade(cfg, "0003")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT topic FROM log_topic")).scalars().all() == ["PII"]
    engine.dispose()
    upgraded = LogStore(log_db.url)
    upgraded.migrate()
    assert upgraded.schema_revision() == "0004"
    assert _record_ids(upgraded.find(LogFilter(topic=LONG_CUSTOM))) == {record.record_id}
    assert _record_ids(upgraded.find(LogFilter(topic=Topic.PII))) == {record.record_id}
    upgraded.close()
