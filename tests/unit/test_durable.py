"""
L{SQLiteHistory}: the history in a real SQLite file (in C{tmp_path}), its
writer driven by hand so each commit happens when the test says.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.python.failure import Failure

from sse_twisted import SSEBroker
from sse_twisted.durable import (
    SCHEMA_VERSION,
    HistoryFileError,
    HistoryUnavailable,
    SQLiteHistory,
)
from sse_twisted.event import Event
from sse_twisted.tap import CannotOpenHistory, OpenHistory, Options, makeService

from ..support.conn import Conn, post, serve

pytestmark = pytest.mark.timeout(30)


class ManualRunner:
    """The writer thread, by hand: a job runs (in the test's thread) when the test says."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, job: Callable[[], Any]) -> Deferred[Any]:
        done: Deferred[Any] = Deferred()
        self.jobs.append((job, done))
        return done

    def run(self) -> None:
        """Run the oldest job (a commit that was blocked until now)."""
        job, done = self.jobs.pop(0)
        try:
            result = job()
        except BaseException:
            done.errback(Failure())
        else:
            done.callback(result)

    def run_all(self, most: int = 100) -> None:
        for _ in range(most):
            if not self.jobs:
                return
            self.run()
        raise AssertionError("jobs keep coming")


def ev(n: int, channel: str = "c") -> Event:
    return Event.create(channel, "e", n, id=f"p-{n}")


def rows(path: Path) -> list[tuple[str, float]]:
    """The ids (and times) in the file, in order, read by another connection."""
    with sqlite3.connect(path) as conn:
        return list(conn.execute("SELECT id, published FROM sse_events ORDER BY seq"))


def ids(events: list[Event] | None) -> list[str | None]:
    assert events is not None
    return [e.id for e in events]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "history.db"


def opened(db: Path, clock: Clock, runner: ManualRunner, **kw: Any) -> SQLiteHistory:
    return SQLiteHistory(db, reactor=clock, runner=runner, **kw)


def test_group_commit(db: Path, clock: Clock) -> None:
    """
    Events appended while a commit runs go in the next transaction together:
    one event, then four while the first commit blocks, make 2 transactions.
    """
    runner = ManualRunner()
    history = opened(db, clock, runner)
    history.append(ev(1))
    first = history.committed()
    clock.advance(0)
    assert len(runner.jobs) == 1
    for n in range(2, 6):
        history.append(ev(n))
    rest = history.committed()
    clock.advance(0)
    assert len(runner.jobs) == 1, "a second commit started while one runs"
    runner.run()
    assert first.called and not rest.called
    assert len(runner.jobs) == 1  # the four, at once
    runner.run()
    assert rest.called
    assert (history.commits, history.committed_events) == (2, 5)
    assert [r[0] for r in rows(db)] == [f"p-{n}" for n in range(1, 6)]
    assert runner.jobs == []


def test_one_turn_is_one_commit(db: Path, clock: Clock) -> None:
    """A batch appended in one reactor turn is one transaction."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    for n in range(1, 11):
        history.append(ev(n))
    clock.advance(0)
    runner.run_all()
    assert history.commits == 1 and len(rows(db)) == 10


def test_mirror_answers_before_commit(db: Path, clock: Clock) -> None:
    """Resumes are answered from the mirror at once, before the commit."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    for n in range(1, 4):
        history.append(ev(n))
    assert ids(history.since("p-1", None, 10)) == ["p-2", "p-3"]
    assert rows(db) == []
    assert not history.committed().called


def test_committed_at_once_when_nothing_pending(db: Path, clock: Clock) -> None:
    """With nothing appended (or all committed), committed() has fired already."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    assert history.committed().called
    history.append(ev(1))
    clock.advance(0)
    runner.run_all()
    assert history.committed().called


def test_reload_in_order(db: Path, clock: Clock) -> None:
    """
    Reopened, the file's events are the history again, in order: resuming
    from any of them gives exactly the events after it.
    """
    runner = ManualRunner()
    history = opened(db, clock, runner)
    for n in range(1, 8):
        history.append(ev(n, "a" if n % 2 else "b"))
    clock.advance(0)
    runner.run_all()
    again = opened(db, clock, ManualRunner())
    assert [e.id for e in again] == [f"p-{n}" for n in range(1, 8)]
    for n in range(1, 8):
        assert ids(again.since(f"p-{n}", None, 100)) == [f"p-{m}" for m in range(n + 1, 8)]
    assert ids(again.since("p-2", {"a"}, 100)) == ["p-3", "p-5", "p-7"]
    loaded = next(iter(again))
    assert loaded == ev(1, "a")  # every field, and the frame, as published


def test_reload_then_append_keeps_order(db: Path, clock: Clock) -> None:
    """Events appended after a reload follow the loaded ones, in the file too."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    history.append(ev(1))
    clock.advance(0)
    runner.run_all()
    again = opened(db, clock, runner)
    again.append(ev(2))
    clock.advance(0)
    runner.run_all()
    third = opened(db, clock, runner)
    assert ids(third.since("p-1", None, 10)) == ["p-2"]
    assert [r[0] for r in rows(db)] == ["p-1", "p-2"]


def test_trim_by_count(db: Path, clock: Clock) -> None:
    """The file keeps the newest C{size} events, as the mirror does."""
    runner = ManualRunner()
    history = opened(db, clock, runner, size=3)
    for n in range(1, 6):
        history.append(ev(n))
        clock.advance(0)
        runner.run_all()
    assert [r[0] for r in rows(db)] == ["p-3", "p-4", "p-5"]
    assert [e.id for e in history] == ["p-3", "p-4", "p-5"]


def test_smaller_size_on_reload(db: Path, clock: Clock) -> None:
    """Reopened with a smaller size, the older rows are loaded neither in memory nor kept."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    for n in range(1, 6):
        history.append(ev(n))
    clock.advance(0)
    runner.run_all()
    again = opened(db, clock, runner, size=2)
    assert [e.id for e in again] == ["p-4", "p-5"]
    assert [r[0] for r in rows(db)] == ["p-4", "p-5"]


def test_bytes_bound_on_reload(db: Path, clock: Clock) -> None:
    """The byte bound applies to what is loaded (the newest always kept)."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    for n in range(1, 6):
        history.append(ev(n))
    clock.advance(0)
    runner.run_all()
    size = len(ev(1).frame)
    again = opened(db, clock, runner, max_bytes=2 * size)
    assert [e.id for e in again] == ["p-4", "p-5"]
    tiny = opened(db, clock, runner, max_bytes=1)
    assert [e.id for e in tiny] == ["p-5"]


def test_ttl_counts_from_publish_after_reload(db: Path, clock: Clock) -> None:
    """
    The TTL counts from when an event was published, also after a reload:
    the stored time, not the time it was loaded.
    """
    start = clock.seconds()
    runner = ManualRunner()
    history = opened(db, clock, runner, ttl=10)
    history.append(ev(1))
    clock.advance(6)
    history.append(ev(2))
    clock.advance(0)
    runner.run_all()
    assert [r[1] for r in rows(db)] == [start, start + 6]
    later = Clock()
    later.advance(start + 8)
    again = opened(db, later, runner, ttl=10)
    assert [e.id for e in again] == ["p-1", "p-2"]
    later.advance(2.5)  # 10.5 s after p-1, 4.5 s after p-2
    assert [e.id for e in again] == ["p-2"]
    assert again.since("p-1", None, 10) is None
    after = Clock()
    after.advance(start + 12)
    assert [e.id for e in opened(db, after, runner, ttl=10)] == ["p-2"]


def test_ttl_trims_the_file(db: Path, clock: Clock) -> None:
    """Expired rows leave the file with the next commit."""
    runner = ManualRunner()
    history = opened(db, clock, runner, ttl=10)
    history.append(ev(1))
    clock.advance(0)
    runner.run_all()
    clock.advance(11)
    history.append(ev(2))
    clock.advance(0)
    runner.run_all()
    assert [r[0] for r in rows(db)] == ["p-2"]


def test_clear_empties_the_file(db: Path, clock: Clock) -> None:
    """clear() forgets the file's rows too, in order with the events around it."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    history.append(ev(1))
    history.clear()
    history.append(ev(2))
    clock.advance(0)
    runner.run_all()
    assert [r[0] for r in rows(db)] == ["p-2"]


# --- files that are refused ---------------------------------------------------


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, -1])
def test_newer_schema_refused(db: Path, clock: Clock, version: int) -> None:
    """A file of a newer (or unknown) schema version is refused, and left as it was."""
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {version}")
    with pytest.raises(HistoryFileError) as e:
        opened(db, clock, ManualRunner())
    assert str(e.value) == (
        f"history database {db} has schema version {version}, and this sse_twisted reads "
        f"version {SCHEMA_VERSION} (written by a newer release?): use that release, or "
        "another file"
    )
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (version,)
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == []


def test_unknown_tables_accepted(db: Path, clock: Clock) -> None:
    """Tables of others in the same file (an idempotency table) are no reason to refuse."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS idempotency (key TEXT PRIMARY KEY)")
    runner = ManualRunner()
    history = opened(db, clock, runner)
    history.append(ev(1))
    clock.advance(0)
    runner.run_all()
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert opened(db, clock, runner).since("p-1", None, 1) == []


