"""
One connected period of a bus, as Twisted's C{ClientService} sees it: the
endpoint it connects through, and the protocol it holds.

C{ClientService} keeps one connection up: it connects, calls
C{prepareConnection} (here: log in, open the reading connection, catch up),
hands the result to C{whenConnected} waiters, and after a failure or a loss
retries on its clock with the bus's backoff policy. A bus has two
connections, so what C{ClientService} holds is a L{Session}: the publishing
link (connected by L{SessionEndpoint}) and, once prepared, the reading link.

One divergence from plain use: C{ClientService} (Twisted 26.10) accepts a
lost connection only once the connection is prepared. A connection lost
while C{prepareConnection} runs, or after it failed, reaches it as an input
its state machine has no transition for (C{automat.NoTransition}, raised in
C{connectionLost}). So the L{Session} is not the socket's protocol: it tells
C{ClientService} of the loss only when prepared; a preparation that fails
drops its links itself (C{ClientService} would leave them open), and the
failure is the attempt's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure
from zope.interface import implementer

from .link import Connections, Link

__all__ = ["Session", "SessionEndpoint", "SessionFactory"]


class Session(Protocol):
    """
    One connected period: the publishing link, and once prepared the
    reading link and what the first read returned.

    @ivar publisher: the publishing link (the connection C{ClientService}
        keeps up).
    @ivar reader: the reading link, opened while preparing.
    @ivar batch: the entries of the first read, made while preparing, to
        deliver first.
    @ivar restarted: Redis restarted since the previous session.
    @ivar rebuilt: the mirror was rebuilt while preparing.
    @ivar prepared: C{ClientService} holds this session as connected.
    """

    def __init__(self) -> None:
        self.publisher: Link | None = None
        self.reader: Link | None = None
        self.batch: list[Any] = []
        self.restarted = False
        self.rebuilt = False
        self.prepared = False
        self._proxy: IProtocol | None = None
        self._closed = False
        self._waiters: list[Deferred[None]] = []

    @property
    def itself(self) -> Session:
        """
        This session, not the proxy C{ClientService} wraps around it (which
        passes attribute lookups on, but keeps attributes set on it).
        """
        return self

    def attach(self, publisher: Link, proxy: IProtocol) -> None:
        """
        Hold C{publisher}; C{proxy} is the protocol C{ClientService} built
        around this session, told when the publisher closes once prepared.
        """
        self.publisher = publisher
        self._proxy = proxy
        publisher.when_closed().addCallback(self._publisher_closed)

    def _publisher_closed(self, _: object) -> None:
        reader = self.reader
        if reader is not None:
            # Either connection failing ends the session.
            reader.abort()
        self._closed = True
        proxy = self._proxy
        if self.prepared and proxy is not None:
            # ClientService moves on: a retry after its backoff, or stopped.
            proxy.connectionLost(Failure(ConnectionDone("the Redis connection closed")))
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def abort(self) -> None:
        """Drop both links now."""
        for link in (self.reader, self.publisher):
            if link is not None:
                link.abort()

    def when_closed(self) -> Deferred[None]:
        """Fires once the publisher is closed and C{ClientService} was told."""
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters.append(d)
        return d


class SessionFactory(Factory):
    """Builds L{Session}s for C{ClientService}, quietly."""

    noisy = False
    protocol = Session


@implementer(IStreamClientEndpoint)
class SessionEndpoint:
    """
    What C{ClientService} connects through: the publishing connection,
    opened by L{Connections} (so within the command timeout), not yet
    logged in (C{prepareConnection} does that).

    @param on_attempt: called at each attempt, before connecting.
    @param on_failure: called with the exception when an attempt fails to
        connect.
    """

    def __init__(
        self,
        connections: Connections,
        timeout: float,
        on_attempt: Callable[[], object],
        on_failure: Callable[[BaseException], object],
    ) -> None:
        self._connections = connections
        self._timeout = timeout
        self._on_attempt = on_attempt
        self._on_failure = on_failure

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Open the publishing connection; the protocol C{protocolFactory}
        (C{ClientService}'s proxy of a L{SessionFactory}) builds, holding it.
        """
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, factory: IProtocolFactory) -> IProtocol:
        self._on_attempt()
        try:
            link = await self._connections.open("publish", self._timeout, login=False)
        except BaseException as e:
            self._on_failure(e)
            raise
        proxy = factory.buildProtocol(None)  # type: ignore[arg-type]
        assert proxy is not None
        transport = link.transport
        assert transport is not None
        proxy.makeConnection(transport)
        # The proxy passes attribute lookups on to the Session it wraps.
        proxy.attach(link, proxy)  # type: ignore[attr-defined]
        return proxy

    def __str__(self) -> str:
        return self._connections.where
