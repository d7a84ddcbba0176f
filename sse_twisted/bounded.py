"""
Requests judged on their headers before their bodies are read, and that must
arrive whole, headers and body, in time (slowloris).

twisted.web reads a request's whole body (spooling it to a temporary file
past 100 kB) before any resource sees the request, and its only timeout
restarts on every byte. Here the channel asks the root resource, as soon as
the headers are in, how many body bytes the request may send (0 for every
path but publishing, whose resource authorises the request first); a request
over that is answered at once and its body is never stored. The whole
request, headers and body, has one deadline.
"""

from __future__ import annotations

from io import BytesIO
from typing import Any

from twisted.internet.interfaces import IAddress, IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.internet.tcp import Connection
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import RESPONSES, HTTPChannel
from twisted.web.http_headers import Headers
from twisted.web.resource import IResource
from twisted.web.server import Request, Site

from ._transport import accept_waiting, bad_request, http_protocol, request_gone, set_site
from .errors import HTTPError, encode_json_body, safe_message

__all__ = ["DISCARD_BODY", "LINGER", "BoundedChannel", "BoundedRequest", "BoundedSite"]


#: Seconds a refused request's connection stays half-open, its input read and
#: dropped, so that the client can read the answer before the socket closes
#: (closing with unread input sends a reset, which can destroy the answer).
LINGER = 2.0

#: Largest body (announced by Content-Length) that a request refused from its
#: head may still send, read and dropped, for the connection to go on; past
#: it the connection closes instead of reading what it would not store.
DISCARD_BODY = 65536


class BoundedRequest(Request):
    """
    A request whose body is held in memory up to the limit its head was
    admitted for (L{body_limit}), and refused past it.

    With no limit decided (a root resource without C{check_head}), bodies
    are read as twisted.web reads them.
    """

    #: Body bytes this request may send; C{None}: not decided.
    body_limit: int | None = None
    _received = 0
    _refused = False
    #: L{connectionLost} tells the registered producer (its C{request_lost}),
    #: so a stream needs no C{notifyFinish} Deferred (~400 bytes per stream).
    tells_producer_when_lost = True

    def connectionLost(self, reason: Failure) -> None:
        producer = self.producer
        super().connectionLost(reason)
        # The producer (a stream) refers back to this request: let go of it.
        self.producer = None
        lost = getattr(producer, "request_lost", None)
        if lost is not None:
            lost()

    def gotLength(self, length: int | None) -> None:
        if self.body_limit is not None or self._h2_judged_later():
            # Bounded: no byte is stored past the limit, so memory will do
            # (twisted.web would spool a large or chunked body to a file).
            self.content = BytesIO()
        else:
            super().gotLength(length)

    def _h2_judged_later(self) -> bool:
        """
        Whether this is an HTTP/2 request whose head L{BoundedSite.admit} judges
        on its first body byte: HTTP/2 announces a length before all the
        headers are in, so the head cannot be judged as early as in HTTP/1.
        """
        if isinstance(self.channel, BoundedChannel):
            return False  # HTTP/1: judged before gotLength, or not at all
        site = getattr(self.channel, "site", None)
        return isinstance(site, BoundedSite) and site.judges_heads()

    def handleContentChunk(self, data: bytes) -> None:
        if self._refused:
            return
        if self.body_limit is None and self._h2_judged_later() and not self._admit_h2():
            return
        limit = self.body_limit
        if limit is not None:
            self._received += len(data)
            if self._received > limit:
                self._refused = True
                self.content = BytesIO()
                channel = self.channel
                if isinstance(channel, BoundedChannel):
                    channel.refuse(self, _too_large(limit))
                else:
                    bad_request(channel)
                return
        assert self.content is not None
        self.content.write(data)

    def _admit_h2(self) -> bool:
        """Judge an HTTP/2 request's head; say whether its body may be stored."""
        stream: Any = self.channel  # an H2Stream
        site: BoundedSite = stream.site
        if site.admit(self, stream.command, stream.path, None) is not None:
            # No JSON answer here: HTTP/2 has no connection to linger on,
            # and the stream is reset with twisted.web's plain 400.
            self._refused = True
            bad_request(stream)
            return False
        return True

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        if not self._refused:
            super().requestReceived(command, path, version)
            return
        # Answered from its head already; its body (if any) was dropped.
        channel = self.channel
        if isinstance(channel, BoundedChannel) and not request_gone(self):
            # The connection goes on with the next request, as after finish().
            self.finished = 1
            channel.requestDone(self)
            for d in self.notifications:
                d.callback(None)
            self.notifications = []