def test_foreign_events_table_refused(db: Path, clock: Clock) -> None:
    """A version-0 file whose sse_events table is not ours is refused, not misread."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE sse_events (x)")
    with pytest.raises(HistoryFileError, match="has a table sse_events that is not"):
        opened(db, clock, ManualRunner())


def test_corrupt_file_refused(db: Path, clock: Clock) -> None:
    """A file that is not SQLite is refused in one line, and not overwritten."""
    garbage = bytes(range(256)) * 16
    db.write_bytes(garbage)
    with pytest.raises(HistoryFileError) as e:
        opened(db, clock, ManualRunner())
    assert str(e.value) == (
        f"cannot use history database {db}: file is not a database (corrupt, or not a SQLite file)"
    )
    assert db.read_bytes() == garbage


def test_directory_and_missing_folder_refused(tmp_path: Path, clock: Clock) -> None:
    """A directory, or a path whose folder does not exist, is refused in one line."""
    with pytest.raises(HistoryFileError, match=r"is a directory; give a file.s path$"):
        opened(tmp_path, clock, ManualRunner())
    missing = tmp_path / "no" / "such.db"
    with pytest.raises(HistoryFileError, match=r"unable to open database file$"):
        opened(missing, clock, ManualRunner())


# --- a write that fails -------------------------------------------------------


def fill_the_disk(history: SQLiteHistory) -> None:
    """Make the file full for the writer's connection (SQLITE_FULL, as a full disk)."""
    conn = history._file.conn  # type: ignore[union-attr]  # the test reaches into the writer
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")


