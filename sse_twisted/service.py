"""SSEService: listen on an endpoint; on stop, stop listening first, then drain."""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from .broker import SSEBroker

__all__ = ["SSEService"]


class SSEService(Service):
    """
    Serves C{factory} on the endpoint C{description} and drains C{broker} on
    stop.

    Stopping closes the listening port before draining, so that a
    reconnecting browser meets a refused connection and retries later, rather
    than an error status that would make EventSource give up for good.
    """

    log = Logger()

    def __init__(
        self,
        description: str,
        factory: IProtocolFactory,
        broker: SSEBroker,
        *,
        drain_timeout: float = 5.0,
        reactor: Any = None,
        banner: str = "",
    ) -> None:
        self.description = description
        self.factory = factory
        self.broker = broker
        self.drain_timeout = drain_timeout
        self.banner = banner
        self._reactor = reactor
        self.port: IListeningPort | None = None
        self._listening: Deferred[IListeningPort] | None = None

    def startService(self) -> None:
        super().startService()
        if self.broker.relay is not None:
            self.broker.relay.start()
        reactor = default_reactor(self._reactor)
        endpoint = serverFromString(reactor, self.description)
        self._listening = endpoint.listen(self.factory)
        self._listening.addCallbacks(self._listened, self._failed)

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        self.log.info(
            "sse_twisted listening on {address}{banner}",
            address=port.getHost(),
            banner=self.banner,
        )
        return port

    def _failed(self, failure: Failure) -> None:
        self.log.failure("Cannot listen on {description}", failure, description=self.description)
        reactor = default_reactor(self._reactor)
        if reactor.running:
            reactor.stop()

    def stopService(self) -> Deferred[None]:
        super().stopService()
        stopped: Deferred[Any] = succeed(None)
        if self.port is not None:
            port, self.port = self.port, None
            stopped = maybeDeferred(port.stopListening)
        stopped.addCallback(lambda _: self.broker.drain(self.drain_timeout))
        relay = self.broker.relay
        if relay is not None:
            stopped.addCallback(lambda _: relay.stop())
        stopped.addCallback(lambda _: self.log.info("sse_twisted drained and stopped"))
        return stopped
