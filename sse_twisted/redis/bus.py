"""
L{RedisBus}: the relay over one Redis Stream (the why of its behaviour, and
where it diverges from what one might expect: the package docstring).

Connecting, losing Redis and getting it back are one loop with capped,
jittered backoff; each connected period opens two connections (publishing,
reading), catches up, then reads and delivers until a fault. Publishing is
one C{MULTI}/C{EXEC} of C{XADD}s on the publishing connection.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator, IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._reactor import default_reactor
from ..event import Event, Item
from ..relay import BatchTooLarge
from .entries import item_fields
from .history import StreamHistory
from .link import Connections, Link, RedisUnavailable, describe, info_field
from .reader import StreamReader
from .url import parse_redis_url

__all__ = ["RedisBus"]


_LOST = (
    "Lost Redis at {where} ({reason}); reconnecting with backoff up to {cap}s,"
    " publishing answers 503 until then"
)
_UNREACHABLE = (
    "Redis at {where} is unreachable ({reason}); retrying with backoff up to {cap}s,"
    " not ready until it answers"
)


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
        the global one when C{None}.
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
        self._connections = Connections(
            self.address,
            self.client_name,
            endpoint=endpoint,
            tls=tls,
            reactor=reactor,
            on_give_up=self._gave_up,
        )
        self._where = self._connections.where
        self._reader = StreamReader(stream, self.history)
        self._run_id: str | None = None
        self._publisher: Link | None = None
        self._loop: Deferred[None] | None = None
        self._stopping = False
        # When the current outage began (clock seconds), None while connected
        # and before the first attempt: one warning per outage, one info back.
        self._outage_since: float | None = None
        # Why the last connection was given up, when this package gave it up.
        self._fault: str | None = None
        self._pinger: LoopingCall | None = None
        self._ping_pending = False

    @property
    def last_id(self) -> str | None:
        """The stream id the reader continues after."""
        return self._reader.cursor

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
        return self._connections.close()

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
                reason = describe(e)
            if self._stopping:
                # stop() was called from inside the session (by on_event, say).
                self._teardown()
                return
            if self._fault is not None:
                # This package gave the connection up (no reply in time): that
                # is the cause, not the abort it led to.
                reason, self._fault = self._fault, None
            was_ready = self.ready
            self._teardown()
            if was_ready or self._outage_since is None:
                # An outage begins (else it goes on: counted, not logged).
                if was_ready:
                    failures = 0
                self.outages += 1
                self._outage_since = self._clock.seconds()
                self.log.warn(
                    _LOST if was_ready else _UNREACHABLE,
                    where=self._where,
                    reason=reason,
                    cap=self.max_backoff,
                )
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
        self._connections.abort()

    def _ping(self, link: Link) -> None:
        """
        One PING at a time on the publishing connection; no answer within
        C{command_timeout} gives the connection up, which ends the session:
        C{ready} turns False and the health check says so.
        """
        if self._ping_pending or link.closed:
            return
        self._ping_pending = True

        def done(_: object) -> None:
            self._ping_pending = False

        link.call("PING").addBoth(done)

    def _gave_up(self, why: str) -> None:
        self._fault = why

    async def _session(self) -> None:
        """One connected period: connect, catch up, then read until a fault."""
        publisher = await self._connections.open("publish", self.command_timeout)
        read_link = await self._connections.open("read", self.command_timeout)
        run_id = info_field(await read_link.call("INFO", "server"), "run_id")
        restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if restarted:
            # Its entries-added may not be the count this node followed.
            self._reader.added = None
        resets = self.resets
        if self._reader.cursor is None:
            await self._reader.rebuild(read_link)
        # Before turning ready, so that a Redis that lost our place is noticed
        # (and the mirror rebuilt) before anyone is answered from the mirror.
        batch = await self._read(read_link)
        # Either connection failing ends the session; the reading link is the one
        # waiting, so the publisher's end aborts it.
        publisher.when_closed().addCallback(lambda _: read_link.abort())
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
            cursor=self._reader.cursor,
            rebuilt=" (history rebuilt)" if self.resets != resets else "",
        )
        while not self._stopping:
            self._deliver(batch)
            if self._stopping:
                return
            if len(batch) < self.read_count:
                # Caught up: wait for news.
                await self._reader.wait(
                    read_link, self.block_ms, self.block_ms / 1000 + self.command_timeout
                )
            batch = await self._read(read_link)

    async def _read(self, link: Link) -> list[Any]:
        """
        The next entries; when unread ones were lost before them, count it
        and tell L{on_gap} first (the mirror is already restarted).
        """
        batch, gap = await self._reader.read(link, self.read_count)
        if gap is not None:
            self.resets += 1
            self.gaps += 1
            on_gap = self.on_gap
            if on_gap is not None:
                try:
                    on_gap(gap.last_id, gap.reason)
                except Exception:
                    self.log.failure("on_gap failed after stream entry {id}", id=gap.last_id)
        return batch

    def _deliver(self, entries: Sequence[Any]) -> None:
        for entry_id, fields in entries:
            if self._stopping:
                # on_event stopped the bus: deliver no more.
                return
            event = self._reader.take(entry_id, fields)
            if event is None:
                continue
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
        xadd = ["XADD", self.stream, "MAXLEN", "~", self.history_size, "*"]
        commands: list[list[Any]] = [[*xadd, *item_fields(item)] for item in items]
        if not commands:
            return succeed([])
        if len(commands) > self.history_size:
            raise BatchTooLarge(
                f"a batch of {len(commands)} events is more than the history holds"
                f" ({self.history_size}, --history): its first events would be trimmed"
                f" before any node read them; publish at most {self.history_size} at once"
            )
        link = self._publisher
        if link is None or not self.ready or not link.connected:
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

        return link.transaction(commands).addCallbacks(
            lambda replies: [str(stream_id) for stream_id in replies[:count]], unsure
        )

    def transaction(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]:
        """
        Run C{commands} in one C{MULTI}/C{EXEC} on the publishing connection
        (for stores that share this Redis, such as idempotency keys); their
        replies, or L{RedisUnavailable} when not connected.
        """
        link = self._publisher
        if link is None or not self.ready or not link.connected:
            return fail(RedisUnavailable(f"Redis at {self._where} is not connected"))
        return link.transaction(commands)
