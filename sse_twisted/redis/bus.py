"""
L{RedisBus}: the relay over one Redis Stream (the why of its behaviour, and
where it diverges from what one might expect: the package docstring).

Connecting, losing Redis and getting it back are Twisted's C{ClientService}
with a capped, jittered backoff on the bus's clock; each connected period
(a L{Session}) opens two connections (publishing, reading) and catches up
while C{ClientService} prepares it, then the bus reads and delivers until a
fault. Publishing is one C{MULTI}/C{EXEC} of C{XADD}s on the publishing
connection.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IStreamClientEndpoint,
)
from twisted.internet.task import LoopingCall
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from zope.interface import provider

from .._reactor import default_reactor
from ..event import Event, Item
from ..outbox import held
from ..relay import BatchTooLarge
from ..stats import Histogram
from .entries import item_fields, stream_id_key
from .history import StreamHistory
from .link import Connections, Link, RedisUnavailable, describe, info_field
from .reader import StreamReader
from .session import Session, SessionEndpoint, SessionFactory
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


class _QuietClientService(ClientService):
    """
    C{ClientService} without its info line per retry: an outage logs one
    warning when it starts and one line when Redis is back (twistd writes
    info lines, so a line per retry would be a line per retry in the log);
    the retries are counted instead.
    """

    _log = Logger(observer=provider(ILogObserver)(lambda event: None))


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
    @ivar reconnects: times the bus connected again after a connected
        period ended (monitoring).
    @ivar read_events: stream entries read (monitoring).
    @ivar read_lag: seconds between Redis storing the newest entry of the
        last read and this node reading it, by Redis's clock and this
        node's; C{None} before the first entry (monitoring).
    @ivar roundtrips: seconds per round trip of the commands that do not
        block (a publish, a check, a read, a PING), in fixed buckets
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
        self.reconnects = 0
        self.read_events = 0
        self.read_lag: float | None = None
        self.roundtrips = Histogram()
        self.client_name = f"sse_twisted-{os.getpid()}-{os.urandom(3).hex()}"
        self._reactor = reactor
        self._connections = Connections(
            self.address,
            self.client_name,
            endpoint=endpoint,
            tls=tls,
            reactor=reactor,
            on_give_up=self._gave_up,
            roundtrips=self.roundtrips,
        )
        self._where = self._connections.where
        self._reader = StreamReader(stream, self.history)
        self._run_id: str | None = None
        self._publisher: Link | None = None
        self._service: ClientService | None = None
        self._sessions = 0
        self._loop: Deferred[None] | None = None
        self._stopping = False
        # When the current outage began (clock seconds), None while connected
        # and before the first attempt: one warning per outage, one info back.
        self._outage_since: float | None = None
        # Why the last connection was given up, when this package gave it up.
        self._fault: str | None = None
        self._pinger: LoopingCall | None = None
        self._session: Session | None = None
        self._ping_pending = False

    @property
    def last_id(self) -> str | None:
        """The stream id the reader continues after."""
        return self._reader.cursor

    @property
    def _clock(self) -> Any:
        return default_reactor(self._reactor)

    # Lifecycle

    @property
    def connected(self) -> bool:
        """Both connections are up, logged in and caught up (monitoring)."""
        session = self._session
        return (
            session is not None
            and session.publisher is not None
            and session.reader is not None
            and session.publisher.connected
            and session.reader.connected
        )

    def start(self) -> None:
        """Connect, and keep connecting; L{ready} turns True once reading."""
        if self._loop is not None:
            raise RuntimeError("RedisBus is already started; stop() it first")
        self._stopping = False
        self._outage_since = None
        endpoint = SessionEndpoint(
            self._connections,
            self.command_timeout,
            on_attempt=self._attempting,
            on_failure=self._attempt_failed,
        )
        service = self._service = _QuietClientService(
            endpoint,
            SessionFactory(),
            retryPolicy=self._retry_policy(),
            clock=self._clock,
            prepareConnection=self._prepare,
        )
        service.startService()
        loop = Deferred.fromCoroutine(self._run(service))
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
            # Cancelling runs the loop's cleanup at once: the pending command
            # is cancelled and the connections aborted.
            loop.cancel()
        service, self._service = self._service, None
        # The retry timer or the attempt is cancelled, the connections aborted.
        stopping = [service.stopService()] if service is not None else []
        stopping.append(self._connections.close())
        return gatherResults(stopping).addCallback(lambda _: None)

    def _loop_ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("The Redis reader stopped unexpectedly", failure)

    def _retry_policy(self) -> Callable[[int], float]:
        """
        Doubling from L{initial_backoff}, capped at C{max_backoff}
        (C{backoffPolicy}), times a jitter in (0.5, 1]: nodes that lost the
        same Redis do not all come back in step. The jitter scales with the
        delay (C{backoffPolicy}'s own adds up to a second, which would swamp
        a first retry of 0.1 s).
        """
        capped = backoffPolicy(
            self.initial_backoff, self.max_backoff, factor=2.0, jitter=lambda: 0.0
        )
        return lambda failures: capped(failures - 1) * (1 - random.random() / 2)

    def _attempting(self) -> None:
        self.connect_attempts += 1

    def _attempt_failed(self, error: BaseException) -> None:
        """An attempt failed (connecting or preparing): maybe the start of an outage."""
        if self._stopping:
            return
        reason = describe(error)
        if self._fault is not None:
            reason, self._fault = self._fault, None
        if self._outage_since is None:
            # Unreachable at the first attempt (a lost session logged already).
            self.outages += 1
            self._outage_since = self._clock.seconds()
            self.log.warn(_UNREACHABLE, where=self._where, reason=reason, cap=self.max_backoff)

    def _prepare(self, proto: IProtocol) -> Deferred[None]:
        """
        C{ClientService}'s C{prepareConnection}: log the publishing
        connection in, open the reading one, and catch up. A failure drops
        both (C{ClientService} would leave them open) and is the attempt's:
        retried after the backoff.
        """
        session: Session = proto.itself  # type: ignore[attr-defined]  # a proxy of one

        def failed(f: Failure) -> Failure:
            session.abort()
            self._attempt_failed(f.value or RuntimeError("failed"))
            return f

        return Deferred.fromCoroutine(self._catch_up(session)).addErrback(failed)

    async def _catch_up(self, session: Session) -> None:
        publisher = session.publisher
        assert publisher is not None
        await self._connections.login(publisher, "publish")
        read_link = session.reader = await self._connections.open("read", self.command_timeout)
        run_id = info_field(await read_link.call("INFO", "server"), "run_id")
        session.restarted = self._run_id is not None and run_id != self._run_id
        self._run_id = run_id
        if session.restarted:
            # Its entries-added may not be the count this node followed.
            self._reader.added = None
        resets = self.resets
        if self._reader.cursor is None:
            await self._reader.rebuild(read_link)
        # Before turning ready, so that a Redis that lost our place is noticed
        # (and the mirror rebuilt) before anyone is answered from the mirror.
        session.batch = await self._read(read_link)
        session.rebuilt = self.resets != resets
        session.prepared = True

    async def _run(self, service: ClientService) -> None:
        """Each session C{ClientService} connects: serve it until it ends."""
        while True:
            session: Session = await service.whenConnected()  # type: ignore[assignment]
            try:
                await self._serve(session)
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
            self._teardown()
            self.outages += 1
            self._outage_since = self._clock.seconds()
            self.log.warn(_LOST, where=self._where, reason=reason, cap=self.max_backoff)
            # Until C{ClientService} has seen it go, it would hand it out again.
            await session.when_closed()

    def _teardown(self) -> None:
        self.ready = False
        self._publisher = None
        session, self._session = self._session, None
        pinger, self._pinger = self._pinger, None
        if pinger is not None and pinger.running:
            pinger.stop()
        if session is not None:
            session.abort()

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

    async def _serve(self, session: Session) -> None:
        """One connected period, prepared: deliver, then read until a fault."""
        publisher, read_link = session.publisher, session.reader
        assert publisher is not None and read_link is not None
        self._session = session
        if self._sessions:
            self.reconnects += 1
        self._sessions += 1
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
            restarted=" (it restarted since last seen)" if session.restarted else "",
            stream=self.stream,
            held=len(self.history),
            cursor=self._reader.cursor,
            rebuilt=" (history rebuilt)" if session.rebuilt else "",
        )
        batch, session.batch = session.batch, []
        timeout = self.block_ms / 1000 + self.command_timeout
        while not self._stopping:
            self._deliver(batch)
            if self._stopping or read_link.closed:
                return
            batch = await self._read(read_link, block=timeout)

    async def _read(self, link: Link, block: float | None = None) -> list[Any]:
        """
        The next entries, waiting for some up to L{block_ms} when C{block}
        (the reply's deadline, seconds); when unread ones were lost before
        them, count it and tell L{on_gap} first (the mirror is already
        restarted).
        """
        if block is None:
            batch, gap = await self._reader.read(link, self.read_count)
        else:
            batch, gap = await self._reader.read_blocking(
                link, self.read_count, self.block_ms, block
            )
        if batch:
            self.read_events += len(batch)
            newest_ms = stream_id_key(batch[-1][0])[0]
            self.read_lag = max(0.0, self._clock.seconds() - newest_ms / 1000)
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
        # The entries of one read go to each subscriber in one write.
        with held() if len(entries) > 1 else nullcontext():
            self._deliver_each(entries)

    def _deliver_each(self, entries: Sequence[Any]) -> None:
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
