"""Helpers for deterministic tests: a real Site/HTTPChannel on a StringTransport."""

from __future__ import annotations

import inspect
import json
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Site

from sse_twisted import SSEBroker, SSEService
from sse_twisted.app import make_resource
from sse_twisted.parser import EventStreamParser, MessageEvent
from sse_twisted.resource import StreamResource
from sse_twisted.site import SSESite

from .chunks import dechunk


def make_site(resource: IResource, clock: Clock) -> Site:
    """A Site on C{clock} with no idle timeout, so only our timers are pending."""
    return Site(resource, reactor=clock, timeout=None)


_BROKER_OPTIONS = frozenset(inspect.signature(SSEBroker).parameters)
JSON = {b"content-type": b"application/json"}


def serve(
    clock: Clock,
    *,
    stream_only: bool = False,
    header_timeout: float | None = None,
    **options: Any,
) -> tuple[SSEBroker, Site]:
    """
    A broker on C{clock} (ids t-1, t-2, ...; no heartbeat unless asked) and a
    site on the same clock: the standalone routes (L{make_resource}), or with
    C{stream_only} just the stream at /events. The C{options} SSEBroker takes
    go to the broker, the others to the routes. With C{header_timeout} the
    site is an L{SSESite} with that request deadline, else L{make_site}.
    """
    broker_options = {k: v for k, v in options.items() if k in _BROKER_OPTIONS}
    routes = {k: v for k, v in options.items() if k not in _BROKER_OPTIONS}
    broker = SSEBroker(**{"reactor": clock, "id_prefix": "t", "heartbeat": 0, **broker_options})
    root: IResource
    if stream_only:
        assert not routes, f"a stream-only site takes no route options: {routes}"
        root = Resource()
        root.putChild(b"events", StreamResource(broker))
    else:
        root = make_resource(broker, **routes)
    if header_timeout is not None:
        return broker, SSESite(root, header_timeout=header_timeout, reactor=clock)
    return broker, make_site(root, clock)


def stream_service(
    reactor: MemoryReactorClock, port: int
) -> tuple[SSEService, SSEBroker, Resource]:
    """
    An SSEService on C{reactor} (a memory reactor: nothing really listens)
    at loopback C{port}, serving a broker's stream at /events with a 1 s drain;
    the root is returned for L{make_site}.
    """
    broker = SSEBroker(reactor=reactor, heartbeat=0)
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    svc = SSEService(
        f"tcp:{port}:interface=127.0.0.1", Site(root), broker, reactor=reactor, drain_timeout=1
    )
    return svc, broker, root


def post(
    site: Site,
    body: Any,
    headers: dict[bytes, bytes] | None = None,
    *,
    raw: bytes | None = None,
    content_type: bytes | None = b"application/json",
    **kw: Any,
) -> Conn:
    """
    POST C{body} as JSON (or the bytes C{raw}) to /publish, declared
    C{content_type} (none if None) unless C{headers} say otherwise.
    """
    declared = {} if content_type is None else {b"content-type": content_type}
    data = raw if raw is not None else json.dumps(body).encode()
    return Conn(
        site, b"/publish", method=b"POST", headers={**declared, **(headers or {})}, body=data, **kw
    )


class FillingTransport(StringTransport):
    """
    A transport that, like TCP, pauses its producer once `limit` bytes are
    waiting unread, and resumes it when the client L{read}s.

    As Twisted's own transports do, it pauses the producer again on every
    write made while full, even if the producer was already paused (a
    producer that resumed itself to write more meets the pause at once).
    """

    def __init__(self, limit: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.limit = limit
        self.unread = 0

    def write(self, data: bytes) -> None:
        super().write(data)
        self.unread += len(data)
        if self.unread >= self.limit and self.producer is not None and self.streaming:
            self.producer.pauseProducing()
            self.producerState = "paused"

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def read(self) -> None:
        self.unread = 0
        if self.producerState == "paused":
            self.producerState = "producing"
            self.producer.resumeProducing()


class Conn:
    """One client connection to C{site}: send a request, read what came back."""

    def __init__(
        self,
        site: Site,
        path: bytes = b"/events",
        *,
        method: bytes = b"GET",
        headers: dict[bytes, bytes] | None = None,
        body: bytes = b"",
        peer: str = "127.0.0.1",
        limit: int | None = None,
        version: bytes = b"HTTP/1.1",
    ) -> None:
        address = IPv4Address("TCP", peer, 40000)
        self.transport = (
            StringTransport(peerAddress=address)
            if limit is None
            else FillingTransport(limit, peerAddress=address)
        )
        self.channel = site.buildProtocol(None)
        self.channel.makeConnection(self.transport)
        lines = [method + b" " + path + b" " + version, b"Host: localhost"]
        for name, value in (headers or {}).items():
            lines.append(name + b": " + value)
        if body or method == b"POST":
            lines.append(b"Content-Length: %d" % len(body))
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n" + body)

    _raw_mark = 0
    _stream_mark = 0

    def raw(self) -> bytes:
        """Bytes received since the last L{clear}."""
        return self.transport.value()[self._raw_mark :]

    def head_and_body(self) -> tuple[bytes, bytes]:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        return head, body

    @property
    def status(self) -> int:
        return int(self.transport.value().split(b" ", 2)[1])

    def header(self, name: bytes) -> bytes | None:
        head, _ = self.head_and_body()
        for line in head.split(b"\r\n")[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None

    def stream(self) -> bytes:
        """The event-stream bytes received since the last L{clear} (chunking removed)."""
        return dechunk(self.head_and_body()[1])[0][self._stream_mark :]

    def ended(self) -> bool:
        return dechunk(self.head_and_body()[1])[1]

    def events(self) -> list[MessageEvent]:
        return EventStreamParser().feed(self.stream())

    def json(self) -> Any:
        head, body = self.head_and_body()
        if self.header(b"transfer-encoding") == b"chunked":
            body = dechunk(body)[0]
        return json.loads(body)

    def clear(self) -> None:
        """Forget what was received so far (the headers stay readable)."""
        self._stream_mark = 0
        self._stream_mark = len(self.stream())
        self._raw_mark = len(self.transport.value())

    def pause(self) -> None:
        """The client stops reading: the transport pauses its producer."""
        self.transport.producer.pauseProducing()

    def resume(self) -> None:
        self.transport.producer.resumeProducing()

    def read(self) -> None:
        """The client reads what was sent (a FillingTransport then resumes)."""
        self.transport.read()  # type: ignore[attr-defined]

    def drop(self) -> None:
        """The client goes away."""
        self.channel.connectionLost(Failure(ConnectionDone()))


def count_writes(conn: Conn) -> list[bytes]:
    """Every C{transport.write} to C{conn} from now on, in order (still written through)."""
    writes: list[bytes] = []
    original = conn.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    conn.transport.write = write  # type: ignore[method-assign]
    return writes