def test_failure_propagates(db: Path, clock: Clock) -> None:
    """
    A failed commit is not silent: waiting Deferreds fail, it is logged, and
    every later append and committed() fails rather than pretend.
    """
    runner = ManualRunner()
    history = opened(db, clock, runner)
    fill_the_disk(history)
    for n in range(1, 200):
        history.append(Event.create("c", None, "x" * 1000, id=f"p-{n}"))
    waiting = history.committed()
    clock.advance(0)
    with capturedLogs() as logs:
        runner.run()
    errors: list[Failure] = []
    waiting.addErrback(errors.append)
    assert len(errors) == 1 and errors[0].check(HistoryUnavailable)
    assert "database or disk is full" in str(errors[0].value)
    assert any(e.get("log_failure") is not None for e in logs), logs
    with pytest.raises(HistoryUnavailable, match="nothing is published until the server restarts"):
        history.append(ev(500))
    later: list[Failure] = []
    history.committed().addErrback(later.append)
    assert len(later) == 1 and later[0].check(HistoryUnavailable)
    assert runner.jobs == [] and clock.getDelayedCalls() == []
    assert rows(db) == []


def test_broker_publish_fails_after_write_failure(db: Path, clock: Clock) -> None:
    """
    Over HTTP: the publish whose commit failed is answered 503, later
    publishes are refused (503) and delivered to no one, and /health says
    503 so a load balancer sends publishers elsewhere.
    """
    runner = ManualRunner()
    history = opened(db, clock, runner)
    _, site = serve(clock, history=history)
    sub = Conn(site, b"/events")
    fill_the_disk(history)
    first = post(site, [{"channel": "c", "data": "x" * 1000} for _ in range(200)])
    clock.advance(0)
    assert first.raw() == b""
    with capturedLogs():
        runner.run()
    assert first.status == 503
    assert first.json()["error"].startswith("not committed: writing the history database")
    seen = len(sub.events())
    assert seen == 200  # delivered live at once; only the answer waited
    second = post(site, {"channel": "c", "data": 1})
    assert second.status == 503
    assert "nothing is published" in second.json()["error"]
    assert len(sub.events()) == seen
    health = Conn(site, b"/health")
    assert health.status == 503
    assert health.json() == {"status": "unavailable", "reason": "writing the history failed"}


# --- over HTTP, and in the broker ------------------------------------------------


def test_post_answered_after_commit(db: Path, clock: Clock) -> None:
    """
    POST /publish answers 200 only once its events are committed; live
    subscribers have them before that, without waiting for the disk.
    """
    runner = ManualRunner()
    history = opened(db, clock, runner)
    broker, site = serve(clock, history=history)
    sub = Conn(site, b"/events")
    req = post(site, [{"channel": "c", "data": 1}, {"channel": "c", "data": 2}])
    assert [e.data for e in sub.events()] == ["1", "2"]
    assert req.raw() == b""
    clock.advance(0)
    assert req.raw() == b""
    runner.run()
    assert req.status == 200
    assert [a["id"] for a in req.json()] == ["t-1", "t-2"]
    assert [r[0] for r in rows(db)] == ["t-1", "t-2"]
    assert broker.durable


