"""``promptfence bench logs``: a soak of the recorder under ``kill -9`` and database outages.

Each backend gets a fresh database (a SQLite file, or a new schema in the given PostgreSQL
database). A pre-imported *zygote* process forks one recorder child per cycle (so a cycle costs
no interpreter start): the child runs :class:`~logs.recorder.AsyncRecorder` exactly as the proxy
builds it, with several concurrent "flows" that each ``record()`` a pending record (the decision),
wait a moment (the answer streaming), then ``complete()`` it, appending an acknowledgement line
to a file after each call returns. The parent SIGKILLs the child at a random moment; on some
cycles it first takes the database away: SQLite is locked by an exclusive transaction, PostgreSQL
sits behind a TCP relay that either refuses connections or black-holes them (accepts, forwards
nothing). After the last cycle a final child starts normally (replaying the spool) and stops
cleanly, and the parent counts:

- acknowledged: records whose ``record()`` returned (the proxy would have forwarded the prompt);
- recorded / lost: acknowledged records in the database / missing from it;
- duplicated: rows sharing a record id (the schema forbids it; counted anyway);
- answers lost: completions acknowledged but stored as pending.

No prompt text is printed; records carry synthetic prompts only.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

NAMESPACE = uuid.UUID("5b3c9c52-52c7-4a4e-9a43-2f0d5d1c6b11")


# -- the child: a recorder that runs until it is killed -----------------------------------------


def _record(index: int, run_id: str, status: str, answer: str | None) -> Any:
    from promptfence.core import (
        Action,
        Decision,
        DetectorRun,
        DetectorStatus,
        Identity,
        Inspection,
        LogRecord,
        Operation,
        OperationKind,
        Payload,
    )

    prompt = f"soak prompt {index} " + "lorem ipsum " * 20
    op = Operation(
        "chatgpt",
        "genai_chat",
        "chatgpt.send_prompt",
        OperationKind.SEND_PROMPT,
        Identity(f"user{index % 17}@example.com", ("eng",)),
        prompt=prompt,
        conversation_id=f"soak-{index % 50}",
    )
    return LogRecord(
        str(uuid.uuid5(NAMESPACE, f"{run_id}-{index}")),
        time.time(),
        op,
        Inspection((), {}, (DetectorRun("bench", DetectorStatus.OK, 0.1),), elapsed_ms=0.2),
        Decision(Action.ALLOW, (), "default", reason="bench"),
        Payload(prompt, answer),
        response_bytes=0 if answer is None else len(answer),
        answer_status=status,
    )


def _child_main(spec: dict[str, Any]) -> None:
    """Run the recorder with ``spec['flows']`` concurrent flows until killed (or ``spec['final']``)."""
    import logging

    from logs.recorder import AsyncRecorder, SpoolingWriter
    from logs.spool import Spool
    from logs.store import LogStore, Recipient, load_or_create_digest_key
    from promptfence.errors import RecordNotDurable

    logging.basicConfig(filename=spec["log"], level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    store = LogStore(
        spec["url"],
        [Recipient.from_file(Path(spec["public_key"]))],
        digest_key=load_or_create_digest_key(Path(spec["digest_key"])),
        timeout_s=spec["db_timeout_s"],
    )
    writer = SpoolingWriter(
        store, Spool(Path(spec["spool"])), retry_interval_s=spec["retry_interval_s"], db_timeout_s=spec["db_timeout_s"]
    )
    recorder = AsyncRecorder(writer)
    acks = os.open(spec["acks"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    counter = iter(range(spec["start"], 10**9))
    rng = random.Random(spec["start"])

    async def flow() -> None:
        while True:
            index = next(counter)
            pending = _record(index, spec["run_id"], "pending", None)
            started = time.perf_counter()
            try:
                await recorder.record(pending)
            except RecordNotDurable:
                os.write(acks, f"R {pending.record_id}\n".encode())
                continue
            os.write(acks, f"P {pending.record_id} {(time.perf_counter() - started) * 1000:.1f}\n".encode())
            await asyncio.sleep(rng.uniform(0.0, 0.02))
            done = dataclasses.replace(
                pending, payload=dataclasses.replace(pending.payload, response="soak answer"), answer_status="complete"
            )
            await recorder.complete(done)
            os.write(acks, f"C {pending.record_id}\n".encode())

    async def final() -> None:
        deadline = time.monotonic() + 120
        while (writer.spool.pending() or writer.database_down) and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def main() -> None:
        if spec.get("final"):
            await final()
            return
        await asyncio.gather(*(flow() for _ in range(spec["flows"])))

    asyncio.run(main())
    recorder.close()


def zygote() -> None:
    """Read one JSON spec per stdin line, fork a child for it, print the child's pid."""
    import logs.recorder
    import logs.store  # noqa: F401

    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped automatically
    for line in sys.stdin:
        spec = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 0
            try:
                _child_main(spec)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        print(pid, flush=True)