def _too_large(limit: int) -> HTTPError:
    if limit <= 0:
        return HTTPError(413, "this request takes no body")
    return HTTPError(413, f"body larger than {limit} bytes")


class BoundedChannel(HTTPChannel):
    """
    An HTTPChannel that judges each request on its headers (through its
    site's L{BoundedSite.admit}) before reading the body, and aborts a request
    that has not arrived whole, headers and body, within C{requestTimeout}
    seconds of the connection opening (or of its previous request ending).

    twisted.web's own timeout restarts on every byte received, so a client
    sending one byte every few seconds would hold a connection for ever.

    A request refused from its head is answered at once. When its body is
    small and its length announced, the body is read and dropped (never
    stored) and the connection serves the next request; otherwise the
    connection closes (see L{refuse}).
    """

    log = Logger()
    requestTimeout: float = 10.0
    bounded_site: BoundedSite | None = None
    _deadline: IDelayedCall | None = None
    _bytesSinceArmed = False
    _inBody = False
    #: An answer for the request now arriving was written already.
    _answered = False
    #: The connection is closing after a refusal: input is dropped.
    _closing = False
    _linger: IDelayedCall | None = None

    def connectionMade(self) -> None:
        super().connectionMade()
        self._armDeadline()

    def _armDeadline(self) -> None:
        # Set only when they differ from the class defaults: an idle stream's
        # channel then holds no more instance attributes than it must (each
        # one can cost a dict resize, ~1.5 KiB per stream).
        if self._bytesSinceArmed:
            self._bytesSinceArmed = False
        if self._inBody:
            self._inBody = False
        if self._answered:
            self._answered = False
        if self.requestTimeout > 0 and self._deadline is None:
            self._deadline = self.callLater(self.requestTimeout, self._requestTooSlow)

    def _disarmDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            return  # lingering after a refusal: read and drop
        self._bytesSinceArmed = True
        super().dataReceived(data)

    def rawDataReceived(self, data: bytes) -> None:
        if self._closing:
            return
        super().rawDataReceived(data)

    def _requestTooSlow(self) -> None:
        self._deadline = None
        transport = self.transport
        assert transport is not None
        if not self._bytesSinceArmed or self._answered:
            # An idle connection, not a slow request (a 408 here could be
            # read as the answer to a request the client is sending right
            # now), or a refused request whose answer is out already.
            transport.loseConnection()
            return
        what = "body" if self._inBody else "headers"
        self.log.info(
            "Closing {peer}: request {what} not received within {timeout}s",
            peer=transport.getPeer(),
            what=what,
            timeout=self.requestTimeout,
        )
        self._closing = True
        self._writeError(HTTPError(408, f"request {what} took too long"), None, close=True)
        transport.loseConnection()

    def allHeadersReceived(self) -> None:
        """
        Judge the request on its headers (L{BoundedSite.admit}) before any
        body byte is read: refuse it at once, or bound the body it may send.
        """
        self._inBody = True
        request = self.requests[-1]
        site = self.bounded_site
        if site is not None:
            request.parseCookies()
            # As super() would: whether the connection may serve another request.
            self.persistent = self.checkPersistence(request, self._version)
            error = site.admit(request, self._command, self._path, self.length)
            if error is not None:
                self.refuse(request, error, at_head=True)
                return
        super().allHeadersReceived()

    def allContentReceived(self) -> None:
        """The whole request is in: its deadline is off (unless refused and closing)."""
        if self._closing:
            return
        self._disarmDeadline()
        super().allContentReceived()

    def refuse(self, request: BoundedRequest, error: HTTPError, *, at_head: bool = False) -> None:
        """
        Answer C{request} with C{error} before (the rest of) its body.

        Refused at its head with a body of at most L{DISCARD_BODY} bytes
        announced by Content-Length, on a persistent connection: the body is
        read and dropped, and the connection serves the next request (so
        pipelined requests are all answered). Otherwise: close, by
        half-closing now, dropping whatever the client still sends for
        L{LINGER} seconds, then aborting.
        """
        request._refused = True
        length = self.length
        if (
            at_head
            and self.persistent
            and length is not None
            and length <= DISCARD_BODY
            # A client waiting for "100 Continue" may never send its body.
            and not request.requestHeaders.hasHeader(b"expect")
        ):
            self._answered = True
            self._writeError(error, request, close=False)
            return  # the channel reads the body into the refused request, which drops it
        self._closing = True
        self._disarmDeadline()
        self.length = None  # no allContentReceived for this request
        self.persistent = False
        self._writeError(error, request, close=True)
        transport = self.transport
        assert transport is not None
        if isinstance(transport, Connection):  # TCP or UNIX; TLS cannot half-close
            transport.loseWriteConnection()
            self._linger = self.callLater(LINGER, transport.abortConnection)
        else:
            transport.loseConnection()

    def _writeError(self, error: HTTPError, request: Request | None, *, close: bool) -> None:
        """Write a JSON error answer straight to the transport."""
        body = encode_json_body({"error": safe_message(error.message)})
        headers = Headers()
        if request is not None:
            # Headers a check set on the way (CORS), so a browser can read the answer.
            for name, values in request.responseHeaders.getAllRawHeaders():
                headers.setRawHeaders(name, values)
        for name, value in error.headers.items():
            headers.setRawHeaders(name, [value])
        headers.setRawHeaders(b"content-type", [b"application/json"])
        headers.setRawHeaders(b"cache-control", [b"no-store"])
        headers.setRawHeaders(b"content-length", [b"%d" % len(body)])
        if close:
            headers.setRawHeaders(b"connection", [b"close"])
        lines = [b"HTTP/1.1 %d %s" % (error.status, RESPONSES.get(error.status, b"Error"))]
        for name, values in headers.getAllRawHeaders():
            lines.extend(name + b": " + value for value in values)
        assert self.transport is not None
        self.transport.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    def requestDone(self, request: Any) -> None:
        # Armed before the buffered next request (if any) is parsed inside
        # super().requestDone, which disarms it once that request is whole.
        if self.persistent:
            self._armDeadline()
        super().requestDone(request)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarmDeadline()
        if self._linger is not None and self._linger.active():
            self._linger.cancel()
        self._linger = None
        super().connectionLost(reason)
        # The request's producer (a stream) refers back to this channel: let
        # go of it, so a closed connection is freed at once (no cycle left).
        if getattr(self, "_requestProducer", None) is not None:
            self._requestProducer = None
        closed = getattr(getattr(self, "site", None), "closed", None)
        if closed is not None:
            closed()


