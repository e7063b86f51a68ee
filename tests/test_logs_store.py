"""The log store: sealed payloads, clear metadata, decryption only with the right key."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from logs.sealing import KeyPair, write_key_pair
from logs.store import LogStore, Recipient
from promptfence.core import Action, Decision, Identity, Inspection, LogRecord, Operation, OperationKind, Payload
from promptfence.errors import KeyMaterialError


def _keys(tmp_path: Path, name: str) -> tuple[Path, Path]:
    private, public = tmp_path / f"{name}.key", tmp_path / f"{name}.pub"
    write_key_pair(KeyPair.generate(), private, public)
    return private, public


def _record(prompt: str, conversation: str = "c-1") -> LogRecord:
    op = Operation(
        "chatgpt",
        "genai_chat",
        "chatgpt.send_prompt",
        OperationKind.SEND_PROMPT,
        Identity("alice", ("eng",)),
        prompt=prompt,
        conversation_id=conversation,
    )
    return LogRecord(
        str(uuid.uuid4()),
        1_700_000_000.0,
        op,
        Inspection((), {}, ()),
        Decision(Action.ALLOW, ("r",), "default"),
        Payload(prompt, "the answer"),
    )


def test_round_trip_two_recipients_and_wrong_key(tmp_path: Path) -> None:
    a_priv, a_pub = _keys(tmp_path, "a")
    b_priv, b_pub = _keys(tmp_path, "b")
    c_priv, _ = _keys(tmp_path, "c")
    db = tmp_path / "logs.db"
    store = LogStore(f"sqlite:///{db}", [Recipient.from_file(a_pub), Recipient.from_file(b_pub)])
    canary = f"canary-{uuid.uuid4().hex}"
    record = _record(f"secret plans {canary}")
    store.write(record)
    [stored] = store.list()
    assert stored.metadata["user"] == "alice" and stored.metadata["conversation_id"] == "c-1"
    for key in (a_priv, b_priv):
        payload = stored.open(key)
        assert canary in payload.prompt and payload.response == "the answer"
    with pytest.raises(KeyMaterialError, match="sealed to key id"):
        stored.open(c_priv)
    assert store.get(record.record_id[:8]) is not None  # prefix lookup
    store.close()
    assert canary.encode() not in db.read_bytes()
    assert b"the answer" not in db.read_bytes()


def test_refuses_to_store_without_a_recipient(tmp_path: Path) -> None:
    store = LogStore(f"sqlite:///{tmp_path / 'x.db'}", [])
    with pytest.raises(KeyMaterialError, match="no recipient"):
        store.write(_record("p"))


def test_filters(tmp_path: Path) -> None:
    _, pub = _keys(tmp_path, "a")
    store = LogStore(f"sqlite:///{tmp_path / 'logs.db'}", [Recipient.from_file(pub)])
    store.write(_record("one", "c-1"))
    store.write(_record("two", "c-2"))
    assert [r.metadata["conversation_id"] for r in store.list(conversation_id="c-2")] == ["c-2"]
    assert store.list(app="gemini") == []
    assert len(store.list(action=Action.ALLOW)) == 2
