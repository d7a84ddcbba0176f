"""
The command client: one Redis connection over txredisapi's protocol, with a
deadline on every reply and transactions sent in one write.

Why not more of txredisapi: importing it imports (and so installs) the
global reactor, which would break C{--reactor} choices made later, so it is
imported on first use. Its connection helpers (C{Connection},
C{lazyConnection}, pools) are not used: they schedule on the global reactor,
log every retry, and their backoff cannot be capped per bus or driven by a
test clock. Only its protocol is, over an endpoint that L{Connections}
connects and the bus retries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import (
    IAddress,
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory
from twisted.python.failure import Failure

from .._reactor import default_reactor
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


def _txredisapi() -> Any:
    """
    Import txredisapi on first use: it imports the global reactor at import
    time, and importing this package must not.
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
        # own login calls back into a pool factory this is not; Connections
        # logs in.
        proto = self._protocol_class(charset="utf-8", convertNumbers=False)
        proto.factory = self
        return proto


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
    """

    def __init__(
        self,
        proto: Any,
        *,
        where: str,
        clock: IReactorTime,
        timeout: float,
        on_give_up: Callable[[str], object] | None = None,
    ) -> None:
        self.where = where
        self.closed = False
        self._proto = proto
        self._clock = clock
        self._timeout = timeout
        self._on_give_up = on_give_up
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

    @property
    def connected(self) -> bool:
        """Open, so that a command can be written now."""
        return not self.closed and bool(self._proto.connected)

    def _lost(self) -> None:
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
        if not self.closed and self._proto.transport is not None:
            self._proto.transport.abortConnection()

    async def login(self, address: RedisAddress, name: str) -> None:
        """C{AUTH} and C{SELECT} as C{address} says, then C{CLIENT SETNAME name}."""
        if address.password is not None:
            user = [address.username] if address.username else []
            await self.call("AUTH", *user, address.password)
        if address.db:
            await self.call("SELECT", address.db)
        await self.call("CLIENT", "SETNAME", name)

    def call(self, *args: Any, timeout: float | None = None) -> Deferred[Any]:
        """
        Send one command; its reply, or L{RedisUnavailable} when the
        connection fails or Redis does not answer within the timeout (the
        link's, unless C{timeout} is given), and L{RedisCommandError} when
        Redis refuses it.
        """
        try:
            d: Deferred[Any] = self._proto.execute_command(*args)
        except Exception as e:
            return fail(RedisUnavailable(f"not connected to Redis at {self.where}: {e}"))
        return self._guard(d, timeout)

    def transaction(
        self, commands: Sequence[Sequence[Any]], errors_ok: bool = False
    ) -> Deferred[list[Any]]:
        """
        Run C{commands} in one C{MULTI}/C{EXEC}, sent in one write; the list
        of their replies. Errbacks with L{RedisCommandError} if any failed,
        unless C{errors_ok}: then a failed command's reply is its exception.
        """
        proto = self._proto
        queued: list[Deferred[Any]] = []
        try:
            queued.append(proto.execute_command("MULTI"))
            queued.extend(proto.execute_command(*args) for args in commands)
            committed: Deferred[Any] = proto.execute_command("EXEC")
        except Exception as e:
            # txredisapi refuses to write when not connected. A MULTI already
            # written without its EXEC is discarded by Redis with the connection.
            self.abort()
            return fail(RedisUnavailable(f"not connected to Redis at {self.where}: {e}"))
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
        d.addTimeout(limit, self._clock)
        tx = _txredisapi()

        def failed(f: Failure) -> Failure:
            if f.check(defer.TimeoutError):
                if not self.closed and self._on_give_up is not None:
                    self._on_give_up(f"no reply within {limit:g}s")
                self.abort()
                raise RedisUnavailable(f"no reply from Redis at {self.where} within {limit:g}s")
            if f.check(tx.ResponseError):
                raise self.refused(f.value)
            if f.check(tx.ConnectionError):
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
    ) -> None:
        self.address = address
        self.where = str(endpoint) if endpoint is not None else str(address)
        self._name = name
        self._endpoint = endpoint
        self._tls = tls
        self._reactor = reactor
        self._on_give_up = on_give_up
        self._links: set[Link] = set()

    async def open(self, role: str, timeout: float) -> Link:
        """
        A new link, connected and logged in within C{timeout} seconds per step.

        @raise RedisUnavailable: when the connection closed at once, or a
            reply did not come in time.
        @raise RedisCommandError: when Redis refused to log in.
        """
        clock = default_reactor(self._reactor)
        endpoint = self._endpoint
        if endpoint is None:
            endpoint = self._endpoint = endpoint_for(self.address, clock, timeout, self._tls)
        connecting = endpoint.connect(_LinkFactory(_txredisapi().RedisProtocol))
        connecting.addTimeout(timeout, clock)
        proto: Any = await connecting
        if not proto.connected:
            raise RedisUnavailable(f"the connection to Redis at {self.where} closed at once")
        link = Link(
            proto, where=self.where, clock=clock, timeout=timeout, on_give_up=self._on_give_up
        )
        # Held from now on, so that close() drops it while it logs in too.
        self._links.add(link)
        link.when_closed().addCallback(lambda _: self._links.discard(link))
        await link.login(self.address, f"{self._name}-{role}")
        return link

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