#: The attributes that twisted.web's HTTPChannel (with LineReceiver and
#: TimeoutMixin) and BoundedChannel set on every streaming HTTP/1.1
#: connection, kept in slots of each site's channel class (L{channel_class}).
#: A name missing here (another Twisted) simply lands in the instance dict.
CHANNEL_SLOTS = (
    "requests",
    "_handlingRequest",
    "_dataBuffer",
    "_transferDecoder",
    "timeOut",
    "connected",
    "transport",
    "_TimeoutMixin__timeoutCall",
    "_networkProducer",
    "_deadline",
    "_bytesSinceArmed",
    "_busyReceiving",
    "_buffer",
    "_receivedHeaderSize",
    "_HTTPChannel__first_line",
    "_command",
    "_path",
    "_version",
    "_HTTPChannel__header",
    "_receivedHeaderCount",
    "_inBody",
    "persistent",
    "length",
    "_savedTimeOut",
    "line_mode",
    "_requestProducer",
    "_requestProducerStreaming",
)


def channel_class(site: BoundedSite, header_timeout: float) -> type[BoundedChannel]:
    """
    The channel class of one site: its settings (and what Twisted's factories
    would set on each channel, see L{BoundedSite.buildProtocol}) are class
    attributes, and the attributes every stream sets live in slots.

    Why slots: a streaming channel sets about 30 attributes. CPython keeps
    them in a compact table shared with the class, but turns an instance's
    table into a dict of its own (~1.3 KiB more per open stream, a fifth of
    an idle stream's memory) when they are set in another order than the
    first instance's once the dict has been looked at, which happens when
    connections interleave. Slots cost 8 bytes each, whatever the order.
    A slot hides its name's class default, so each starts at that default.
    """
    defaults = [
        (name, getattr(BoundedChannel, name))
        for name in CHANNEL_SLOTS
        if hasattr(BoundedChannel, name)
    ]

    def __init__(self: BoundedChannel) -> None:
        for name, value in defaults:
            setattr(self, name, value)
        BoundedChannel.__init__(self)

    return type(
        "SSEChannel",
        (BoundedChannel,),
        {
            "__slots__": CHANNEL_SLOTS,
            "__init__": __init__,
            "requestTimeout": header_timeout,
            "bounded_site": site,
            "site": site,
            "factory": site,
            "requestFactory": _FromSite("requestFactory"),
            "callLater": _FromSite("reactor", "callLater"),
        },
    )


