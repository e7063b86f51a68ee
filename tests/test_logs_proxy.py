"""The prompt log behind a real proxy: a database outage while prompts flow, and ``kill -9``.

Real processes, as in ``test_e2e_up.py`` (the same stand-in, TLS helpers and process helpers from
``tests/support``): a stand-in chatgpt.com over TLS, the inspector, and ``promptfence proxy`` run
on its own so the test can SIGKILL it. Every prompt carries a canary; at the end no file, no
database row, no spool line and no process output may contain it.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from logs.spool import spool_size
from logs.store import LogStore
from tests.support.deployment import Standin, curl, proxy_config, start_standin
from tests.support.logdb import BACKENDS, LogDB, make_log_db
from tests.support.procs import child_env, free_port, inspector_python, port_open, proxy_python, stop, wait_for

pytestmark = pytest.mark.slow

CANARY = f"canary-{uuid.uuid4().hex}"


@dataclass
class Upstream:
    root: Path
    standin: Standin
    inspector_port: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Upstream]:
    """The stand-in chatgpt.com and one inspector, shared by this module's proxies."""
    root = tmp_path_factory.mktemp("logproxy")
    env = child_env(root / "home")
    inspector_port = free_port()
    standin = start_standin(root, ["chatgpt.com"], env, root / "received.jsonl")  # the real inspector below
    config = root / "inspector.yaml"
    config.write_text(f"data_dir: {root / 'home'}\ninspector:\n  port: {inspector_port}\n")
    with (root / "inspector.out").open("wb") as out:
        inspector = subprocess.Popen(
            [inspector_python(), "-m", "promptfence", "inspector", "--config", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        standin.wait("stand-in")
        wait_for(lambda: port_open(inspector_port), 180, "inspector", inspector)
        yield Upstream(root, standin, inspector_port, env)
    finally:
        stop(inspector)
        stop(standin.process)


class Proxy:
    def __init__(self, upstream: Upstream, db: LogDB, root: Path) -> None:
        from logs.sealing import KeyPair, write_key_pair

        self.upstream, self.db, self.root = upstream, db, root
        root.mkdir(parents=True, exist_ok=True)
        self.home = root / "home"
        self.key = root / "admin.key"
        write_key_pair(KeyPair.generate(), self.key, root / "admin.pub")
        self.spool = root / "spool" / "logs.spool"
        self.port = free_port()
        self.config = root / "promptfence.yaml"
        logs = f"""logs:
  database_url: '{db.url}'
  recipients: [{root / "admin.pub"}]
  spool_path: {self.spool}
  retry_interval_s: 0.5
"""
        self.config.write_text(
            proxy_config(
                self.home, self.port, upstream.standin, ["chatgpt.com"], f"port: {upstream.inspector_port}", logs
            )
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.outputs: list[Path] = []
        self._sent: list[str] = []

    def start(self) -> None:
        out = self.root / f"proxy-{len(self.outputs)}.out"
        self.outputs.append(out)
        with out.open("wb") as fh:
            self.proc = subprocess.Popen(
                [proxy_python(), "-m", "promptfence", "proxy", "--config", str(self.config)],
                env=self.upstream.env,
                stdout=fh,
                stderr=subprocess.STDOUT,
            )
        ca = self.home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        wait_for(lambda: port_open(self.port) and ca.is_file(), 60, "proxy", self.proc)

    def send(self, conversation: str) -> None:
        result = curl(
            self.port,
            self.home / "mitmproxy" / "mitmproxy-ca-cert.pem",
            self.upstream.env,
            "https://chatgpt.com/backend-api/f/conversation",
            data=self._body(conversation),
            headers={"Content-Type": "application/json"},
            max_time=30,
        )
        assert "Stand-in answer" in result.body  # the user got the answer, database or not

    def send_slow(self, conversation: str, delay_s: int) -> subprocess.Popen[bytes]:
        """Start a prompt whose answer streams for ``delay_s`` seconds; curl runs in the background."""
        argv = ["curl", "--silent", "--max-time", str(delay_s + 30), "--proxy", f"http://127.0.0.1:{self.port}"]
        argv += ["--cacert", str(self.home / "mitmproxy" / "mitmproxy-ca-cert.pem")]
        argv += ["-H", "Content-Type: application/json", "-H", f"X-Standin-Delay: {delay_s}", "--data-binary", "@-"]
        argv.append("https://chatgpt.com/backend-api/f/conversation")
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=self.upstream.env
        )
        assert proc.stdin is not None
        proc.stdin.write(self._body(conversation).encode())
        proc.stdin.close()
        return proc

    def _body(self, conversation: str) -> str:
        self._sent.append(conversation)
        body = {
            "action": "next",
            "messages": [
                {
                    "id": str(uuid.uuid4()),
                    "author": {"role": "user"},
                    "content": {"content_type": "text", "parts": [f"Write a haiku about tea. {CANARY}"]},
                    "metadata": {},
                }
            ],
            "conversation_id": conversation,
            "parent_message_id": "client-created-root",
            "model": "auto",
        }
        return json.dumps(body)

    def forwarded(self) -> set[str]:
        """Conversation ids of the prompts that reached the stand-in app."""
        received = self.upstream.root / "received.jsonl"
        text = received.read_text(errors="replace") if received.is_file() else ""
        return {c for c in self._sent if c in text}

    def stored(self) -> list[str]:
        """Conversation ids of the stored records, in insertion order."""
        store = LogStore(self.db.url)
        try:
            return [r.metadata["conversation_id"] for r in reversed(store.find(limit=1000))]
        finally:
            store.close()

    def answer_status(self) -> dict[str, str]:
        store = LogStore(self.db.url)
        try:
            return {r.metadata["conversation_id"]: r.metadata["answer_status"] for r in store.find(limit=1000)}
        finally:
            store.close()

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)

    def assert_no_canary_anywhere(self) -> None:
        self.stop()
        checked = 0
        for path in [*self.outputs, *self.root.rglob("*")]:
            if path.is_file():
                checked += 1
                assert CANARY.encode() not in path.read_bytes(), f"prompt text leaked into {path}"
        assert checked >= 3
        assert CANARY.encode() not in self.db.dump_text()


@pytest.fixture(params=BACKENDS)
def proxy(request: pytest.FixtureRequest, upstream: Upstream, tmp_path: Path) -> Iterator[Proxy]:
    with make_log_db(request.param, tmp_path / "db") as db:
        p = Proxy(upstream, db, tmp_path / "proxy")
        try:
            yield p
        finally:
            p.stop()


def _spooled(spool: Path) -> int:
    """Distinct records in the spool (a flow spools its decision-time record and its completion)."""
    from logs.spool import Spool

    return len({r.record_id for r in Spool(spool).read()})


def _conversations(tag: str, n: int) -> list[str]:
    return [f"{tag}-{i}-{uuid.uuid4().hex[:6]}" for i in range(n)]


def test_database_outage_while_prompts_flow_loses_and_duplicates_nothing(proxy: Proxy) -> None:
    proxy.start()
    before, during, after = _conversations("before", 3), _conversations("during", 4), _conversations("after", 3)
    for c in before:
        proxy.send(c)
    wait_for(lambda: len(proxy.stored()) == 3, 30, "records before the outage")
    with proxy.db.outage():
        for c in during:
            proxy.send(c)
        wait_for(lambda: _spooled(proxy.spool) == 4, 30, "four spooled records")
        assert CANARY.encode() not in proxy.spool.read_bytes()
    for c in after:
        proxy.send(c)
    wait_for(lambda: len(proxy.stored()) >= 10 and spool_size(proxy.spool) == 0, 30, "every record stored")
    stored = proxy.stored()
    assert sorted(stored) == sorted(before + during + after)  # every record exactly once
    assert stored == before + during + after  # and in the order the prompts were sent
    proxy.assert_no_canary_anywhere()


def test_kill_9_while_records_are_spooled_loses_none(proxy: Proxy) -> None:
    proxy.start()
    first, spooled = _conversations("first", 1), _conversations("spooled", 3)
    proxy.send(first[0])
    wait_for(lambda: len(proxy.stored()) == 1, 30, "the first record")
    with proxy.db.outage():
        for c in spooled:
            proxy.send(c)
        wait_for(lambda: _spooled(proxy.spool) == 3, 30, "three spooled records")
        proxy.kill9()
    assert _spooled(proxy.spool) == 3
    proxy.start()  # the new proxy replays the spool at start
    wait_for(lambda: len(proxy.stored()) == 4 and spool_size(proxy.spool) == 0, 30, "spooled records replayed")
    time.sleep(0.5)
    assert proxy.stored() == first + spooled
    proxy.assert_no_canary_anywhere()


def test_kill_9_mid_answer_leaves_a_record_of_every_forwarded_prompt(proxy: Proxy) -> None:
    """Issue 12: the record is written at decision time, so a proxy killed while answers stream
    leaves every prompt that reached the app recorded (pending: the answer never ended)."""
    proxy.start()
    done = _conversations("done", 1)
    proxy.send(done[0])
    streaming = _conversations("midstream", 4)
    clients = [proxy.send_slow(c, delay_s=30) for c in streaming]
    try:
        wait_for(lambda: proxy.forwarded() >= set(streaming), 30, "every prompt forwarded to the app")
        time.sleep(0.3)
        proxy.kill9()  # every answer is still streaming
    finally:
        for c in clients:
            c.kill()
            c.wait()
    proxy.start()  # replays whatever was spooled
    wait_for(lambda: set(streaming) <= set(proxy.stored()), 30, "a record of every forwarded prompt")
    status = proxy.answer_status()
    assert all(status[c] == "pending" for c in streaming), status
    assert status[done[0]] == "complete"
    assert len(proxy.stored()) == len(set(proxy.stored())) == 5
    proxy.assert_no_canary_anywhere()