# -- outages --------------------------------------------------------------------------------------


class Relay:
    """A TCP relay to PostgreSQL: forwarding, refusing (connections closed at once), or a black hole."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.listener.getsockname()[1])
        self.mode = "forward"
        self._lock = threading.Lock()
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def set(self, mode: str) -> None:
        self.mode = mode
        if mode == "refuse":
            with self._lock:
                for s in self._conns:
                    with suppress(OSError):
                        s.shutdown(socket.SHUT_RDWR)
                self._conns.clear()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.mode == "refuse":
                client.close()
                continue
            with self._lock:
                self._conns.append(client)
            if self.mode == "blackhole":
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            # The timeout was for the dial only: an idle pooled connection must not be cut after
            # five quiet seconds (that would be an outage the benchmark did not ask for).
            upstream.settimeout(None)
            with self._lock:
                self._conns.append(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while self.mode == "blackhole":
                    time.sleep(0.05)
                if self.mode == "refuse":
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self.set("refuse")
        self.listener.close()


@contextmanager
def _sqlite_locked(path: Path) -> Iterator[None]:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN EXCLUSIVE")
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


# -- the parent -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Backend:
    name: str
    url: str  # what the children use
    verify_url: str  # what the parent counts with (no relay)
    outage: Callable[[str], Any]  # mode -> context manager
    modes: tuple[str, ...]
    cleanup: Callable[[], None]


def _sqlite_backend(root: Path) -> Backend:
    path = root / "logs.db"
    url = f"sqlite:///{path}"

    @contextmanager
    def outage(_mode: str) -> Iterator[None]:
        with _sqlite_locked(path):
            yield

    return Backend("sqlite", url, url, outage, ("locked",), lambda: None)


def _pg_backend(pg_url: str) -> Backend:
    import psycopg
    from sqlalchemy.engine import make_url

    parsed = make_url(pg_url)
    dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
    schema = f"pf_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    relay = Relay((parsed.host or "127.0.0.1", parsed.port or 5432))
    verify = parsed.update_query_dict({"options": f"-csearch_path={schema}"})
    via_relay = verify.set(host="127.0.0.1", port=relay.port)

    @contextmanager
    def outage(mode: str) -> Iterator[None]:
        relay.set(mode)
        try:
            yield
        finally:
            relay.set("forward")

    def cleanup() -> None:
        relay.close()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    return Backend(
        "postgresql",
        via_relay.render_as_string(hide_password=False),
        verify.render_as_string(hide_password=False),
        outage,
        ("refuse", "blackhole"),
        cleanup,
    )


def _read_acks(path: Path) -> list[list[str]]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    # A line cut by the kill has no newline yet: it was never acknowledged.
    return [line.split() for line in text.splitlines(keepends=True) if line.endswith("\n")]


def _wait_dead(pid: int) -> None:
    for _ in range(500):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


def soak(
    backend: Backend,
    root: Path,
    *,
    cycles: int,
    flows: int,
    outage_share: float,
    min_run_s: float,
    max_run_s: float,
    db_timeout_s: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    from logs.sealing import KeyPair, write_key_pair
    from logs.store import LogStore

    rng = random.Random(seed)
    write_key_pair(KeyPair.generate(), root / "admin.key", root / "admin.pub")
    base = {
        "url": backend.url,
        "public_key": str(root / "admin.pub"),
        "digest_key": str(root / "keys" / "log-digest.key"),
        "spool": str(root / "spool" / "logs.spool"),
        "db_timeout_s": db_timeout_s,
        "retry_interval_s": 0.5,
        "flows": flows,
        "run_id": uuid.uuid4().hex,
        "log": str(root / "children.log"),
    }
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1]), *sys.path])}
    zyg = subprocess.Popen(
        [sys.executable, "-c", "from logs.bench import zygote; zygote()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert zyg.stdin is not None and zyg.stdout is not None
    outages: dict[str, int] = {}
    started = time.monotonic()
    next_index = 0
    acks: list[list[str]] = []

    def fork(spec: dict[str, Any]) -> int:
        assert zyg.stdin is not None and zyg.stdout is not None
        zyg.stdin.write(json.dumps(spec) + "\n")
        zyg.stdin.flush()
        return int(zyg.stdout.readline())

    try:
        for cycle in range(cycles):
            ack_file = root / f"acks-{cycle}.txt"
            pid = fork({**base, "start": next_index, "acks": str(ack_file)})
            run_s = rng.uniform(min_run_s, max_run_s)
            if rng.random() < outage_share:
                mode = rng.choice(backend.modes)
                outages[mode] = outages.get(mode, 0) + 1
                before = rng.uniform(0.0, run_s)
                time.sleep(before)
                with backend.outage(mode):
                    time.sleep(run_s - before + rng.uniform(0.0, 1.0))
                    os.kill(pid, signal.SIGKILL)  # killed during the outage
                    _wait_dead(pid)
            else:
                time.sleep(run_s)
                os.kill(pid, signal.SIGKILL)
                _wait_dead(pid)
            cycle_acks = _read_acks(ack_file)
            acks.extend(cycle_acks)
            next_index += 1_000_000  # fresh ids per cycle, however many the child wrote
            if progress and (cycle + 1) % 10 == 0:
                progress(
                    f"{backend.name}: {cycle + 1}/{cycles} kill cycles, {sum(a[0] == 'P' for a in acks)} acknowledged"
                )
        final_acks = root / "acks-final.txt"
        pid = fork({**base, "start": next_index, "acks": str(final_acks), "final": True})
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
    finally:
        zyg.stdin.close()
        zyg.wait(timeout=30)
    elapsed = time.monotonic() - started

    acknowledged = {a[1] for a in acks if a[0] == "P"}
    completed = {a[1] for a in acks if a[0] == "C"}
    refused = sum(1 for a in acks if a[0] == "R")
    latencies = sorted(float(a[2]) for a in acks if a[0] == "P")
    store = LogStore(backend.verify_url)
    try:
        from sqlalchemy import select

        from logs.models import RecordRow

        with store.engine.connect() as conn:
            rows = list(conn.execute(select(RecordRow.record_id, RecordRow.answer_status)))
    finally:
        store.close()
    stored = {rid: status for rid, status in rows}
    spool_file = root / "spool" / "logs.spool"
    spool_left = spool_file.stat().st_size if spool_file.exists() else 0

    def pct(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else 0.0

    return {
        "backend": backend.name,
        "kill_cycles": cycles,
        "outages": outages,
        "elapsed_s": round(elapsed, 1),
        "acknowledged": len(acknowledged),
        "recorded": len(acknowledged & set(stored)),
        "lost": len(acknowledged - set(stored)),
        "duplicated": len(rows) - len(stored),
        "rows": len(rows),
        "completions_acknowledged": len(completed),
        "answers_lost": sum(1 for rid in completed if stored.get(rid) == "pending"),
        "pending_left": sum(1 for s in stored.values() if s == "pending"),
        "refused": refused,
        "spool_bytes_left": spool_left,
        "record_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": latencies[-1] if latencies else 0.0},
    }


def run_bench(
    backends: list[str],
    *,
    pg_url: str,
    cycles: int,
    flows: int,
    outage_share: float,
    min_run_s: float,
    max_run_s: float,
    db_timeout_s: float,
    seed: int,
    progress: Callable[[str], None] | None = None,
) -> list[dict[str, Any]]:
    results = []
    for name in backends:
        with tempfile.TemporaryDirectory(prefix=f"pf-bench-logs-{name}-") as tmp:
            root = Path(tmp)
            if name == "sqlite":
                backend = _sqlite_backend(root)
            elif name == "postgresql":
                try:
                    backend = _pg_backend(pg_url)
                except Exception as exc:
                    results.append({"backend": name, "skipped": f"PostgreSQL not reachable ({type(exc).__name__})"})
                    continue
            else:
                raise ValueError(f"unknown backend {name!r} (expected sqlite or postgresql)")
            try:
                results.append(
                    soak(
                        backend,
                        root,
                        cycles=cycles,
                        flows=flows,
                        outage_share=outage_share,
                        min_run_s=min_run_s,
                        max_run_s=max_run_s,
                        db_timeout_s=db_timeout_s,
                        seed=seed,
                        progress=progress,
                    )
                )
            finally:
                backend.cleanup()
    return results