class _FromSite:
    """
    A class attribute of a site's channel class read through the site
    (C{site.<path>}) when the channel has no value of its own: it follows a
    site whose reactor or request factory is replaced after it was built.
    """

    def __init__(self, *path: str) -> None:
        self.path = path

    def __get__(self, channel: BoundedChannel | None, owner: type | None = None) -> Any:
        if channel is None:
            return self
        value: Any = channel.bounded_site
        for name in self.path:
            value = getattr(value, name)
        return value


class BoundedSite(Site):
    """
    A Site whose requests are judged on their heads (L{admit}) before their
    bodies are read, and must arrive whole within C{header_timeout} seconds
    (0: no limit); HTTP/2 negotiation as usual.
    """

    requestFactory = BoundedRequest

    #: Connections closed between two looks at the listening ports (L{closed}).
    ACCEPT_EVERY = 128

    def __init__(self, resource: IResource, *, header_timeout: float = 10.0, **kw: Any) -> None:
        super().__init__(resource, **kw)
        self.header_timeout = header_timeout
        self._channel_class = channel_class(self, header_timeout)
        self._ports: list[object] = []
        self._closes = 0

    def accept_while_closing(self, port: object) -> None:
        """Look at listening C{port} for new connections while many close (L{closed})."""
        self._ports.append(port)

    def closed(self) -> None:
        """
        One of this site's connections closed. When thousands close in one
        reactor turn (a proxy restarting, a network blip), the reactor reads
        the listening port only after them all, a few hundred milliseconds
        in which the same clients, reconnecting, fill the kernel's accept
        queue: each SYN it drops costs its client a full second. Accepting
        every L{ACCEPT_EVERY} closes keeps that queue short.
        """
        self._closes += 1
        if self._closes >= self.ACCEPT_EVERY:
            self._closes = 0
            for port in self._ports:
                accept_waiting(port)

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        A channel for a new connection, with what C{Factory}, C{HTTPFactory}
        and C{Site} would set on it (C{factory}, C{site}, C{requestFactory},
        C{callLater}) read from this site through its class instead.

        Why: a streaming channel ends up with about 30 instance attributes,
        and CPython (3.11) keeps an instance's attributes in a compact table
        shared with its class only up to 30 keys; the 31st turns the table
        into a dict of its own, ~1.3 KiB more per open stream. Assigning a
        value still works (it shadows the class's), as Twisted's HTTP/2
        switch-over and tests may do.
        """
        protocol = self.protocol()
        set_site(protocol, self)
        # TimeoutMixin arms its idle timeout from the instance at connectionMade.
        protocol.timeOut = self.timeOut
        return protocol

    def admit(
        self, request: BoundedRequest, method: bytes, target: bytes, length: int | None
    ) -> HTTPError | None:
        """
        Judge C{request} on its head: ask the root resource's C{check_head}
        (method, path) how many body bytes it may send, and compare with what
        its headers announce (C{length}; C{None} for a chunked body).

        @return: the refusal to answer with, or C{None} to read the body
            (up to the limit, which is left on the request).
        """
        check = getattr(self.resource, "check_head", None)
        if check is None:
            return None
        try:
            limit: int = check(request, method, target.split(b"?", 1)[0], length)
        except HTTPError as error:
            return error
        if limit > 0:  # a request that may send no body keeps no limit (memory per stream)
            request.body_limit = limit
        if (length is None and limit <= 0) or (length is not None and length > limit):
            return _too_large(limit)
        return None

    def judges_heads(self) -> bool:
        """Whether L{admit} has anything to ask (the root resource's C{check_head})."""
        return getattr(self.resource, "check_head", None) is not None

    def protocol(self) -> Any:  # HTTPFactory types it as the private wrapper class
        # twisted.web's own factory does the same wrapping, which switches to
        # HTTP/2 when ALPN negotiates it.
        return http_protocol(self._channel_class())
