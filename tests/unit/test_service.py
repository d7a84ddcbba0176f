"""SSEService's lifecycle: stop listening first, then drain the broker."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock

from ..support.conn import Conn, make_site, stream_service


def test_service_stops_listening_then_drains() -> None:
    """stopService closes the port first, then drains; it fires when streams are gone."""
    reactor = MemoryReactorClock()
    svc, broker, root = stream_service(reactor, 8123)
    svc.startService()
    (port,) = reactor.tcpServers
    assert port[0] == 8123
    order: list[str] = []
    listening = svc.port
    assert listening is not None
    original = listening.stopListening

    def stop() -> Deferred[None] | None:
        order.append("stopListening")
        assert not broker.draining
        return original()

    listening.stopListening = stop  # type: ignore[method-assign]
    site = make_site(root, reactor)
    Conn(site)
    done = svc.stopService()
    assert order == ["stopListening"] and broker.draining
    fired: list[object] = []
    done.addCallback(fired.append)
    reactor.advance(1.1)
    assert fired == [None]
    assert not svc.running
