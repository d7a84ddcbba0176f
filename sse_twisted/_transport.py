"""
Every touch of Twisted's internals, in one room.

The fast path writes pre-built HTTP/1.1 chunks straight to a TCP socket, and
draining needs to know when an HTTP/2 stream's frames are out; Twisted has
no public API for either. Each use is probed once, at import, against the
running Twisted; where a probe fails, the plain public path (C{transport.
write}, C{request.write}, "done once finished") takes over, so a renamed
attribute in a future Twisted costs speed, never an event half-way through
a fan-out. Nothing else in the package reads a name with an underscore from
another module.
"""

from __future__ import annotations

import select
import struct
from typing import Any

from twisted.internet import tcp
from twisted.internet.protocol import Protocol
from twisted.web.http import HTTPChannel
from twisted.web.server import Request

try:
    from twisted.web.http import _GenericHTTPChannelProtocol
except ImportError:  # pragma: no cover - a Twisted without it: HTTP/1.1 only
    _GenericHTTPChannelProtocol = None  # type: ignore[assignment,misc]

try:
    from fcntl import ioctl as _ioctl
    from termios import TIOCOUTQ as _TIOCOUTQ
except ImportError:  # pragma: no cover - not POSIX: only Twisted's buffer counts
    _ioctl = None  # type: ignore[assignment]
    _TIOCOUTQ = 0  # type: ignore[misc]

__all__ = [
    "ACCEPTS_PER_READ",
    "FAST_TCP",
    "abort",
    "accept_eagerly",
    "accept_waiting",
    "bad_request",
    "chunk",
    "chunk_writer",
    "close_idle_h2",
    "endpoint_port",
    "http_protocol",
    "input_waiting",
    "pending_bytes",
    "probe_tcp",
    "request_gone",
    "send",
    "stream_flushed",
]

_TCPServer = tcp.Server


def probe_tcp(server_class: type = _TCPServer) -> bool:
    """
    Whether C{server_class} (Twisted's TCP server connection) has the buffer
    fields and socket that L{send} and L{pending_bytes} read: as
    class attributes, or assigned by an C{__init__} in its MRO.
    """
    assigned: set[str] = set()
    for klass in getattr(server_class, "__mro__", ()):
        code = getattr(klass.__dict__.get("__init__"), "__code__", None)
        if code is not None:
            assigned.update(code.co_names)
    fields = ("_tempDataLen", "offset", "dataBuffer", "disconnecting", "connected", "socket")
    return all(hasattr(server_class, name) or name in assigned for name in fields)


#: Whether the TCP fast path is usable with the running Twisted.
FAST_TCP = probe_tcp()


#: Connections a listening port accepts per reactor turn at the least.
ACCEPTS_PER_READ = 1024


def accept_eagerly(port: object, floor: int = ACCEPTS_PER_READ) -> bool:
    """
    Make a TCP listening C{port} accept at least C{floor} waiting
    connections each time the reactor finds it readable.

    Twisted's C{tcp.Port} accepts C{numberAccepts} connections per read,
    and after a read that emptied the queue it falls to the number that read
    found (often 1), growing back by 20 per turn. In a reconnection storm
    the same turns carry thousands of closed streams, each taking tens of
    microseconds, so a port accepting 20 or 40 a turn lets the kernel's
    queue (4,096) overflow, and every SYN dropped costs its client a full
    second before it tries again. Accepting a thousand a turn keeps the
    queue short; a turn then takes longer, which delays events by
    milliseconds and loses none.

    @return: whether C{port} is such a port (anything else is left alone).
    """
    if not isinstance(port, tcp.Port) or not isinstance(getattr(port, "numberAccepts", None), int):
        return False
    read = port.doRead

    def doRead() -> Any:
        if port.numberAccepts < floor:
            port.numberAccepts = floor
        return read()

    port.doRead = doRead  # type: ignore[method-assign]
    return True


