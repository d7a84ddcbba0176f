"""A Site whose connections must finish sending request headers in time (slowloris)."""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel, _GenericHTTPChannelProtocol
from twisted.web.resource import IResource
from twisted.web.server import Site

__all__ = ["SSESite"]


class _HeaderDeadlineChannel(HTTPChannel):
    """
    An HTTPChannel that aborts a connection whose request headers are not all
    in C{headerTimeout} seconds after it opened (or after its previous
    request ended).

    twisted.web's own timeout restarts on every byte received, so a client
    sending one byte every few seconds would hold a connection for ever.
    """

    log = Logger()
    headerTimeout: float = 10.0
    _headerDeadline: IDelayedCall | None = None
    _bytesSinceArmed = False

    def connectionMade(self) -> None:
        super().connectionMade()
        self._armHeaderDeadline()

    def _armHeaderDeadline(self) -> None:
        self._bytesSinceArmed = False
        if self.headerTimeout > 0 and self._headerDeadline is None:
            self._headerDeadline = self.callLater(self.headerTimeout, self._headersTooSlow)

    def _disarmHeaderDeadline(self) -> None:
        if self._headerDeadline is not None:
            if self._headerDeadline.active():
                self._headerDeadline.cancel()
            self._headerDeadline = None

    def dataReceived(self, data: bytes) -> None:
        self._bytesSinceArmed = True
        super().dataReceived(data)

    def _headersTooSlow(self) -> None:
        self._headerDeadline = None
        transport = self.transport
        assert transport is not None
        if not self._bytesSinceArmed:
            # An idle connection, not a slow request: a 408 here could be
            # read as the answer to a request the client is sending right now.
            transport.loseConnection()
            return
        self.log.info(
            "Closing {peer}: request headers not received within {timeout}s",
            peer=transport.getPeer(),
            timeout=self.headerTimeout,
        )
        transport.write(
            b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
            b"Content-Length: 41\r\nConnection: close\r\n\r\n"
            b'{"error":"request headers took too long"}'
        )
        transport.loseConnection()

    def allHeadersReceived(self) -> None:
        self._disarmHeaderDeadline()
        super().allHeadersReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        if not self.requests and getattr(self.transport, "connected", False):
            self._armHeaderDeadline()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarmHeaderDeadline()
        super().connectionLost(reason)


class SSESite(Site):
    """
    A Site for the standalone server: C{header_timeout} seconds for a client
    to send its request headers (0: no limit); HTTP/2 negotiation as usual.

    It never parses form bodies (the API is JSON; twisted.web would parse each
    POST's Content-Type with the C{email} package, a sixth of a publish's
    cost), and it writes an access-log line per request only with
    C{access_log}.
    """

    def __init__(
        self,
        resource: IResource,
        *,
        header_timeout: float = 10.0,
        access_log: bool = False,
        **kw: Any,
    ) -> None:
        super().__init__(resource, parsePOSTFormSubmission=False, **kw)
        self.header_timeout = header_timeout
        self.access_log = access_log

    def log(self, request: Any) -> None:
        if self.access_log:
            super().log(request)

    def protocol(self) -> _GenericHTTPChannelProtocol:
        channel = _HeaderDeadlineChannel()
        channel.headerTimeout = self.header_timeout
        # twisted.web's own factory does the same wrapping, which switches to
        # HTTP/2 when ALPN negotiates it.
        return _GenericHTTPChannelProtocol(channel)
