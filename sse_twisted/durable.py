"""
L{SQLiteHistory}: the event history kept in a SQLite file, so that a client
resumes across a restart or a crash of the server.

The broker's lookups stay synchronous (see L{sse_twisted.history}): the
history is a L{MemoryHistory} (the mirror) that also writes every appended
event to the file. Writing never blocks the reactor thread:

  - one writer thread owns the connection for its whole life and runs one
    job at a time (a transaction, or the final close);
  - the reactor thread collects the events appended since the last job
    started, and hands them over as one transaction when the writer is free
    (group commit): at most one commit runs at a time, and everything that
    arrives while it runs goes in the next one, so a burst of N events costs
    a couple of fsyncs, not N;
  - the same transaction trims the file by count, bytes and age exactly as
    the mirror trims itself, so the file holds what the mirror holds.

L{SQLiteHistory.committed} says when what was appended so far is on disk
(C{POST /publish} answers only then). A write that fails is never silent:
the waiting Deferreds fail, it is logged, and every later append raises
L{HistoryUnavailable}, so publishers see the failure instead of a success
that would not survive a restart.

Why a thread of our own rather than C{twisted.enterprise.adbapi}: adbapi's
pool only starts once the reactor runs, closes itself in the reactor's
"during shutdown" phase (racing the final commit of L{SQLiteHistory.close}),
and is built around reconnecting to a database server; here one connection is
opened (and the file checked) synchronously at start, then lives in one
thread, and closes exactly when the broker is done with it. The thread is a
daemon, so an application that never calls C{close} does not hang at exit
(what it had not yet seen committed may then be lost, as after a crash).
"""

from __future__ import annotations

import contextlib
import os
import queue
import sqlite3
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from .event import Event
from .history import DEFAULT_HISTORY_BYTES, MemoryHistory

__all__ = ["SCHEMA_VERSION", "HistoryFileError", "HistoryUnavailable", "SQLiteHistory"]

#: The version of the file's layout this module reads and writes, kept in
#: C{PRAGMA user_version}. A file with a higher (or negative) one is refused.
SCHEMA_VERSION = 1

_T = TypeVar("_T")

