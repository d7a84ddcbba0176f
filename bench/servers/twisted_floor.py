"""The floor: plain twisted.web, ``request.write`` in a loop, no backpressure.

It frames once and writes the same bytes to every matching request, which is
as cheap as fan-out gets in Twisted; it never pauses for a slow client, so a
client that stops reading makes the process grow without limit.
"""

from __future__ import annotations

import argparse
import json

from twisted.internet import epollreactor

epollreactor.install()

from twisted.internet import reactor, task  # noqa: E402
from twisted.web import resource, server  # noqa: E402


class Broker:
    def __init__(self) -> None:
        self.every: set = set()
        self.by_channel: dict[bytes, set] = {}


class BrokerResource(resource.Resource):
    """A leaf resource on the shared broker."""

    isLeaf = True

    def __init__(self, broker: Broker) -> None:
        super().__init__()
        self.broker = broker


class Events(BrokerResource):
    def render_GET(self, request):
        channel = request.args.get(b"channel", [None])[0]
        request.setHeader(b"content-type", b"text/event-stream")
        request.setHeader(b"cache-control", b"no-cache")
        request.setHeader(b"x-accel-buffering", b"no")
        request.write(b": ok\n\n")
        if channel is None:
            subs = self.broker.every
        else:
            subs = self.broker.by_channel.setdefault(channel, set())
        subs.add(request)
        request.notifyFinish().addBoth(lambda _: subs.discard(request))
        return server.NOT_DONE_YET


class Publish(BrokerResource):
    def render_POST(self, request):
        msg = json.loads(request.content.read())
        frame = f"event: {msg['event']}\ndata: {json.dumps(msg['data'])}\n\n".encode()
        for req in self.broker.every:
            req.write(frame)
        for req in self.broker.by_channel.get(msg["channel"].encode(), ()):
            req.write(frame)
        request.setHeader(b"content-type", b"application/json")
        return b'{"ok": true}'


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue-size", type=int, default=0, help="ignored: the floor has no queue")
    p.add_argument("--ping", type=float, default=0)
    args = p.parse_args()
    broker = Broker()
    root = resource.Resource()
    root.putChild(b"events", Events(broker))
    root.putChild(b"publish", Publish(broker))
    site = server.Site(root)
    site.log = lambda request: None  # no access log, like the other peers
    if args.ping > 0:

        def ping() -> None:
            for req in broker.every:
                req.write(b": ping\n\n")
            for subs in broker.by_channel.values():
                for req in subs:
                    req.write(b": ping\n\n")

        task.LoopingCall(ping).start(args.ping, now=False)
    reactor.listenTCP(args.port, site, backlog=2048, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()
