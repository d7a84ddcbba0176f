"""
SSEService: a broker and a listening port (bound before twistd drops
privileges); on stop, stop listening first, then the broker (drain, then
its relay).
"""

from __future__ import annotations

import re
from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet.defer import CancelledError, Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from ._transport import accept_eagerly
from ._version import __version__
from .broker import SSEBroker

__all__ = ["DEFAULT_BACKLOG", "CannotListen", "ListeningService", "SSEService", "with_backlog"]


class CannotListen(SystemExit, Exception):
    """
    The service could not listen on its endpoint; the reason is already logged
    as one line.

    Both an C{Exception} and a C{SystemExit} (with code 1), on purpose. twistd's
    runner catches C{Exception} from starting the application to remove its
    pidfile (and, daemonised, to tell the waiting parent through the status
    pipe), then re-raises; Python then ends the process on an uncaught
    C{SystemExit} with its code and without a traceback. So C{twistd sse} on a
    port it cannot have exits 1 at once with the one log line, and an
    application that embeds the service can still catch it as an ordinary
    exception.
    """

    def __init__(self, description: str, reason: str) -> None:
        super().__init__(f"Cannot listen on {description}: {reason}")
        self.code = 1
        self.description = description
        self.reason = reason

    def __str__(self) -> str:
        return str(self.args[0])


#: The listen backlog of every socket the server opens unless its endpoint
#: says otherwise. Twisted's default is 50: in a reconnection storm (every
#: browser at once, after a deploy or a network blip) the kernel then drops
#: SYNs and each dropped client waits a second before it tries again. The
#: peers listen with 4,096 (Go with the kernel's maximum); Linux caps it at
#: net.core.somaxconn.
DEFAULT_BACKLOG = 4096

#: Endpoint types whose listening socket takes a C{backlog} parameter.
_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})
#: A C{backlog=} parameter (not inside an escaped value).
_HAS_BACKLOG = re.compile(r"(?:^|[^\\]):backlog=")


def with_backlog(description: str) -> str:
    """
    C{description} with L{DEFAULT_BACKLOG} for a socket it listens on, unless
    it gives its own C{backlog=}; other endpoint types as they are.
    """
    kind = description.split(":", 1)[0].lower()
    if kind in _BACKLOG_TYPES and ":" in description and not _HAS_BACKLOG.search(description):
        return f"{description}:backlog={DEFAULT_BACKLOG}"
    return description


def _reason(failure: Failure) -> str:
    """What went wrong, in words, without the endpoint repeated or a traceback."""
    error = failure.value
    if isinstance(error, CannotListenError) and error.socketError is not None:
        error = error.socketError
    return str(error).rstrip(".") or type(error).__name__


class SSEService(MultiService):
    """
    Serves C{factory} on the endpoint C{description} with C{broker}.

    Its children are a L{ListeningService} and the broker (whose own service
    starts and stops its relay), started in that order. Stopping closes the listening port
    before the broker drains, so that a reconnecting browser meets a refused
    connection and retries later, rather than an error status that would
    make EventSource give up for good.
    """

    log = Logger()

    def __init__(
        self,
        description: str,
        factory: IProtocolFactory,
        broker: SSEBroker,
        *,
        drain_timeout: float | None = None,
        reactor: Any = None,
        banner: str = "",
    ) -> None:
        super().__init__()
        self.broker = broker
        if drain_timeout is not None:
            broker.drain_timeout = drain_timeout
        self.listener = ListeningService(description, factory, reactor=reactor, banner=banner)
        # Listen first: a port that cannot be had stops the start before the
        # broker starts its relay.
        self.listener.setServiceParent(self)
        broker.setServiceParent(self)

    @property
    def port(self) -> IListeningPort | None:
        """The listening port, once bound."""
        return self.listener.port

    def stopService(self) -> Deferred[None]:
        """
        Stop listening, then stop the broker (drain every stream, then its
        relay), then any other child still running, last added first.
        """
        Service.stopService(self)
        stopped = self.listener.stopService()
        stopped.addCallback(lambda _: self.broker.stopService())
        stopped.addCallback(lambda _: self._stop_others())
        stopped.addCallback(lambda _: self.log.info("sse_twisted drained and stopped"))
        return stopped

    def _stop_others(self) -> Deferred[None]:
        others = [
            maybeDeferred(child.stopService)
            for child in reversed(list(self))
            if child is not self.listener and child is not self.broker and child.running
        ]
        return gatherResults(others, consumeErrors=True).addCallback(lambda _: None)


class ListeningService(StreamServerEndpointService):
    """
    Listens on the endpoint C{description}.

    The port is bound in C{privilegedStartService}, as Twisted's own
    C{StreamServerEndpointService} (which this builds on) does: twistd calls it
    before it drops privileges (C{--uid}), so a port below 1024 works, and a
    port that cannot be had raises L{CannotListen} there and then, which ends
    C{twistd} with status 1 instead of leaving a server that listens nowhere.
    """

    log = Logger()

    def __init__(
        self,
        description: str,
        factory: IProtocolFactory,
        *,
        reactor: Any = None,
        banner: str = "",
    ) -> None:
        # The endpoint is built when listening: the global reactor is only
        # looked up then (twistd installs the one chosen by --reactor first).
        super().__init__(None, factory)
        self.description = description
        self.banner = banner
        self._reactor = reactor
        self.port: IListeningPort | None = None

    def privilegedStartService(self) -> None:
        """
        Bind now; if that fails, log one line and raise L{CannotListen}.

        As C{StreamServerEndpointService.privilegedStartService} with
        C{_raiseSynchronously}, except that the failure is one line rather than
        a traceback. An endpoint whose C{listen} fails only later (one that
        waits on something) is logged the same way and stops the reactor.
        """
        Service.privilegedStartService(self)
        failed: list[Failure] = []
        synchronous = True

        def fail(failure: Failure) -> None:
            if failure.check(CancelledError):  # stopService before it listened
                return
            if synchronous:
                failed.append(failure)
                return
            self.log.critical("{message}", message=str(self._cannot_listen(failure)))
            reactor = default_reactor(self._reactor)
            if reactor.running:
                reactor.stop()

        try:
            if self.endpoint is None:
                reactor = default_reactor(self._reactor)
                self.endpoint = serverFromString(reactor, with_backlog(self.description))
            self._waitingForPort = self.endpoint.listen(self.factory)
        except Exception:
            failed.append(Failure())
        else:
            self._waitingForPort.addCallbacks(self._listened, fail)
        synchronous = False
        if failed:
            error = self._cannot_listen(failed[0])
            self.log.critical("{message}", message=str(error))
            raise error from None

    def _cannot_listen(self, failure: Failure) -> CannotListen:
        return CannotListen(self.description, _reason(failure))

    def _listened(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        accept_eagerly(port)
        accept_while_closing = getattr(self.factory, "accept_while_closing", None)
        if accept_while_closing is not None:
            accept_while_closing(port)
        self.log.info(
            "sse_twisted {version} listening on {address}{banner}",
            version=__version__,
            address=port.getHost(),
            banner=self.banner,
        )
        return port

    def stopService(self) -> Deferred[None]:
        """Stop listening (harmless when it never listened)."""
        stopped: Deferred[Any]
        if self._waitingForPort is not None:
            stopped = super().stopService()
            self._waitingForPort = None  # so that a restart listens again
        else:  # never started: nothing to stop listening on
            if self.running:
                Service.stopService(self)
            stopped = succeed(None)
        self.port = None
        return stopped
