"""
Mounting the broker in an existing Klein app, beside its own routes.

    python examples/klein_app.py 8080
    curl -N 'localhost:8080/api/stream?channel=orders'
    curl -XPOST localhost:8080/api/orders -d 'widget'
"""

from __future__ import annotations

import sys
from typing import Any

from klein import Klein
from twisted.internet import reactor
from twisted.web.server import Request, Site

from sse_twisted import SSEBroker
from sse_twisted.resource import StreamResource

broker = SSEBroker()
app = Klein()


@app.route("/")
def home(request: Request) -> str:
    return "an existing app; its live updates are at /api/stream\n"


@app.route("/api/stream")
def stream(request: Request) -> Any:
    # Return the resource: Klein renders it, and the stream stays open.
    return StreamResource(broker)


@app.route("/api/orders", methods=["POST"])
def new_order(request: Request) -> str:
    item = request.content.read().decode("utf-8", "replace")
    event = broker.publish("orders", "created", {"item": item})
    return f"order {event.id}\n"


def main(port: int) -> None:
    listening = reactor.listenTCP(port, Site(app.resource()), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
