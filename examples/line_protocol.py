"""
A line-based TCP protocol: every line a client sends is published to "lines".

    python examples/line_protocol.py 8080 9000
    curl -N localhost:8080/events &   printf 'hello\n' | nc localhost 9000
"""

from __future__ import annotations

import sys

from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.web.resource import Resource
from twisted.web.server import Site

from sse_twisted import SSEBroker
from sse_twisted.resource import StreamResource


class PublishLines(LineReceiver):
    """Publishes each received line as a text event; answers with its id."""

    delimiter = b"\n"

    def __init__(self, broker: SSEBroker) -> None:
        self.broker = broker

    def lineReceived(self, line: bytes) -> None:
        text = line.rstrip(b"\r").decode("utf-8", "replace")
        event = self.broker.publish_text("lines", "line", text)
        self.sendLine(f"published {event.id}".encode())


def line_factory(broker: SSEBroker) -> Factory:
    return Factory.forProtocol(lambda: PublishLines(broker))


def main(http_port: int, line_port: int) -> None:
    broker = SSEBroker()
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    web = reactor.listenTCP(http_port, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    lines = reactor.listenTCP(line_port, line_factory(broker), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on {web.getHost().port} lines on {lines.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]] + [8080, 9000][len(sys.argv[1:3]) :]
    main(*args)