def input_waiting(reactor: object) -> bool:
    """
    Whether C{reactor} (Twisted's epoll reactor) has anything ready to
    handle: its epoll descriptor is readable when any watched socket is.
    C{True} where that cannot be known (another reactor, a test clock).
    """
    poller = getattr(reactor, "_poller", None)
    fileno = getattr(poller, "fileno", None)
    if fileno is None:
        return True
    try:
        ready, _, _ = select.select([fileno()], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(ready)


def accept_waiting(port: object) -> None:
    """
    Accept the connections waiting on a listening TCP C{port} now, as the
    reactor does when it finds the port readable (nothing when none waits,
    or for anything but a listening C{tcp.Port}).
    """
    if isinstance(port, tcp.Port) and getattr(port, "connected", False):
        port.doRead()


def chunk(frame: bytes) -> bytes:
    """C{frame} as one HTTP/1.1 chunk: what C{request.write} would send for it."""
    return b"%x\r\n%s\r\n" % (len(frame), frame)


def chunk_writer(request: Request) -> Any:
    """
    The transport to hand C{request}'s pre-built chunks to, once its headers
    are out: a plain HTTP/1.1 chunked response on a connection of its own.
    C{None} for anything else (HTTP/2, HTTP/1.0, a test double without a
    transport), which then goes through C{request.write}.
    """
    channel = getattr(request, "channel", None)
    if not isinstance(channel, HTTPChannel) or not getattr(request, "chunked", False):
        return None
    return getattr(channel, "transport", None)


def send(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending at once when nothing is waiting in
    its buffer.

    Twisted's C{write} buffers the bytes and asks the reactor to watch the
    socket for writability, then sends on the next loop and stops watching:
    a send plus two C{epoll_ctl} calls per event per subscriber. Writing
    through costs one C{send}; whatever the kernel does not take goes to
    C{transport.write} as before, so ordering, buffering, flow control and
    error handling stay Twisted's. Only for plain TCP connections whose
    fields the import-time probe found; anything else gets its own C{write}.
    (The fan-out hands its chunks to L{sse_twisted.outbox.Outbox}, which
    sends through here.)
    """
    if (
        not FAST_TCP
        or type(transport) is not _TCPServer
        or transport._tempDataLen
        or transport.offset < len(transport.dataBuffer)
        or transport.disconnecting
        or not transport.connected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # Twisted finds and reports the error as it writes
        return
    if sent < len(data):
        transport.write(data[sent:])


def _kernel_unsent(sock: Any) -> int:
    """Bytes in the socket's kernel send queue not yet acknowledged (Linux); 0 elsewhere."""
    if _ioctl is None:
        return 0
    try:
        raw = _ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int(struct.unpack("i", raw)[0])


def pending_bytes(transport: Any) -> int | None:
    """
    Bytes written to C{transport} that the peer has not taken yet (Twisted's
    buffer plus the kernel's send queue), or C{None} where that cannot be
    known (TLS, HTTP/2, test transports, or a Twisted the probe refused).

    Lets a stalled stream be told from a slow one: while a stream is paused
    nothing new is written to its transport, so this number falls exactly
    when the peer reads. The kernel's part matters: Linux grows a socket's
    send buffer to megabytes and reports it writable only once much of it
    has drained, so a slow reader can leave Twisted's buffer untouched for
    seconds while it reads all the time.
    """
    if not FAST_TCP or type(transport) is not _TCPServer:
        return None
    buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return int(buffered) + _kernel_unsent(transport.socket)


def request_gone(request: Request) -> bool:
    """
    Whether C{request}'s connection is gone or its response is done: then
    C{finish()} would raise. twisted.web forgets the channel in both cases.
    """
    return getattr(request, "channel", None) is None


def _closed(transport: Any) -> bool:
    return bool(getattr(transport, "disconnected", False)) or not getattr(
        transport, "connected", True
    )


def stream_flushed(channel: Any, transport: Any) -> bool:
    """
    Whether a stream's bytes are all out: its TCP (or TLS) connection has
    closed; or, for an HTTP/2 stream (no transport of its own), its
    connection has forgotten it and has closed. Without the HTTP/2 internals
    this probes, an HTTP/2 stream counts as flushed once its response
    finished.
    """
    if transport is not None:
        return _closed(transport)
    conn = getattr(channel, "_conn", None)
    streams = getattr(conn, "streams", None)
    if streams is None:
        return True
    if getattr(channel, "streamID", None) in streams:
        return False
    return _closed(getattr(conn, "transport", None))


def close_idle_h2(channel: Any) -> None:
    """
    Close the HTTP/2 connection of stream C{channel} once none of its streams
    is left (draining ends every stream; the connection has no other reason
    to stay). A no-op for anything else.
    """
    conn = getattr(channel, "_conn", None)
    streams = getattr(conn, "streams", None)
    transport = getattr(conn, "transport", None)
    if streams is None or transport is None or streams:
        return
    if not getattr(transport, "disconnecting", True):
        transport.loseConnection()


def http_protocol(channel: HTTPChannel) -> Protocol:
    """
    C{channel} wrapped as twisted.web's own Site wraps its channels, so that
    a TLS connection that negotiates HTTP/2 (ALPN) switches to it; the bare
    HTTP/1.1 channel where this Twisted has no such wrapper.
    """
    if _GenericHTTPChannelProtocol is None:
        return channel
    wrapped: Protocol = _GenericHTTPChannelProtocol(channel)
    return wrapped


#: What twisted.web's HTTP/2 switch-over hands the new connection, as the
#: wrapper keeps it (private attributes, set by the wrapper's setters).
_SWITCH_OVER = ("_factory", "_site", "_requestFactory", "_callLater")
_KEEPS_SWITCH_OVER = _GenericHTTPChannelProtocol is not None and all(
    hasattr(_GenericHTTPChannelProtocol, name) for name in _SWITCH_OVER
)


def _call_later(site: Any) -> Any:
    """The site's reactor's C{callLater}, one bound method per reactor (not per connection)."""
    reactor = site.reactor
    cached = site.__dict__.get("_sse_call_later")
    if cached is None or cached[0] is not reactor:
        cached = site._sse_call_later = (reactor, reactor.callLater)
    return cached[1]


def set_site(protocol: Any, site: Any) -> None:
    """
    Give a protocol from L{http_protocol} what twisted.web's factories would
    (C{factory}, C{site}, C{requestFactory}, C{callLater}) without writing
    them onto its channel: the channel reads them from its class (see
    L{sse_twisted.bounded.BoundedSite.buildProtocol}); only the wrapper keeps
    them, for a switch to HTTP/2. Where the wrapper is not as probed, they
    are set through its public setters (correct, a little more memory).
    """
    values = (site, site, site.requestFactory, _call_later(site))
    if _KEEPS_SWITCH_OVER and isinstance(protocol, _GenericHTTPChannelProtocol):
        for name, value in zip(_SWITCH_OVER, values, strict=True):
            object.__setattr__(protocol, name, value)
        return
    for name, value in zip(("factory", "site", "requestFactory", "callLater"), values, strict=True):
        setattr(protocol, name, value)


def bad_request(channel: Any) -> None:
    """
    Answer the request arriving on C{channel} (HTTP/1.1 or an HTTP/2 stream)
    with twisted.web's plain 400 and drop the connection (reset the stream);
    just drop it where this Twisted has no such method.
    """
    _call_first(channel, "_respondToBadRequestAndDisconnect", "loseConnection")


def abort(channel: Any, transport: Any) -> None:
    """
    Drop a stream now: its connection (HTTP/1.1), or only the stream
    (HTTP/2: C{transport} is None and the stream is reset, RST_STREAM).
    """
    if transport is None:
        _call_first(channel, "abortConnection")
    else:
        _call_first(transport, "abortConnection", "loseConnection")


def _call_first(target: Any, *names: str) -> None:
    """Call the first of C{target}'s methods C{names} that it has."""
    for name in names:
        method = getattr(target, name, None)
        if method is not None:
            method()
            return


def endpoint_port(endpoint: object) -> int | None:
    """The port number a C{tcp:}, C{tcp6:} or C{ssl:} server endpoint will bind, if it says."""
    port = getattr(endpoint, "_port", None)
    return port if isinstance(port, int) else None
