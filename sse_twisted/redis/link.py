"""
The command client: one Redis connection (L{RespProtocol}), with a deadline
on every reply and transactions sent in one write; and L{Connections}, which
opens such links and drops them all at once.

Connecting only: retrying, with backoff, is L{sse_twisted.redis.bus}'s (a
C{ClientService}), and nothing here schedules on the global reactor, so a
test drives it all on a C{Clock}.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.python.failure import Failure

from .._reactor import default_reactor
from ..stats import Histogram
from .resp import ReplyError, RespFactory, RespProtocol
from .url import RedisAddress

__all__ = [
    "Connections",
    "Link",
    "RedisCommandError",
    "RedisUnavailable",
    "describe",
    "endpoint_for",
    "info_field",
]


class RedisUnavailable(ConnectionError):
    """Redis is not connected, or the connection failed before it answered."""


class RedisCommandError(RuntimeError):
    """Redis answered with an error (a wrong password, a key of another type...)."""


def describe(error: BaseException) -> str:
    """An exception as one short phrase for a log line: its type and message."""
    text = str(error).strip()
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def info_field(info: object, name: str) -> str | None:
    """One field of an C{INFO} reply (C{name:value} lines); C{None} if absent."""
    if not isinstance(info, str):
        return None
    for line in info.splitlines():
        key, sep, value = line.partition(":")
        if sep and key == name:
            return value.strip()
    return None


def endpoint_for(
    address: RedisAddress,
    clock: IReactorTime,
    timeout: float,
    tls: IOpenSSLClientConnectionCreator | None = None,
) -> IStreamClientEndpoint:
    """
    The endpoint of C{address}: TCP to its host and port, in TLS for
    C{rediss://} (C{tls}, or the host name checked against the system's
    trust store).
    """
    # Imported here: the TLS helpers import pyOpenSSL, needed only for rediss://.
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
    from twisted.internet.ssl import optionsForClientTLS

    endpoint: IStreamClientEndpoint = HostnameEndpoint(
        clock, address.host, address.port, timeout=timeout
    )
    if address.tls:
        endpoint = wrapClientTLS(
            tls if tls is not None else optionsForClientTLS(address.host), endpoint
        )
    return endpoint


class Link:
    """
    One Redis connection: commands with a deadline, transactions in one
    write, and a way to wait for its end.

    A command with no reply in time aborts the connection: the replies that
    follow would be out of step with their commands.

    @ivar where: how this Redis is named in errors and logs.
    @ivar closed: the connection is gone, and every command still waiting
        for a reply has failed.
    @param roundtrips: where each timed command's (or transaction's) round
        trip is observed, in seconds; blocking reads are not timed.
    """

    def __init__(
        self,
        proto: RespProtocol,
        *,
        where: str,
        clock: IReactorTime,
        timeout: float,
        on_give_up: Callable[[str], object] | None = None,
        roundtrips: Histogram | None = None,
    ) -> None:
        self.where = where
        self.closed = False
        self._proto = proto
        self._clock = clock
        self._timeout = timeout
        self._on_give_up = on_give_up
        self._waiters: list[Deferred[None]] = []
        # The protocol fails the commands still waiting before it calls
        # on_lost, so "closed" means those have failed too (a stop() that
        # fired first would leave their timeouts pending).
        proto.on_lost = self._lost
        if roundtrips is not None:
            observe = roundtrips.observe
            seconds = clock.seconds
            proto.on_reply = lambda sent: observe(seconds() - sent)

    @property
    def connected(self) -> bool:
        """Open, so that a command can be written now."""
        return not self.closed and not self._proto.closed

    @property
    def transport(self) -> ITransport | None:
        """The connection's transport."""
        return self._proto.transport

    def _lost(self, reason: Failure) -> None:
        self.closed = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def when_closed(self) -> Deferred[None]:
        """Fires once the connection is gone (at once if it is)."""
        if self.closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d

    def abort(self) -> None:
        """Drop the connection now; commands waiting for replies fail."""
        transport = self._proto.transport
        if not self.closed and transport is not None:
            transport.abortConnection()  # type: ignore[attr-defined]

    async def login(self, address: RedisAddress, name: str) -> None:
        """C{AUTH} and C{SELECT} as C{address} says, then C{CLIENT SETNAME name}."""
        commands: list[list[Any]] = []
        if address.password is not None:
            user = [address.username] if address.username else []
            commands.append(["AUTH", *user, address.password])
        if address.db:
            commands.append(["SELECT", address.db])
        commands.append(["CLIENT", "SETNAME", name])
        # Pipelined: one round trip. Each reply is checked, in order, so a
        # refused AUTH is the error reported.
        replies = [
            self._guard(d) for d in self._proto.pipeline(commands, sent=self._clock.seconds())
        ]
        try:
            for d in replies:
                await d
        finally:
            for d in replies:
                d.addErrback(lambda _: None)

    def call(self, *args: Any, timeout: float | None = None, timed: bool = True) -> Deferred[Any]:
        """
        Send one command; its reply, or L{RedisUnavailable} when the
        connection fails or Redis does not answer within the timeout (the
        link's, unless C{timeout} is given), and L{RedisCommandError} when
        Redis refuses it. C{timed=False} keeps a blocking command out of the
        round-trip measure.
        """
        sent = self._clock.seconds() if timed else None
        return self._guard(self._proto.execute(*args, sent=sent), timeout)

    def pipeline(
        self, commands: Sequence[Sequence[Any]], timeout: float | None = None
    ) -> list[Deferred[Any]]:
        """
        Send C{commands} in one write (not a transaction: Redis runs them in
        order, others may run between); a guarded Deferred per reply. Not
        timed: it may hold a blocking read.
        """
        return [self._guard(d, timeout) for d in self._proto.pipeline(commands)]

    def transaction(
        self, commands: Sequence[Sequence[Any]], errors_ok: bool = False
    ) -> Deferred[list[Any]]:
        """
        Run C{commands} in one C{MULTI}/C{EXEC}, sent in one write; the list
        of their replies. Errbacks with L{RedisCommandError} if any failed,
        unless C{errors_ok}: then a failed command's reply is its exception.
        """
        sent = self._clock.seconds()
        *queued, committed = self._proto.pipeline([["MULTI"], *commands, ["EXEC"]], sent=sent)
        for d in queued:
            # "QUEUED", or an error that EXEC reports as EXECABORT anyway.
            d.addErrback(lambda _: None)

        def replies(reply: Any) -> list[Any]:
            if not isinstance(reply, list):
                raise RedisCommandError(f"Redis at {self.where} discarded a transaction: {reply!r}")
            for result in reply:
                if isinstance(result, Exception) and not errors_ok:
                    raise self.refused(result)
            return reply

        result: Deferred[list[Any]] = self._guard(committed).addCallback(replies)
        return result

    def refused(self, error: object) -> RedisCommandError:
        """The exception for a command that Redis answered with C{error}."""
        return RedisCommandError(f"Redis at {self.where} refused: {error}")

    def _guard(self, d: Deferred[Any], timeout: float | None = None) -> Deferred[Any]:
        limit = self._timeout if timeout is None else timeout
        clock = self._clock
        expired = False

        def due() -> None:
            # Twisted runs due timers before it reads input: after one reactor
            # turn longer than the limit (a node busy with a large fan-out),
            # the answer may be in the socket, unread. Look once more, after
            # the next turn has read it, before giving the link up.
            timer[0] = clock.callLater(0, give_up)

        def give_up() -> None:
            nonlocal expired
            if not d.called:
                expired = True
                d.cancel()

        def settled(result: Any) -> Any:
            if timer[0].active():
                timer[0].cancel()
            return result

        timer = [clock.callLater(limit, due)]
        d.addBoth(settled)

        def failed(f: Failure) -> Failure:
            if expired and f.check(defer.CancelledError):
                if not self.closed and self._on_give_up is not None:
                    self._on_give_up(f"no reply within {limit:g}s")
                self.abort()
                raise RedisUnavailable(f"no reply from Redis at {self.where} within {limit:g}s")
            if f.check(ReplyError):
                raise self.refused(f.value)
            if f.check(ConnectionClosed):
                raise RedisUnavailable(f"lost the connection to Redis at {self.where}")
            return f

        return d.addErrback(failed)


