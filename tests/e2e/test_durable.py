"""
Issue 13, durable history, on real `twistd sse --history-db` processes: a
client resumes across a restart (SIGTERM) and a crash (SIGKILL) with the id
of any event in the file, gets exactly the events after it and no
`sse.reset`; every publish answered 200 survives a SIGKILL; a file that
cannot be used stops the server at start with one line and status 1.
"""

from __future__ import annotations

import signal
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sse_twisted.parser import EventStreamParser, MessageEvent

from ..support.processes import LISTENING, Process, RawSubscriber, SSEServer
from .test_startup import refused, run

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

#: `twistd` whose every commit first sleeps (a slow disk): a 200 answered
#: before its commit would then be killed before the commit, every time.
SLOW_COMMIT = """
import sys, time
from sse_twisted import durable
delay = float(sys.argv.pop(1))
write = durable._File.write
def slow(self, batch, now):
    time.sleep(delay)
    return write(self, batch, now)
durable._File.write = slow
from twisted.scripts.twistd import run
sys.argv[0] = "twistd"
run()
"""


class Server(SSEServer):
    """`twistd -n sse` on a free port, optionally through the slow-commit wrapper."""

    def __init__(self, *args: str, slow: float | None = None) -> None:
        if slow is None:
            super().__init__("--heartbeat", "0", *args)
            return
        where = "tcp:0:interface=127.0.0.1"
        argv = [sys.executable, "-c", SLOW_COMMIT, str(slow), "-n", "--pidfile=", "sse"]
        Process.__init__(
            self,
            [*argv, "--port", where, "--heartbeat", "0", *args],
            env={"PYTHONUNBUFFERED": "1"},
        )
        try:
            self.port = int(self.read_until(LISTENING).group(1))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.host = "127.0.0.1"


@pytest.fixture
def servers() -> Iterator[Callable[..., Server]]:
    """Start servers; each is killed at the end if still running."""
    started: list[Server] = []

    def start(*args: str, slow: float | None = None) -> Server:
        srv = Server(*args, slow=slow)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGKILL)


def events(sub: RawSubscriber) -> list[MessageEvent]:
    return EventStreamParser().feed(sub.body())


def resume(srv: Server, last_id: str, marker: str) -> list[MessageEvent]:
    """
    Resume from `last_id` on channels c and d, then publish an event on the
    channel `marker` (which no other resume reads): what the client got before
    it (the replay; the marker is live).
    """
    path = f"/events?channel=c&channel=d&channel={marker}"
    sub = RawSubscriber(srv, path, headers={"Last-Event-ID": last_id})
    try:
        sub.read_until(b": connected\n")
        srv.publish(marker, "marker", marker)
        deadline = time.monotonic() + 10
        while not any(e.data == f'"{marker}"' for e in events(sub)):
            left = deadline - time.monotonic()
            assert left > 0, f"marker not received; got {events(sub)}"
            sub.sock.settimeout(left)
            chunk = sub.sock.recv(65536)
            assert chunk, "closed before the marker"
            sub.data += chunk
        got = events(sub)
    finally:
        sub.close()
    assert got[-1].data == f'"{marker}"'
    return got[:-1]


def publish_all(srv: Server, count: int) -> tuple[list[str], list[str]]:
    """
    Publish about `count` events (singles and batches, channels c and d),
    each answered 200: their ids and data, in order.
    """
    ids: list[str] = []
    n = 0
    while n < count:
        if n % 3 == 2:
            items = [{"channel": "c" if k % 2 else "d", "data": n + k} for k in range(4)]
            status, _, answer = srv.request("POST", "/publish", items)
            assert status == 200, answer
            ids += [a["id"] for a in answer]
            n += 4
        else:
            ids.append(srv.publish("c", "e", n)["id"])
            n += 1
    return ids, [str(k) for k in range(n)]


