"""
Scale-out through Redis: one Redis Stream carries every node's events.

Each node publishes by C{XADD}ing to the stream (a batch in one
C{MULTI}/C{EXEC}) and delivers by reading it on a connection of its own, so
every node delivers every event exactly once, in the stream's one global
order, including the node that published it: L{RedisBus.publish} does not
dispatch locally. Each read is a C{MULTI} of C{XRANGE cursor cursor} and a
non-blocking C{XREAD} after the cursor; C{XREAD BLOCK} only waits for news.
Streams are trimmed from their oldest end, so "the cursor's entry is still
there" proves that nothing after it was trimmed unread: a node that falls
further behind than the stream holds notices, instead of skipping silently. The stream is
also the history: it is bounded with C{MAXLEN ~ history_size} (and
C{XTRIM MINID ~ now - ttl} when a TTL is set), event ids I{are} the stream ids,
and each node keeps a local mirror of the stream's tail (L{StreamHistory}) so
that the broker's synchronous C{history.since()} answers a C{Last-Event-ID}
from any node, after any node restarts.

Faults: connecting, losing Redis and getting it back are one loop with
capped, jittered backoff. An outage logs one warning when it starts (Redis
lost, or unreachable at the first attempt) and one info line when Redis is
back, with how long it was away; the retries in between log nothing (twistd
writes debug lines too) and are counted instead (L{RedisBus.connect_attempts},
L{RedisBus.outages}, read by the metrics). A Redis that hangs is noticed by
a C{PING} every L{RedisBus.ping_interval} seconds on the publishing
connection, answered within C{command_timeout} or the connection is given up.
While Redis is away C{ready} is L{False} and L{RedisBus.publish} errbacks
with L{RedisUnavailable}: an event is reported published only once Redis has
stored it. On reconnect the reader continues from the last stream id it
delivered, so events that reached Redis meanwhile are delivered.

Gaps: if entries this node never read are gone (the stream was trimmed past
its cursor because it read slower than events arrived or was away too long,
or Redis restarted empty), a warning says so, L{RedisBus.on_gap} is called
(the broker then sends C{sse.reset} to every open stream) and the mirror is
restarted, so resuming clients get the broker's unknown-id signal instead of
a replay with a hole in it; what the stream still holds is delivered. On
Redis 7 and later the check is exact (C{entries-added} of C{XINFO STREAM});
before 7, a cursor trimmed away counts as a gap, and a burst trimmed before
a node read anything of an empty stream goes unnoticed. A batch larger than
the stream holds would lose its head to C{MAXLEN} inside its own
transaction: L{RedisBus.publish} refuses it (L{BatchTooLarge}).

Intentional divergences, and why:
    - A publish that sets C{id} is refused (C{ValueError}), not silently
      renumbered: with Redis the id is the stream id, chosen by Redis, and a
      publisher that sets ids expects clients to see them.
    - A publish whose reply is lost (connection dropped or no answer within
      C{command_timeout}) errbacks although Redis may have stored it; a
      publisher that retries can then publish twice. Reporting success for an
      event that may not be stored would be worse.
    - Continuity after a reconnect is judged by whether the stream still
      holds the last id this node delivered, not by C{run_id} alone: a Redis
      restarted with persistence keeps the stream, and its resuming clients
      keep their place. A changed C{run_id} is logged.
    - The TTL is applied by stream id time (Redis's clock when it created the
      entry), in the mirror as in the stream, not by when this node saw it.
    - txredisapi is imported lazily: importing it imports (and so installs)
      the global reactor, which would break C{--reactor} choices made later.
      Its connection helpers (C{Connection}, C{lazyConnection}, pools) are
      not used: they schedule on the global reactor, log every retry, and
      their backoff cannot be capped per bus or driven by a test clock. Only
      its protocol is, over an endpoint this module connects and retries.
    - Throughput: txredisapi's parser takes a reactor turn per bulk string
      that shares a TCP read with what follows, so a node reads some
      thousands of events a second (never blocking the reactor). Size
      C{history_size} so that a burst fits in the stream while nodes read it.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from .event import Event, Item
from .history import MemoryHistory
from .relay import BatchTooLarge

__all__ = [
    "BatchTooLarge",
    "RedisAddress",
    "RedisBus",
    "RedisCommandError",
    "RedisUnavailable",
    "StreamHistory",
    "parse_redis_url",
    "stream_id_key",
]


class RedisUnavailable(ConnectionError):
    """Redis is not connected, or the connection failed before it answered."""


class RedisCommandError(RuntimeError):
    """Redis answered with an error (a wrong password, a key of another type...)."""


# Stream ids


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """
    The sort key of a Redis stream id C{"<ms>-<seq>"}.

    @raise ValueError: if C{stream_id} is not a full stream id.
    """
    ms, sep, seq = stream_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a Redis stream id (<ms>-<seq>): {stream_id!r}")
    return int(ms), int(seq)


class StreamHistory(MemoryHistory):
    """
    The local mirror of the stream's last entries: an L{IHistory} whose
    lookups stay synchronous for the broker.

    Entries are held in stream order; appending an event whose id is not newer
    than the newest held is a no-op, so the reader and the broker's own
    C{dispatch} may both append the same event. With C{ttl}, an entry is
    forgotten C{ttl} seconds after the time in its stream id.

    @param size: entries kept (the stream's C{MAXLEN}).
    @param ttl: seconds; C{0} keeps entries until pushed out.
    @param reactor: an C{IReactorTime} for the TTL; the global reactor when
        L{None}.
    """

    def __init__(self, size: int = 1000, ttl: float = 0, reactor: Any = None) -> None:
        super().__init__(size, ttl, reactor)
        self._newest: tuple[int, int] | None = None
        self._newest_id: str | None = None

    @property
    def newest_id(self) -> str | None:
        """The id of the newest event ever appended since the last L{clear}."""
        return self._newest_id

    def append(self, event: Event) -> None:
        """
        Remember C{event}, unless an event at least as new is already held.

        @raise ValueError: if its id is not a Redis stream id.
        """
        if event.id is None:
            raise ValueError("only events with stream ids can be held in a StreamHistory")
        key = stream_id_key(event.id)
        if self._newest is not None and key <= self._newest:
            return
        self._newest = key
        self._newest_id = event.id
        super().append(event)

    def _stamp(self, event: Event) -> float:
        """The time in the stream id: the TTL counts from when Redis stored it."""
        assert event.id is not None
        return stream_id_key(event.id)[0] / 1000

    def clear(self) -> None:
        super().clear()
        self._newest = None
        self._newest_id = None


# Addresses


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in, from a C{redis://} URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    def __str__(self) -> str:
        # Never the password: this goes into logs.
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]} (C{rediss://} for TLS).

    @raise ValueError: for another scheme, a bad port or a bad database number.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"Redis URL must look like redis://[:password@]host:port/db (or rediss:// for TLS),"
            f" got {url!r}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"Redis URL has a bad port: {url!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"Redis URL path must be a database number like /0, got {parts.path!r}")
    return RedisAddress(
        host=parts.hostname or "localhost",
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )


# Connections


def _txredisapi() -> Any:
    """
    Import txredisapi on first use: it imports the global reactor at import
    time, and importing this module must not.
    """
    import txredisapi  # untyped: see ignore_missing_imports

    return txredisapi


class _LinkFactory(Factory):
    """Builds txredisapi protocols that leave every reply as Redis sent it."""

    # No "Starting factory" lines at each connection attempt.
    noisy = False

    def __init__(self, protocol_class: Any) -> None:
        self._protocol_class = protocol_class

    def buildProtocol(self, addr: IAddress | None) -> Any:
        # convertNumbers=False: txredisapi would otherwise turn a payload such
        # as "007" or "1.50" into a number. No password or dbid either: its
        # own login calls back into a pool factory this is not; _open logs in.
        proto = self._protocol_class(charset="utf-8", convertNumbers=False)
        proto.factory = self
        return proto


class _Link:
    """One Redis connection and a way to wait for its end."""

    def __init__(self, proto: Any) -> None:
        self.proto = proto
        self.closed = False
        self._waiters: list[Deferred[None]] = []
        # Not whenDisconnected(): txredisapi fires that before it fails the
        # commands still waiting for replies, and "closed" must mean that
        # those have failed too (a stop() that fired first would leave their
        # timeouts pending).
        connection_lost = proto.connectionLost

        def lost(reason: Failure) -> None:
            try:
                connection_lost(reason)
            finally:
                self._lost()

        proto.connectionLost = lost

    def _lost(self) -> None:
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> Deferred[None]:
        if self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def abort(self) -> None:
        if not self.closed and self.proto.transport is not None:
            self.proto.transport.abortConnection()


def _info_field(info: object, name: str) -> str | None:
    if not isinstance(info, str):
        return None
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def _entries(reply: Any) -> list[Any]:
    """The entries of an C{XREAD} reply (L{None} when there were none)."""
    return [entry for _key, found in reply or () for entry in found]


def _stream_info(reply: Any) -> dict[str, Any] | None:
    """C{XINFO STREAM}'s fields as a dict; L{None} when the stream does not exist."""
    if not isinstance(reply, list):
        return None
    return dict(zip(reply[::2], reply[1::2], strict=False))


def _describe(failure: BaseException) -> str:
    text = str(failure).strip()
    return f"{type(failure).__name__}: {text}" if text else type(failure).__name__


# The bus


class RedisBus:
    """
    Publishes events to a Redis Stream and delivers the stream's entries to
    this node, in stream order, each once.

    Set L{on_event} (the broker's dispatch), then L{start}. Use L{history} as
    the broker's history: the reader feeds it before calling L{on_event}, and
    appending the same event again is a no-op.

    @param url: C{redis://[[user]:password@]host:port/db}; C{rediss://} for TLS
        (the server certificate is verified against the host name).
    @param history_size: the stream's C{MAXLEN ~} and the mirror's size.
    @param history_ttl: seconds after which events leave the stream (trimmed
        with C{MINID ~} on each publish) and the mirror; C{0}: never.
    @param stream: the stream's key, shared by every node.
    @param reactor: the reactor (or, with C{endpoint}, an C{IReactorTime});
        the global one when L{None}.
    @param max_backoff: the longest wait, in seconds, between connection
        attempts.
    @param command_timeout: seconds to wait for a connection or a reply
        before giving up on the connection (and reconnecting).
    @param endpoint: an C{IStreamClientEndpoint} to connect to instead of the
        URL's host and port (a UNIX socket, say); the URL still gives the
        password and database.
    @param tls: the client TLS options for C{rediss://} (e.g.
        C{optionsForClientTLS(host, trustRoot=...)} for a private CA); by
        default the certificate is checked against the system's trust store.

    @ivar ready: connected, and the reader is running: what a health check
        reports.
    @ivar on_event: called once per stream entry, in stream order, with an
        L{Event} whose C{id} is the stream id; exceptions are logged.
    @ivar on_gap: called as C{on_gap(last_id, reason)} when entries after
        C{last_id} that this node never read are gone (or may be: Redis
        restarted empty), before what follows is delivered; wire it to
        C{SSEBroker.notify_gap} so that open streams get C{sse.reset}.
        C{reason} is C{"stream-trimmed"} or C{"stream-lost"}.
    @ivar connect_attempts: connection attempts made so far (monitoring).
    @ivar outages: times Redis went away (or was unreachable at the first
        attempt): each logged one warning (monitoring).
    @ivar resets: times Redis no longer held this node's place, so that the
        mirror was rebuilt (monitoring).
    @ivar gaps: times unread entries were found gone and C{on_gap} called
        (monitoring).
    @ivar client_name: the prefix of this node's C{CLIENT SETNAME}s, to find
        its two connections in C{CLIENT LIST}.
    """

    log = Logger()

    #: Delay before the first retry, in seconds; it doubles up to max_backoff.
    initial_backoff = 0.1
    #: How long one XREAD waits for new entries, in milliseconds.
    block_ms = 5000
    #: Most entries read per XREAD.
    read_count = 500
    #: Seconds between PINGs on the publishing connection while connected: a
    #: Redis that stops answering (hung, or gone without a FIN) is given up
    #: within ping_interval + command_timeout, not at the next publish.
    ping_interval = 1.0

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 0,
        stream: str = "sse:events",
        reactor: Any = None,
        max_backoff: float = 5.0,
        command_timeout: float = 5.0,
        endpoint: IStreamClientEndpoint | None = None,
        tls: IOpenSSLClientConnectionCreator | None = None,
    ) -> None:
        if max_backoff <= 0:
            raise ValueError(f"max_backoff must be > 0 seconds, got {max_backoff}")
        if command_timeout <= 0:
            raise ValueError(f"command_timeout must be > 0 seconds, got {command_timeout}")
        if not stream:
            raise ValueError("stream must be a non-empty Redis key")
        self.address = parse_redis_url(url)
        self.history = StreamHistory(history_size, history_ttl, reactor)
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.stream = stream
        self.max_backoff = max_backoff
        self.command_timeout = command_timeout
        self.on_event: Callable[[Event], object] | None = None
        self.on_gap: Callable[[str, str], object] | None = None
        self.ready = False
        self.connect_attempts = 0
        self.outages = 0
        self.resets = 0
        self.gaps = 0
        self.client_name = f"sse_twisted-{os.getpid()}-{os.urandom(3).hex()}"
        self._reactor = reactor
        self._endpoint = endpoint
        self._tls = tls
        self._where = str(endpoint) if endpoint is not None else str(self.address)
        # The id of the last entry delivered (or preloaded): where the reader
        # continues. None until the first connection decides it.
        self._cursor: str | None = None
        self._run_id: str | None = None
        self._publisher: _Link | None = None
        self._links: set[_Link] = set()
        self._loop: Deferred[None] | None = None
        self._stopping = False
        # When the current outage began (clock seconds), None while connected
        # and before the first attempt: one warning per outage, one info back.
        self._outage_since: float | None = None
        # Entries the stream had taken up to and including the cursor
        # (XINFO's entries-added, Redis 7+), None when unknown: tells a trim
        # that removed only read entries from one that removed unread ones.
        self._added: int | None = None
        # Why the last connection was given up, when this module gave it up.
        self._fault: str | None = None
        self._pinger: LoopingCall | None = None
        self._ping_pending = False

    @property
    def last_id(self) -> str | None:
        """The stream id the reader continues after."""
        return self._cursor

    @property
    def _clock(self) -> Any:
        return default_reactor(self._reactor)

    # Lifecycle

    def start(self) -> None:
        """Connect, and keep connecting; L{ready} turns True once reading."""
        if self._loop is not None:
            raise RuntimeError("RedisBus is already started; stop() it first")
        self._stopping = False
        self._outage_since = None
        loop = Deferred.fromCoroutine(self._run())
        self._loop = loop
        loop.addErrback(self._loop_ended)

    def stop(self) -> Deferred[None]:
        """
        Stop reading and retrying and close both connections; fires once they
        are closed. Pending publishes errback with L{RedisUnavailable}.
        """
        self._stopping = True
        self.ready = False
        loop, self._loop = self._loop, None
        if loop is not None:
            # Cancelling runs the loop's cleanup at once: the retry timer or
            # the pending command is cancelled and the connections aborted.
            loop.cancel()
        links = list(self._links)
        for link in links:
            link.abort()
        return gatherResults([link.when_closed() for link in links]).addCallback(lambda _: None)

    def _loop_ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("The Redis reader stopped unexpectedly", failure)

    async def _run(self) -> None:
        failures = 0
        while True:
            self.connect_attempts += 1
            try:
                await self._session()
                reason = "the connection closed"
            except CancelledError:
                if self._stopping:
                    self._teardown()
                    return
                reason = "cancelled"
            except Exception as e:
                reason = _describe(e)
            if self._stopping:
                # stop() was called from inside the session (by on_event, say).
                self._teardown()
                return
            if self._fault is not None:
                # This module gave the connection up (no reply in time): that
                # is the cause, not the abort it led to.
                reason, self._fault = self._fault, None
            was_ready = self.ready
            self._teardown()
            if was_ready:
                failures = 0
                self.outages += 1
                self._outage_since = self._clock.seconds()
                self.log.warn(
                    "Lost Redis at {where} ({reason}); reconnecting with backoff up to"
                    " {cap}s, publishing answers 503 until then",
                    where=self._where,
                    reason=reason,
                    cap=self.max_backoff,
                )
            elif self._outage_since is None:
                self.outages += 1
                self._outage_since = self._clock.seconds()
                self.log.warn(
                    "Redis at {where} is unreachable ({reason}); retrying with backoff up to"
                    " {cap}s, not ready until it answers",
                    where=self._where,
                    reason=reason,
                    cap=self.max_backoff,
                )
            # Else the outage goes on: counted (connect_attempts), not logged.
            delay = self._backoff(failures)
            failures += 1
            await deferLater(self._clock, delay)

    def _backoff(self, failures: int) -> float:
        """Doubling from L{initial_backoff}, capped, times a jitter in (0.5, 1]."""
        base = min(self.max_backoff, self.initial_backoff * 2.0 ** min(failures, 32))
        return base * (1 - random.random() / 2)

    def _teardown(self) -> None:
        self.ready = False
        self._publisher = None
        pinger, self._pinger = self._pinger, None
        if pinger is not None and pinger.running:
            pinger.stop()
        for link in list(self._links):
            link.abort()

    def _ping(self, link: _Link) -> None:
        """
        One PING at a time on the publishing connection; no answer within
        C{command_timeout} gives the connection up (L{_guard}), which ends
        the session: C{ready} turns False and the health check says so.
        """
        if self._ping_pending or link.closed:
            return
        self._ping_pending = True

        def done(_: object) -> None:
            self._ping_pending = False

        self._call(link, "PING").addBoth(done)

    async def _session(self) -> None:
        """One connected period: connect, catch up, then read until a fault."""
        publisher = await self._open("publish")
        reader = await self._open("read")
        run_id = _info_field(await self._call(reader, "INFO", "server"), "run_id")
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            # Its entries-added may not be the count this node followed.
            self._added = None
        resets = self.resets
        if self._cursor is None:
            await self._rebuild(reader)
        # Before turning ready, so that a Redis that lost our place is noticed
        # (and the mirror rebuilt) before anyone is answered from the mirror.
        batch = await self._read(reader)
        # Either connection failing ends the session; the reader is the one
        # waiting, so the publisher's end aborts it.
        publisher.when_closed().addCallback(lambda _: reader.abort())
        self._publisher = publisher
        self.ready = True
        self._ping_pending = False
        pinger = self._pinger = LoopingCall(self._ping, publisher)
        pinger.clock = self._clock
        pinger.start(self.ping_interval, now=False)
        since, self._outage_since = self._outage_since, None
        self.log.info(
            "{verb} Redis at {where}{away}{restarted}: stream {stream},"
            " {held} events in history, reading after {cursor}{rebuilt}",
            verb="Connected to" if since is None else "Back on",
            where=self._where,
            away=""
            if since is None
            else f" after {self._clock.seconds() - since:.1f}s away"
            f" ({self.connect_attempts} connection attempts so far)",
            restarted=" (it restarted since last seen)" if restarted else "",
            stream=self.stream,
            held=len(self.history),
            cursor=self._cursor,
            rebuilt=" (history rebuilt)" if self.resets != resets else "",
        )
        while not self._stopping:
            self._deliver(batch)
            if self._stopping:
                return
            if len(batch) < self.read_count:
                # Caught up: wait for news. Only a wake-up; what is read comes
                # from _read, which also checks that nothing was lost.
                await self._call(
                    reader,
                    "XREAD",
                    "COUNT",
                    1,
                    "BLOCK",
                    self.block_ms,
                    "STREAMS",
                    self.stream,
                    self._cursor,
                    timeout=self.block_ms / 1000 + self.command_timeout,
                )
            batch = await self._read(reader)

    async def _read(self, reader: _Link) -> list[Any]:
        """
        The entries after the cursor (at most L{read_count}), read in one
        transaction with a check that Redis still holds the cursor's entry.

        Streams are trimmed from their oldest end, so if the entry at the
        cursor is still there, nothing after it was trimmed unread: the
        common case costs one small C{XRANGE} more. When it is gone, or when
        reading from the start of a stream that was empty, L{_read_checked}
        decides whether anything unread was lost.
        """
        cursor = self._cursor
        assert cursor is not None
        held, reply = await self._transaction(reader, self._read_commands(cursor))
        entries = _entries(reply)
        if held or (cursor == "0-0" and not entries):
            return entries
        return await self._read_checked(reader, cursor)

    def _read_commands(self, cursor: str) -> list[list[Any]]:
        return [
            ["XRANGE", self.stream, cursor, cursor, "COUNT", 1],
            ["XREAD", "COUNT", self.read_count, "STREAMS", self.stream, cursor],
        ]

    async def _read_checked(self, reader: _Link, cursor: str) -> list[Any]:
        """
        Read again, with the stream's counters (C{XINFO STREAM}) in the same
        transaction, and decide: Redis lost the stream (restarted empty, or
        ids went backwards: the mirror is rebuilt), or it trimmed entries
        this node never read (the mirror restarts), or only entries it had
        read (nothing to do). Both losses call L{on_gap} before anything
        after them is delivered.
        """
        held, reply, info = await self._transaction(
            reader,
            [*self._read_commands(cursor), ["XINFO", "STREAM", self.stream]],
            errors_ok=True,
        )
        for result in (held, reply):
            if isinstance(result, Exception):
                raise RedisCommandError(f"Redis at {self._where} refused: {result}")
        entries = _entries(reply)
        if held:
            return entries
        stats = _stream_info(info)
        last = stats.get("last-generated-id") if stats is not None else None
        if cursor != "0-0" and (
            not isinstance(last, str) or stream_id_key(last) < stream_id_key(cursor)
        ):
            # No stream, or its ids went backwards: Redis lost our place.
            await self._rebuild(reader)
            self._gap(cursor, "stream-lost")
            return []
        assert stats is not None
        length = int(stats.get("length") or 0)
        added = stats.get("entries-added")
        first = stats.get("first-entry")
        first_id = first[0] if isinstance(first, list) and first else None
        lost: int | None = None
        if added is not None and self._added is not None:
            lost = int(added) - length - self._added
        if cursor == "0-0":
            # The stream was empty when last seen: without entries-added
            # (Redis < 7) there is no telling; see the module docstring.
            gap = lost is not None and lost > 0
        elif first_id is not None and stream_id_key(first_id) < stream_id_key(cursor):
            # The cursor's entry was deleted from the middle (XDEL by someone
            # else): what was deleted after it cannot be counted.
            gap, lost = True, None
        elif lost is not None:
            gap = lost > 0
        else:
            # Unknown: anything added after the cursor may have gone unread.
            gap = last != cursor
        if not gap:
            return entries
        self.resets += 1
        self.log.warn(
            "Redis at {where} trimmed the stream past entry {last} before this node read"
            " {lost} entries after it (it reads slower than events arrive, or was away"
            " longer than the stream holds): open streams told (sse.reset), history"
            " restarted; make --history larger or publish less at once",
            where=self._where,
            last=cursor,
            lost="some" if lost is None else lost,
        )
        self.history.clear()
        self._added = int(added) - length if added is not None else None
        self._gap(cursor, "stream-trimmed")
        return entries

    def _gap(self, last_id: str, reason: str) -> None:
        """Tell (L{on_gap}) that entries after C{last_id} were lost to this node."""
        self.gaps += 1
        on_gap = self.on_gap
        if on_gap is not None:
            try:
                on_gap(last_id, reason)
            except Exception:
                self.log.failure("on_gap failed after stream entry {id}", id=last_id)

    async def _open(self, role: str) -> _Link:
        endpoint = self._endpoint
        if endpoint is None:
            endpoint = self._endpoint = self._make_endpoint()
        connecting = endpoint.connect(_LinkFactory(_txredisapi().RedisProtocol))
        connecting.addTimeout(self.command_timeout, self._clock)
        proto: Any = await connecting
        if not proto.connected:
            raise RedisUnavailable(f"the connection to Redis at {self._where} closed at once")
        link = _Link(proto)
        self._links.add(link)
        link.when_closed().addCallback(lambda _: self._links.discard(link))
        address = self.address
        if address.password is not None:
            login = [address.username] if address.username else []
            await self._call(link, "AUTH", *login, address.password)
        if address.db:
            await self._call(link, "SELECT", address.db)
        await self._call(link, "CLIENT", "SETNAME", f"{self.client_name}-{role}")
        return link

    def _make_endpoint(self) -> IStreamClientEndpoint:
        from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
        from twisted.internet.ssl import optionsForClientTLS

        address = self.address
        endpoint: IStreamClientEndpoint = HostnameEndpoint(
            self._clock, address.host, address.port, timeout=self.command_timeout
        )
        if address.tls:
            tls = self._tls if self._tls is not None else optionsForClientTLS(address.host)
            endpoint = wrapClientTLS(tls, endpoint)
        return endpoint

    def _call(self, link: _Link, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Send one command; its reply, or L{RedisUnavailable} when the
        connection fails or Redis does not answer within the timeout (the
        connection is then aborted: its replies would be out of step).
        """
        try:
            d: Deferred[Any] = link.proto.execute_command(*args)
        except Exception as e:
            return fail(RedisUnavailable(f"not connected to Redis at {self._where}: {e}"))
        return self._guard(link, d, timeout)

    def _guard(self, link: _Link, d: Deferred[Any], timeout: float | None = None) -> Deferred[Any]:
        limit = self.command_timeout if timeout is None else timeout
        d.addTimeout(limit, self._clock)
        tx = _txredisapi()

        def failed(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                if not link.closed:
                    self._fault = f"no reply within {limit:g}s"
                link.abort()
                raise RedisUnavailable(f"no reply from Redis at {self._where} within {limit:g}s")
            if f.check(tx.ResponseError):
                raise RedisCommandError(f"Redis at {self._where} refused: {f.value}")
            if f.check(tx.ConnectionError):
                raise RedisUnavailable(f"lost the connection to Redis at {self._where}")
            return f

        return d.addErrback(failed)

    async def _rebuild(self, reader: _Link) -> None:
        """
        Decide where reading continues and fill the mirror from the stream:
        at the first connection, or when Redis no longer holds the cursor.
        """
        found, info = await self._transaction(
            reader,
            [
                ["XREVRANGE", self.stream, "+", "-", "COUNT", self.history_size],
                ["XINFO", "STREAM", self.stream],
            ],
            errors_ok=True,
        )
        if isinstance(found, Exception):
            raise RedisCommandError(f"Redis at {self._where} refused: {found}")
        tail = list(reversed(found or ()))
        newest = tail[-1][0] if tail else None
        stats = _stream_info(info)
        # Where the new cursor sits in the count of entries ever added (all
        # of them: it is the newest, or nothing was ever added).
        added = stats.get("entries-added") if stats is not None else 0
        self._added = int(added) if added is not None else None
        cursor = self._cursor
        if cursor is None:
            # First connection: what is there is history, not news.
            cursor = newest or "0-0"
        else:
            self.resets += 1
            self.log.warn(
                "Redis at {where} no longer holds stream entry {last} (it restarted empty,"
                " or its ids went backwards): what it held after that entry is lost to this"
                " node; open streams told (sse.reset), history rebuilt from the stream, so"
                " clients resuming from before now get a reset",
                where=self._where,
                last=cursor,
            )
            if newest is None:
                # The stream is gone (Redis restarted empty): read it from the start.
                cursor = "0-0"
            elif stream_id_key(newest) < stream_id_key(cursor):
                # Its ids went backwards (another Redis, or an old snapshot):
                # treat what it holds as seen and read what comes next.
                cursor = newest
            else:
                # Our place was trimmed away: read on after it, uncounted.
                self._added = None
        self.history.clear()
        limit = stream_id_key(cursor)
        for entry_id, fields in tail:
            if stream_id_key(entry_id) <= limit:
                event = self._decode(entry_id, fields)
                if event is not None:
                    self.history.append(event)
        self._cursor = cursor

    def _transaction(
        self, link: _Link, commands: Sequence[Sequence[Any]], errors_ok: bool = False
    ) -> Deferred[list[Any]]:
        """
        Run C{commands} in one C{MULTI}/C{EXEC}, sent in one write; the list
        of their replies. Errbacks with L{RedisCommandError} if any failed,
        unless C{errors_ok}: then a failed command's reply is its exception.
        """
        proto = link.proto
        queued: list[Deferred[Any]] = []
        try:
            queued.append(proto.execute_command("MULTI"))
            queued.extend(proto.execute_command(*args) for args in commands)
            committed: Deferred[Any] = proto.execute_command("EXEC")
        except Exception as e:
            # txredisapi refuses to write when not connected. A MULTI already
            # written without its EXEC is discarded by Redis with the connection.
            link.abort()
            return fail(RedisUnavailable(f"not connected to Redis at {self._where}: {e}"))
        for d in queued:
            # "QUEUED", or an error that EXEC reports as EXECABORT anyway.
            d.addErrback(lambda _: None)

        def replies(reply: Any) -> list[Any]:
            if not isinstance(reply, list):
                raise RedisCommandError(
                    f"Redis at {self._where} discarded a transaction: {reply!r}"
                )
            for result in reply:
                if isinstance(result, Exception) and not errors_ok:
                    raise RedisCommandError(f"Redis at {self._where} refused: {result}")
            return reply

        result: Deferred[list[Any]] = self._guard(link, committed).addCallback(replies)
        return result

    def _decode(self, entry_id: str, fields: Any) -> Event | None:
        try:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            retry = values.get("retry")
            item = Item.create(
                values["channel"],
                values.get("event"),
                text=values.get("data", ""),
                retry=int(retry) if retry is not None else None,
            )
            return item.framed(entry_id)
        except (KeyError, TypeError, ValueError) as e:
            self.log.warn(
                "Skipping stream entry {id} that is not an event ({error})",
                id=entry_id,
                error=_describe(e),
            )
            return None

    def _deliver(self, entries: Sequence[Any]) -> None:
        for entry_id, fields in entries:
            if self._stopping:
                # on_event stopped the bus: deliver no more.
                return
            self._cursor = entry_id
            if self._added is not None:
                self._added += 1
            event = self._decode(entry_id, fields)
            if event is None:
                continue
            self.history.append(event)
            on_event = self.on_event
            if on_event is not None:
                try:
                    on_event(event)
                except Exception:
                    self.log.failure("on_event failed for stream entry {id}", id=entry_id)

    # Publishing

    def publish(self, items: Sequence[Item]) -> Deferred[list[str]]:
        """
        Store a batch of items (validated, without ids) in the stream, all or
        none (one C{MULTI}/C{EXEC}). The events reach this node's subscribers
        through the reader, like every other node's.

        @return: a Deferred of the events' stream ids, in order. It errbacks
            with L{RedisUnavailable} when Redis is not connected (nothing
            stored) or the connection failed before Redis answered (maybe
            stored), and with L{RedisCommandError} when Redis refused.
        @raise BatchTooLarge: for more items than C{history_size}; nothing
            is stored.
        """
        commands = [self._xadd(item) for item in items]
        if not commands:
            return succeed([])
        if len(commands) > self.history_size:
            raise BatchTooLarge(
                f"a batch of {len(commands)} events is more than the history holds"
                f" ({self.history_size}, --history): its first events would be trimmed"
                f" before any node read them; publish at most {self.history_size} at once"
            )
        link = self._publisher
        if link is None or not self.ready or link.closed or not link.proto.connected:
            return fail(
                RedisUnavailable(f"Redis at {self._where} is not connected; nothing was stored")
            )
        if self.history_ttl:
            horizon = int((self._clock.seconds() - self.history_ttl) * 1000)
            commands.append(["XTRIM", self.stream, "MINID", "~", horizon])
        count = len(items)

        def unsure(f: Failure) -> Failure:
            if f.check(RedisUnavailable):
                # Sent, but no answer came: Redis may have stored the batch.
                raise RedisUnavailable(
                    f"{f.value}; the events may or may not have been stored"
                ) from f.value
            return f

        return self._transaction(link, commands).addCallbacks(
            lambda replies: [str(stream_id) for stream_id in replies[:count]], unsure
        )

    def _xadd(self, item: Item) -> list[Any]:
        args: list[Any] = ["XADD", self.stream, "MAXLEN", "~", self.history_size, "*"]
        args += ["channel", item.channel, "data", item.payload]
        if item.event is not None:
            args += ["event", item.event]
        if item.retry is not None:
            args += ["retry", item.retry]
        return args