#: Runs a job in the writer thread; the Deferred fires in the reactor thread.
Runner = Callable[[Callable[[], _T]], "Deferred[_T]"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sse_events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    channel TEXT NOT NULL,
    event TEXT,
    retry INTEGER,
    frame BLOB NOT NULL,
    published REAL NOT NULL
)
"""
_COLUMNS = ("seq", "id", "channel", "event", "retry", "frame", "published")
_INSERT = (
    "INSERT INTO sse_events (seq, id, channel, event, retry, frame, published)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)

# What the reactor thread hands the writer: an event and when it was
# published, or _CLEAR (forget every row, in order with the events).
_Row = tuple[Event, float]
_CLEAR = None


class HistoryFileError(Exception):
    """
    The history's file cannot be used (a directory, not a database, from a
    newer version, not writable): the message says which file and why, in
    one line.
    """


class HistoryUnavailable(RuntimeError):
    """
    The durable history cannot take events any more: a write failed (the
    disk is full, the file went away) or it was closed. Nothing is published;
    restart the server once the file can be written.
    """


class _WriterThread:
    """One daemon thread that runs jobs in order; each answers in the reactor thread."""

    def __init__(self, reactor: Any, name: str) -> None:
        self._reactor = reactor
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Deferred[Any]] | None]
        self._jobs = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def __call__(self, job: Callable[[], _T]) -> Deferred[_T]:
        done: Deferred[_T] = Deferred()
        self._jobs.put((job, done))
        return done

    def stop(self) -> None:
        """Let the thread end once the jobs already queued have run."""
        self._jobs.put(None)

    def _work(self) -> None:
        call = self._reactor.callFromThread
        while (taken := self._jobs.get()) is not None:
            job, done = taken
            try:
                result = job()
            except BaseException:
                call(done.errback, Failure())
            else:
                call(done.callback, result)


class _File:
    """
    The file's side, used by one thread at a time: the opening thread, then
    the writer thread. Knows the rows the file holds (sequence number, time,
    size) so that it trims them as the mirror trims itself, without a query.
    """

    def __init__(
        self, conn: sqlite3.Connection, size: int, ttl: float, max_bytes: int, next_seq: int
    ) -> None:
        self.conn = conn
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        self.next_seq = next_seq
        self.rows: deque[tuple[int, float, int]] = deque()
        self.bytes = 0

    def keep(self, seq: int, published: float, size: int) -> None:
        self.rows.append((seq, published, size))
        self.bytes += size

    def cutoff(self, now: float) -> int | None:
        """Forget the rows the mirror forgets; the last sequence number to delete."""
        rows = self.rows
        cut: int | None = None
        while rows and (
            len(rows) > self.size
            or (self.max_bytes and self.bytes > self.max_bytes and len(rows) > 1)
            or (self.ttl and rows[0][1] <= now - self.ttl)
        ):
            cut, _, size = rows.popleft()
            self.bytes -= size
        return cut

    def write(self, batch: list[_Row | None], now: float) -> int:
        """One transaction: the batch's rows (and clears) in order, then the trim."""
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            run: list[tuple[int, str, str, str | None, int | None, bytes, float]] = []
            for entry in batch:
                if entry is _CLEAR:
                    conn.executemany(_INSERT, run)
                    run = []
                    conn.execute("DELETE FROM sse_events")
                    self.rows.clear()
                    self.bytes = 0
                    continue
                event, published = entry
                assert event.id is not None
                seq = self.next_seq
                self.next_seq += 1
                run.append(
                    (seq, event.id, event.channel, event.event, event.retry, event.frame, published)
                )
                self.keep(seq, published, len(event.frame))
            conn.executemany(_INSERT, run)
            cut = self.cutoff(now)
            if cut is not None:
                conn.execute("DELETE FROM sse_events WHERE seq <= ?", (cut,))
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            raise
        return len(batch)

    def close(self) -> None:
        self.conn.close()