def check_resumes(srv: Server, ids: list[str], data: list[str]) -> None:
    """From several ids (first, middle, last), exactly the rest in order, and no reset."""
    for k, index in enumerate((0, 1, len(ids) // 2, len(ids) - 2, len(ids) - 1)):
        got = resume(srv, ids[index], f"m{k}")
        assert [e.type for e in got if e.type.startswith("sse.")] == []
        assert [e.last_event_id for e in got] == ids[index + 1 :]
        assert [e.data for e in got] == data[index + 1 :]


def test_resume_after_sigterm(servers: Callable[..., Server], tmp_path: Path) -> None:
    """
    After SIGTERM and a restart on the same file, a client resuming with any
    id gets exactly the events after it, in order, with no `sse.reset`.
    """
    db = str(tmp_path / "h.db")
    srv = servers("--history-db", db)
    ids, data = publish_all(srv, 20)
    assert srv.stop(signal.SIGTERM) == -signal.SIGTERM
    assert "Traceback" not in srv.output()
    again = servers("--history-db", db)
    check_resumes(again, ids, data)


def test_acknowledged_survive_sigkill(servers: Callable[..., Server], tmp_path: Path) -> None:
    """Every publish answered 200 survives a SIGKILL right after the last answer."""
    db = str(tmp_path / "h.db")
    srv = servers("--history-db", db)
    ids, _ = publish_all(srv, 40)
    srv.stop(signal.SIGKILL)
    with sqlite3.connect(db) as conn:
        stored = [row[0] for row in conn.execute("SELECT id FROM sse_events ORDER BY seq")]
    assert stored == ids
    again = servers("--history-db", db)
    got = resume(again, ids[0], "after")
    assert [e.last_event_id for e in got] == ids[1:]


def test_acknowledged_survive_sigkill_slow_disk(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    """
    With every commit taking 0.3 s, publishes answered 200 and then a SIGKILL
    at once still lose nothing: the answer waits for the commit (were it
    sent before, the kill would land during the commit, every time).
    """
    db = str(tmp_path / "h.db")
    srv = servers("--history-db", db, slow=0.3)
    first = srv.publish("c", "e", 0)["id"]
    status, _, answer = srv.request(
        "POST", "/publish", [{"channel": "c", "data": n} for n in (1, 2)]
    )
    assert status == 200
    last = srv.publish("c", "e", 3)["id"]
    srv.stop(signal.SIGKILL)
    again = servers("--history-db", db)
    got = resume(again, first, "after")
    assert [e.last_event_id for e in got] == [answer[0]["id"], answer[1]["id"], last]
    assert [e.data for e in got] == ["1", "2", "3"]


def test_live_delivery_does_not_wait_for_the_disk(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    """
    A live subscriber gets an event while its publisher still waits for the
    (slow, 2 s) commit; the publisher's 200 comes after the commit.
    """
    srv = servers("--history-db", str(tmp_path / "h.db"), slow=2.0)
    sub = RawSubscriber(srv)
    sub.read_until(b": connected\n")
    answers: list[float] = []
    started = time.monotonic()
    publisher = threading.Thread(
        target=lambda: answers.append((srv.publish("c", "e", "x"), time.monotonic())[1])
    )
    publisher.start()
    try:
        sub.read_until(b'data: "x"', timeout=10)
        received = time.monotonic()
        assert answers == [], "the subscriber waited for the commit"
    finally:
        publisher.join(15)
        sub.close()
    assert len(answers) == 1
    assert received - started < 2.0 <= answers[0] - started


# --- refused at start ---------------------------------------------------------


def test_newer_schema_stops_the_start(tmp_path: Path) -> None:
    """A file of a newer schema version: exit 1, one line, the file untouched."""
    db = tmp_path / "h.db"
    with sqlite3.connect(db) as conn:
        conn.execute("PRAGMA user_version = 2")
    before = db.read_bytes()
    ended = run("--port", "tcp:0:interface=127.0.0.1", "--history-db", str(db))
    line = refused(ended, "history database")
    assert line.endswith(
        f"history database {db} has schema version 2, and this sse_twisted reads version 1 "
        "(written by a newer release?): use that release, or another file"
    )
    assert "listening on" not in ended.output
    assert db.read_bytes() == before


def test_unwritable_path_stops_the_start(tmp_path: Path) -> None:
    """A path that cannot be written (its folder is a file): exit 1, one line."""
    (tmp_path / "file").write_text("")
    db = tmp_path / "file" / "h.db"
    ended = run("--port", "tcp:0:interface=127.0.0.1", "--history-db", str(db))
    line = refused(ended, "history database")
    assert line.endswith(f"cannot open history database {db}: unable to open database file")
    assert "listening on" not in ended.output


def test_corrupt_file_stops_the_start(tmp_path: Path) -> None:
    """A file that is not SQLite: exit 1, one line, the file untouched."""
    db = tmp_path / "h.db"
    db.write_bytes(b"not a database" * 100)
    ended = run("--port", "tcp:0:interface=127.0.0.1", "--history-db", str(db))
    refused(ended, r"cannot use history database .*: file is not a database")
    assert db.read_bytes() == b"not a database" * 100


def test_with_redis_refused() -> None:
    """--history-db with --redis: one line at option time, exit 1."""
    ended = run("--history-db", "x.db", "--redis", "redis://127.0.0.1:1")
    refused(ended, "give --history-db or --redis, not both")


def test_idempotency_key_holds_across_a_sigkill(
    servers: Callable[..., Server], tmp_path: Path
) -> None:
    """
    With --history-db, a publish answered 200 for an Idempotency-Key is a
    duplicate (same id, nothing delivered) after a SIGKILL and a restart on
    the same file; the key's table lives beside the events and is opened at
    start, after the fork, not when the options are read.
    """
    db = str(tmp_path / "h.db")
    body = {"channel": "orders", "event": "created", "data": {"n": 1}}
    key = {"Idempotency-Key": "order-1"}
    srv = servers("--history-db", db)
    status, _, first = srv.request("POST", "/publish", body, key)
    assert status == 200 and "duplicate" not in first
    srv.stop(signal.SIGKILL)
    again = servers("--history-db", db)
    sub = RawSubscriber(again, "/events?channel=orders")
    sub.read_until(b": connected")
    status, _, repeat = again.request("POST", "/publish", body, key)
    assert (status, repeat) == (200, {"id": first["id"], "clients": 0, "duplicate": True})
    status, _, other = again.request("POST", "/publish", {**body, "data": {"n": 2}}, key)
    assert status == 409
    again.publish("orders", text="end")
    sub.read_until(b"data: end\n\n")
    assert [e.data for e in events(sub)] == ["end"]
