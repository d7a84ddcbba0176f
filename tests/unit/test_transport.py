"""The one module that touches Twisted's internals: its probes, and the public fallback."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import tcp
from twisted.internet.error import ConnectionDone
from twisted.python.failure import Failure

from sse_twisted import _transport


def test_probe_accepts_this_twisted() -> None:
    """The running Twisted has the fields the write-through path reads."""
    assert _transport.probe_tcp(tcp.Server)
    assert _transport.FAST_TCP


def test_probe_refuses_a_twisted_without_them() -> None:
    """A server class without the buffer fields (a renamed attribute) fails the probe."""

    class Renamed:
        offset = 0
        dataBuffer = b""
        disconnecting = False
        connected = True

        def __init__(self) -> None:
            self.socket = None

    assert not _transport.probe_tcp(Renamed)


def _tcp_server(written: list[bytes]) -> Any:
    """A tcp.Server instance that records writes and must not be sent through."""
    server = tcp.Server.__new__(tcp.Server)
    server.write = written.append  # type: ignore[method-assign]

    class NoSocket:
        def send(self, data: bytes) -> int:
            raise AssertionError("the fallback must not touch the socket")

        def fileno(self) -> int:
            raise AssertionError("the fallback must not touch the socket")

    server.socket = NoSocket()
    return server


def test_fallback_writes_through_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the probe failed, send is transport.write and pending bytes are unknown."""
    monkeypatch.setattr(_transport, "FAST_TCP", False)
    written: list[bytes] = []
    server = _tcp_server(written)
    _transport.send(server, b"chunk")
    assert written == [b"chunk"]
    assert _transport.pending_bytes(server) is None


def test_chunk_is_what_request_write_sends() -> None:
    """A pre-built chunk is an HTTP/1.1 chunk of the frame."""
    assert _transport.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"


def _port(accepts: list[int]) -> tcp.Port:
    """A listening tcp.Port whose reads only record how many it would accept."""
    from twisted.internet.protocol import Factory

    port = tcp.Port(0, Factory())
    port.connected = True
    port.numberAccepts = 100
    port.doRead = lambda: accepts.append(port.numberAccepts)  # type: ignore[method-assign]
    return port


def test_a_port_accepts_at_least_a_thousand_per_read() -> None:
    """
    Twisted drops numberAccepts to what its last read found (1 when idle):
    each read starts from ACCEPTS_PER_READ again. Anything else is left alone.
    """
    accepts: list[int] = []
    port = _port(accepts)
    port.numberAccepts = 1
    assert _transport.accept_eagerly(port)
    port.doRead()
    port.numberAccepts = 5000  # Twisted grew it: kept
    port.doRead()
    assert accepts == [_transport.ACCEPTS_PER_READ, 5000]
    assert not _transport.accept_eagerly(object())


def test_a_site_accepts_while_its_connections_close() -> None:
    """Every 128 closed connections the site reads its listening ports (not stopped ones)."""
    from twisted.internet.task import Clock

    from sse_twisted import SSEBroker
    from sse_twisted.resource import StreamResource
    from sse_twisted.site import SSESite

    from ..support.conn import Conn

    clock = Clock()
    site = SSESite(
        StreamResource(SSEBroker(reactor=clock, heartbeat=0)),
        header_timeout=0,
        reactor=clock,
        timeout=None,
    )
    accepts: list[int] = []
    stopped: list[int] = []
    site.accept_while_closing(_port(accepts))
    gone = _port(stopped)
    gone.connected = False
    site.accept_while_closing(gone)
    conns = [Conn(site) for _ in range(300)]
    for conn in conns:
        conn.transport.loseConnection()
        conn.channel.connectionLost(Failure(ConnectionDone()))
    assert len(accepts) == 300 // site.ACCEPT_EVERY == 2
    assert stopped == []


def test_input_waiting_reads_the_epoll_descriptor() -> None:
    """Ready when the poller's descriptor is readable; True when it cannot tell."""
    import os
    from types import SimpleNamespace

    from twisted.internet.task import Clock

    read, write = os.pipe()
    try:
        reactor = SimpleNamespace(_poller=SimpleNamespace(fileno=lambda: read))
        assert not _transport.input_waiting(reactor)
        os.write(write, b"x")
        assert _transport.input_waiting(reactor)
    finally:
        os.close(read)
        os.close(write)
    assert _transport.input_waiting(Clock())
