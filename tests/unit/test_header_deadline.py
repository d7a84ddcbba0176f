"""
SSESite's header deadline: a client trickling its headers is cut off; a
stream, once in, never is.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.site import SSESite

from ..support.conn import Conn


def test_slow_headers_get_408(clock: Clock) -> None:
    """A client trickling its headers is cut off at the deadline, however it trickles."""
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    site = SSESite(Resource(), header_timeout=5, reactor=clock)
    proto = site.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    for piece in (b"GET /", b"events HTTP/1.1\r\n", b"Host: x\r\n"):
        proto.dataReceived(piece)
        clock.advance(1.6)
    assert not tr.disconnecting
    clock.advance(0.3)
    assert tr.value().startswith(b"HTTP/1.1 408 ")
    assert tr.disconnecting


def test_header_deadline_spares_streams(clock: Clock) -> None:
    """Once its headers are in, a long stream is never cut by the header deadline."""
    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = SSESite(make_resource(broker), header_timeout=5, reactor=clock, timeout=None)
    c = Conn(site)
    clock.advance(3600)
    assert not c.transport.disconnecting and broker.client_count() == 1