class SQLiteHistory(MemoryHistory):
    """
    A L{MemoryHistory} whose events are also kept in the SQLite file
    C{path} (WAL mode), so that they survive a restart or a crash.

    Opening (at once, or with C{open=False} when L{open} is called) checks
    the file's schema version, creates its table if needed, and loads the
    newest events (as C{size}, C{ttl} and C{max_bytes} bound the mirror) in
    their order and with the times they were published, so a client resumes
    with the id of any of them and their TTL counts from when they were
    published. Opening reads the file in the calling thread: do it at start.

    Every appended event is written by one writer thread, in group commits
    (see the module's docstring); L{committed} fires once it is on disk.
    The file is trimmed as the mirror is. One process per file: a second
    writer fails loudly (its rows collide) rather than interleaving.

    @param path: the SQLite file; created if missing.
    @param size: events kept (C{--history}).
    @param ttl: seconds after publishing an event is forgotten (0: never).
    @param reactor: an C{IReactorTime} (and C{IReactorThreads} for the
        writer thread); the global reactor when C{None}.
    @param max_bytes: the most bytes of frames kept (0: no byte bound).
    @param open: open the file now (C{False}: when L{open} is called).
    @param runner: runs a job in the writer thread and answers in the
        reactor thread (for tests); a daemon thread of its own by default.
    """

    log = Logger()

    def __init__(
        self,
        path: str | os.PathLike[str],
        size: int = 1000,
        ttl: float = 0,
        reactor: Any = None,
        *,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
        open: bool = True,
        runner: Runner[Any] | None = None,
    ) -> None:
        super().__init__(size, ttl, reactor, max_bytes=max_bytes)
        self.path = os.fspath(path)
        #: Transactions committed since opening (a group commit is one).
        self.commits = 0
        #: Events committed since opening.
        self.committed_events = 0
        self._runner = runner
        self._file: _File | None = None
        self._stamping = 0.0
        self._appended = 0
        self._durable = 0
        self._pending: list[_Row | None] = []
        self._writing = False
        self._scheduled = False
        self._waiters: deque[tuple[int, Deferred[None]]] = deque()
        self._failure: Failure | None = None
        self._closing: Deferred[None] | None = None
        if open:
            self.open()

    # Opening

    def open(self) -> None:
        """
        Open the file: check its schema version, create the table, load the
        newest events into the mirror, and drop the older rows.

        @raise HistoryFileError: the file cannot be used (one line: why).
        """
        if self._file is not None:
            raise RuntimeError(f"history database {self.path} is open already")
        where = f"history database {self.path}"
        if os.path.isdir(self.path):
            raise HistoryFileError(f"{where} is a directory; give a file's path")
        try:
            conn = sqlite3.connect(
                self.path, timeout=10.0, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as e:
            raise HistoryFileError(f"cannot open {where}: {e}") from None
        try:
            self._file = self._prepare(conn, where)
        except BaseException:
            conn.close()
            raise

    def _prepare(self, conn: sqlite3.Connection, where: str) -> _File:
        try:
            _check_version(conn, where)
            # A concurrent writer of the same file (another table's, in
            # another connection) makes ours wait rather than fail.
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            # Committed means on disk, not merely handed to the OS.
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")  # fails at once if it cannot be written
            _check_version(conn, where)
            conn.execute(_SCHEMA)
            columns = tuple(row[1] for row in conn.execute("PRAGMA table_info(sse_events)"))
            if columns != _COLUMNS:
                raise HistoryFileError(
                    f"{where} has a table sse_events that is not sse_twisted's "
                    f"(columns {', '.join(columns)}); give another file"
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            file = self._load(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            reason = str(e)
            if "not a database" in reason:
                reason += " (corrupt, or not a SQLite file)"
            raise HistoryFileError(f"cannot use {where}: {reason}") from None
        return file

    def _load(self, conn: sqlite3.Connection) -> _File:
        """Fill the mirror with the newest rows the bounds keep; delete the others."""
        now = float(default_reactor(self._reactor).seconds())
        (newest,) = conn.execute("SELECT MAX(seq) FROM sse_events").fetchone()
        file = _File(conn, self.size, self.ttl, self.max_bytes, (newest or 0) + 1)
        kept: list[tuple[int, str, str, str | None, int | None, bytes, float]] = []
        total = 0
        rows = conn.execute(
            "SELECT seq, id, channel, event, retry, frame, published FROM sse_events"
            " ORDER BY seq DESC LIMIT ?",
            (self.size,),
        )
        for row in rows:
            published, frame = row[6], bytes(row[5])
            if self.ttl and published <= now - self.ttl:
                break
            if kept and self.max_bytes and total + len(frame) > self.max_bytes:
                break
            total += len(frame)
            kept.append(row)
        kept.reverse()
        first = kept[0][0] if kept else file.next_seq
        conn.execute("DELETE FROM sse_events WHERE seq < ?", (first,))
        for seq, event_id, channel, name, retry, frame, published in kept:
            file.keep(seq, published, len(frame))
            self._stamping = published
            super().append(Event(channel, name, event_id, retry, bytes(frame)))
        return file

    # Appending and committing

    def stamp(self, event: Event) -> float:
        """When C{event} was published: now, or, as it is loaded, its stored time."""
        return self._stamping

    def append(self, event: Event) -> None:
        """
        Hold C{event} in the mirror (at once: resumes see it) and queue it for
        the next commit.

        @raise HistoryUnavailable: a write failed earlier, or the history is
            closed (or not open): the event is neither held nor delivered.
        """
        self._check_usable()
        now = float(default_reactor(self._reactor).seconds())
        self._stamping = now
        super().append(event)
        self._pending.append((event, now))
        self._appended += 1
        self._schedule()

    def clear(self) -> None:
        """Forget everything, in the file too (in order with the events appended)."""
        super().clear()
        if self._file is not None and self._failure is None and self._closing is None:
            self._pending.append(_CLEAR)
            self._schedule()

    def committed(self) -> Deferred[None]:
        """
        A Deferred that fires once every event appended so far is committed
        to the file; it fails with L{HistoryUnavailable} if that write failed.
        """
        if self._failure is not None:
            return fail(self._unavailable())
        if self._durable >= self._appended:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._waiters.append((self._appended, waiter))
        return waiter

    @property
    def failed(self) -> Failure | None:
        """Why writing failed, once it did (then every append raises)."""
        return self._failure

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise self._unavailable()
        if self._closing is not None:
            raise HistoryUnavailable(f"the history database {self.path} is closed")
        if self._file is None:
            raise HistoryUnavailable(f"the history database {self.path} is not open")

    def _unavailable(self) -> HistoryUnavailable:
        assert self._failure is not None
        return HistoryUnavailable(
            f"writing the history database {self.path} failed ({self._failure.value}); "
            "nothing is published until the server restarts"
        )

    def _schedule(self) -> None:
        """Start a commit on the next reactor turn, unless one runs or is due."""
        if self._writing or self._scheduled:
            return
        self._scheduled = True
        default_reactor(self._reactor).callLater(0, self._start)

    def _start(self) -> None:
        self._scheduled = False
        if self._writing or not self._pending or self._failure is not None:
            return
        file = self._file
        assert file is not None
        batch, self._pending = self._pending, []
        upto = self._appended
        now = float(default_reactor(self._reactor).seconds())
        self._writing = True
        self._run(lambda: file.write(batch, now)).addCallbacks(
            self._wrote, self._write_failed, callbackArgs=(upto, batch)
        )

    def _run(self, job: Callable[[], _T]) -> Deferred[_T]:
        if self._runner is None:
            self._runner = _WriterThread(
                default_reactor(self._reactor), f"sse-history-writer {self.path}"
            )
        runner: Runner[_T] = self._runner
        return runner(job)

    def _wrote(self, _: int, upto: int, batch: list[_Row | None]) -> None:
        self._writing = False
        self.commits += 1
        self.committed_events += sum(1 for entry in batch if entry is not _CLEAR)
        self._durable = upto
        waiters = self._waiters
        while waiters and waiters[0][0] <= upto:
            waiters.popleft()[1].callback(None)
        if self._pending:
            self._start()  # what arrived during this commit: the next group

    def _write_failed(self, failure: Failure) -> None:
        self._writing = False
        self._failure = failure
        self._pending = []
        self.log.failure(
            "Writing the history database {path} failed: publishing is refused from now on",
            failure,
            path=self.path,
        )
        waiters, self._waiters = self._waiters, deque()
        for _, waiter in waiters:
            waiter.errback(self._unavailable())

    # Closing

    def close(self) -> Deferred[None]:
        """
        Commit what is pending, then close the file (and end the writer
        thread). Appending afterwards raises L{HistoryUnavailable}. Fires
        once closed, even if a write failed (that failure was logged, and
        failed L{committed}).
        """
        if self._closing is None:
            self._closing = self._close()
        closed: Deferred[None] = Deferred()

        def done(result: object) -> object:
            closed.callback(None)
            return result

        self._closing.addBoth(done)
        return closed

    def _close(self) -> Deferred[None]:
        file = self._file
        if file is None:
            return succeed(None)

        def shut(_: object) -> Deferred[None]:
            done = self._run(file.close)
            runner = self._runner
            if isinstance(runner, _WriterThread):
                runner.stop()
            return done

        closing = self.committed()
        closing.addErrback(lambda _: None)  # logged once already, as it failed
        closing.addCallback(shut)
        closing.addErrback(
            lambda f: self.log.failure("Closing the history database {path}", f, path=self.path)
        )
        return closing


def _check_version(conn: sqlite3.Connection, where: str) -> None:
    """Refuse a file whose layout this module does not know: never misread one."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    if version > SCHEMA_VERSION or version < 0:
        raise HistoryFileError(
            f"{where} has schema version {version}, and this sse_twisted reads version "
            f"{SCHEMA_VERSION} (written by a newer release?): use that release, or another file"
        )
