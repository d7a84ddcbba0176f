"""
A LoopingCall that publishes the time to channel "clock" every second.

    python examples/ticker.py 8080        # then: curl -N localhost:8080/events
"""

from __future__ import annotations

import sys
import time

from twisted.internet import reactor
from twisted.internet.task import LoopingCall
from twisted.web.resource import Resource
from twisted.web.server import Site

from sse_twisted import SSEBroker
from sse_twisted.resource import StreamResource


def start_ticker(broker: SSEBroker, interval: float = 1.0, clock: object = None) -> LoopingCall:
    """Publish {"time": ...} to "clock" every `interval` seconds, on `clock`."""
    call = LoopingCall(lambda: broker.publish("clock", "tick", {"time": time.time()}))
    if clock is not None:
        call.clock = clock  # type: ignore[assignment]
    call.start(interval, now=False)
    return call


def main(port: int) -> None:
    broker = SSEBroker()
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    start_ticker(broker)
    listening = reactor.listenTCP(port, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