def test_broker_committed(db: Path, clock: Clock) -> None:
    """broker.committed() waits for a durable history; with the memory one it has fired."""
    runner = ManualRunner()
    broker = SSEBroker(reactor=clock, history=opened(db, clock, runner))
    event = broker.publish("c", "e", 1)
    assert isinstance(event, Event)  # publish() answers as it always did
    done = broker.committed()
    clock.advance(0)
    assert not done.called
    runner.run()
    assert done.called
    memory = SSEBroker(reactor=clock)
    assert not memory.durable and memory.committed().called


def test_stop_service_closes_the_history(db: Path, clock: Clock) -> None:
    """The broker's stop drains, then commits what is pending and closes the file."""
    runner = ManualRunner()
    history = opened(db, clock, runner)
    broker = SSEBroker(reactor=clock, history=history)
    broker.startService()
    broker.publish("c", "e", 1)
    stopped = broker.stopService()
    clock.advance(1)
    runner.run_all()
    assert stopped.called
    assert len(rows(db)) == 1
    with pytest.raises(HistoryUnavailable, match="is closed"):
        history.append(ev(2))
    assert clock.getDelayedCalls() == []


# --- the real writer thread ------------------------------------------------------


class ThreadedClock(Clock):
    """A Clock that also takes calls from other threads, run when the test pumps them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...]]]
        self.from_threads = queue.SimpleQueue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.from_threads.put((f, args))

    def take_call(self) -> None:
        f, args = self.from_threads.get(timeout=10)
        f(*args)


def test_writer_thread_commits_and_closes(db: Path) -> None:
    """With the real writer thread: commits land, close() ends the thread and the file."""
    clock = ThreadedClock()
    history = SQLiteHistory(db, reactor=clock)
    for n in range(1, 4):
        history.append(ev(n))
    done = history.committed()
    clock.advance(0)
    history.append(ev(4))  # while the first commit may run
    clock.advance(0)
    while not done.called:
        clock.take_call()
    closed = history.close()
    while not closed.called:
        clock.take_call()
    assert [r[0] for r in rows(db)] == ["p-1", "p-2", "p-3", "p-4"]
    assert history.commits == 2
    writers = [t for t in threading.enumerate() if t.name.endswith(str(db))]
    for thread in writers:
        thread.join(5)
        assert not thread.is_alive()


# --- twistd sse --history-db ----------------------------------------------------


def test_option_with_redis_refused() -> None:
    """--history-db with --redis is refused at option time (Redis keeps the history)."""
    with pytest.raises(usage.UsageError, match="give --history-db or --redis, not both"):
        Options().parseOptions(["--history-db", "x.db", "--redis", "redis://localhost"])


def test_option_needs_a_history() -> None:
    """--history-db with --history 0, or an empty path, is refused at option time."""
    with pytest.raises(usage.UsageError, match="needs a history"):
        Options().parseOptions(["--history-db", "x.db", "--history", "0"])
    with pytest.raises(usage.UsageError, match="must not be empty"):
        Options().parseOptions(["--history-db", ""])


def test_make_service_opens_at_start(tmp_path: Path) -> None:
    """
    makeService does not touch the file (twistd may fork after it); the
    service opens it as it starts, before binding, with the options' bounds.
    """
    path = tmp_path / "h.db"
    options = Options()
    options.parseOptions(
        ["--port", "tcp:0:interface=127.0.0.1", "--history-db", str(path), "--history", "7"]
    )
    service: Any = makeService(options)
    history = service.broker.history
    assert isinstance(history, SQLiteHistory) and history.size == 7
    assert not path.exists()
    first = next(iter(service))
    assert isinstance(first, OpenHistory)
    first.privilegedStartService()
    assert path.exists()
    history.close()


def test_make_service_unusable_file(tmp_path: Path) -> None:
    """A file that cannot be used ends the start: one critical line, exit code 1."""
    path = tmp_path / "h.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version = 2")
    options = Options()
    options.parseOptions(["--history-db", str(path)])
    service: Any = makeService(options)
    with capturedLogs() as logs, pytest.raises(CannotOpenHistory) as e:
        service.privilegedStartService()
    assert e.value.code == 1
    assert str(e.value).startswith(f"history database {path} has schema version 2")
    assert [log["message"] for log in logs if log.get("message")] == [str(e.value)]


def test_metrics_count_commits(db: Path, clock: Clock) -> None:
    """/metrics counts the transactions and the events committed (events per group commit)."""
    runner = ManualRunner()
    _, site = serve(clock, history=opened(db, clock, runner))
    post(site, [{"channel": "c", "data": n} for n in range(3)])
    clock.advance(0)
    runner.run_all()
    text = Conn(site, b"/metrics").raw().decode()
    assert "\nsse_history_commits_total 1.0\n" in text
    assert "\nsse_history_committed_events_total 3.0\n" in text