class Connections:
    """
    The links of one client to one Redis: opens them (connected, logged in,
    named after their role) and drops them all at once.

    @param address: where Redis is and how to log in.
    @param name: the prefix of the links' C{CLIENT SETNAME}s.
    @param endpoint: what to connect to instead of C{address}'s host and
        port; by default L{endpoint_for} C{address}, made at the first
        connection.
    @param reactor: an C{IReactorTime} (and, without C{endpoint}, a
        reactor); the global one when C{None}.
    @param on_give_up: told why, when a link got no reply in time and was
        given up for it (see L{Link}).
    @param roundtrips: where the links observe their round trips.
    @ivar where: how this Redis is named in errors and logs (never with a
        password).
    """

    def __init__(
        self,
        address: RedisAddress,
        name: str,
        *,
        endpoint: IStreamClientEndpoint | None = None,
        tls: IOpenSSLClientConnectionCreator | None = None,
        reactor: Any = None,
        on_give_up: Callable[[str], object] | None = None,
        roundtrips: Histogram | None = None,
    ) -> None:
        self.address = address
        self.where = str(endpoint) if endpoint is not None else str(address)
        self._name = name
        self._endpoint = endpoint
        self._tls = tls
        self._reactor = reactor
        self._on_give_up = on_give_up
        self._roundtrips = roundtrips
        self._links: set[Link] = set()

    async def open(self, role: str, timeout: float, login: bool = True) -> Link:
        """
        A new link, connected (and, unless C{login=False}, logged in) within
        C{timeout} seconds per step.

        @raise RedisUnavailable: when the connection closed at once, or a
            reply did not come in time.
        @raise RedisCommandError: when Redis refused to log in.
        """
        clock = default_reactor(self._reactor)
        endpoint = self._endpoint
        if endpoint is None:
            endpoint = self._endpoint = endpoint_for(self.address, clock, timeout, self._tls)
        connecting = endpoint.connect(RespFactory())
        connecting.addTimeout(timeout, clock)
        proto: RespProtocol = await connecting  # type: ignore[assignment]  # RespFactory's
        if proto.closed:
            raise RedisUnavailable(f"the connection to Redis at {self.where} closed at once")
        link = Link(
            proto,
            where=self.where,
            clock=clock,
            timeout=timeout,
            on_give_up=self._on_give_up,
            roundtrips=self._roundtrips,
        )
        # Held from now on, so that close() drops it while it logs in too.
        self._links.add(link)
        link.when_closed().addCallback(lambda _: self._links.discard(link))
        if login:
            await self.login(link, role)
        return link

    async def login(self, link: Link, role: str) -> None:
        """Log C{link} in as this client's C{role}."""
        await link.login(self.address, f"{self._name}-{role}")

    def abort(self) -> None:
        """Drop every link now."""
        for link in list(self._links):
            link.abort()

    def close(self) -> Deferred[None]:
        """Drop every link; fires once all are closed."""
        links = list(self._links)
        for link in links:
            link.abort()
        return gatherResults([link.when_closed() for link in links]).addCallback(lambda _: None)
