"""
Publishing from worker threads with the thread-safe publish_threadsafe.

    python examples/worker_thread.py 8080
    curl -N 'localhost:8080/events?channel=jobs'
    curl -XPOST localhost:8080/start        # a job in a thread reports progress
"""

from __future__ import annotations

import sys
import time

from twisted.internet import reactor, threads
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from sse_twisted import SSEBroker
from sse_twisted.resource import StreamResource


def job(broker: SSEBroker, name: str, steps: int = 5, pause: float = 0.05) -> str:
    """Blocking work, run in a thread; each step is published from that thread."""
    for step in range(1, steps + 1):
        time.sleep(pause)  # stands for real blocking work
        future = broker.publish_threadsafe(
            "jobs", "progress", {"job": name, "step": step, "of": steps}
        )
        future.result(timeout=10)  # optional: wait until the reactor published it
    broker.publish_threadsafe("jobs", "done", {"job": name})
    return name


class Start(Resource):
    isLeaf = True

    def __init__(self, broker: SSEBroker) -> None:
        super().__init__()
        self.broker = broker
        self.count = 0

    def render_POST(self, request: Request) -> bytes:
        self.count += 1
        name = f"job-{self.count}"
        threads.deferToThread(job, self.broker, name)
        return f"started {name}\n".encode()


def main(port: int) -> None:
    broker = SSEBroker()
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    root.putChild(b"start", Start(broker))
    listening = reactor.listenTCP(port, Site(root), interface="127.0.0.1")  # type: ignore[attr-defined]
    print(f"listening on {listening.getHost().port}", flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 8080)
