"""The write-through fast path on real TCP sockets: order, partial sends, backpressure."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted

from sse_twisted import SSEBroker, _transport
from sse_twisted._transport import send
from sse_twisted.parser import EventStreamParser
from sse_twisted.resource import StreamResource

from ..support.chunks import chunk_data

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("fast", [True, False], ids=["write-through", "fallback"])
@pytest_twisted.ensureDeferred
async def test_slow_reader_gets_every_byte_in_order(
    fast: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    A client that reads slowly makes sends partial and the stream pause; with a
    queue big enough, every event still arrives whole and in order: through
    the write-through path, and through Twisted's own write when the probe of
    Twisted's internals has turned it off.
    """
    monkeypatch.setattr(_transport, "FAST_TCP", fast)
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    from twisted.internet.threads import deferToThread
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    broker = SSEBroker(heartbeat=0, queue_size=10_000, reactor=reactor)
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
    client = socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    client.settimeout(10)
    try:
        client.connect(("127.0.0.1", port.getHost().port))
        client.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        for _ in range(500):
            if broker.client_count():
                break
            await deferLater(reactor, 0.01, lambda: None)
        (sub,) = broker._subscribers
        assert sub.fast is sub.transport  # live and chunked: the write-through path
        # Small kernel buffers on both sides, so the kernel soon takes less than is sent.
        sub.transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        payload = "x" * 4000
        for n in range(300):
            broker.publish("c", "e", text=f"{n}:{payload}")
        # 1.2 MB into small kernel buffers: the kernel took part, Twisted
        # buffered some, then paused the stream, which queued the rest.
        assert sub.paused and sub.queued > 0
        expected_end = b"data: 299:"

        def read_all() -> bytes:
            data = b""
            while expected_end not in data or not data.endswith(b"\n\n\r\n"):
                chunk = client.recv(65536)
                assert chunk, "closed early"
                data += chunk
            return data

        raw = await deferToThread(read_all)
        events = EventStreamParser().feed(chunk_data(raw.partition(b"\r\n\r\n")[2]))
        assert [e.data for e in events] == [f"{n}:{payload}" for n in range(300)]
        assert [e.last_event_id for e in events] == [f"{broker._prefix}-{n}" for n in range(1, 301)]
    finally:
        client.close()
        await port.stopListening()
        await broker.drain(timeout=1)


def test_other_transports_keep_their_write() -> None:
    """Anything but a plain TCP connection (TLS, HTTP/2, test transports) gets its own write."""
    from twisted.internet.testing import StringTransport

    t = StringTransport()
    send(t, b"abc")
    assert t.value() == b"abc"
