"""
What an open stream holds: the standalone site's channels keep what every
stream sets in slots, and read what the site gives them through their class.
"""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.site import SSESite

from ..support.conn import Conn


def _http_channel(conn: Conn) -> object:
    return getattr(conn.channel, "_channel", conn.channel)


def test_an_open_streams_channel_has_no_instance_dict_entries(clock: Clock) -> None:
    """
    Every attribute twisted.web sets on a streaming HTTP/1.1 channel is a slot
    of the site's channel class (CHANNEL_SLOTS), so no per-stream dict is
    built: on a Twisted that sets a new one, this fails and names it.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = SSESite(make_resource(broker), header_timeout=5, reactor=clock, timeout=None)
    conns = [Conn(site) for _ in range(3)]
    assert broker.client_count() == 3
    for conn in conns:
        assert vars(_http_channel(conn)) == {}
    conns[0].transport.loseConnection()
    _http_channel(conns[0]).connectionLost(None)  # type: ignore[attr-defined]
    assert broker.client_count() == 2


def test_a_channel_reads_the_sites_reactor_even_when_replaced(clock: Clock) -> None:
    """
    The channel's C{callLater} is the site's reactor's at the time it is
    used, as when twisted.web sets it per channel: a site whose reactor is
    replaced after it was built times requests on the new one.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = SSESite(make_resource(broker), header_timeout=5, reactor=Clock(), timeout=None)
    site.reactor = clock
    slow = site.buildProtocol(None)
    assert slow is not None
    tr = StringTransport()
    slow.makeConnection(tr)
    slow.dataReceived(b"GET /events HTTP/1.1\r\n")
    clock.advance(6)
    assert tr.value().startswith(b"HTTP/1.1 408 ")
