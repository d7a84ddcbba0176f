"""The fan-out shared by the asyncio peers: a channel index of bounded queues.

Each subscriber gets an ``asyncio.Queue(maxsize=queue_size)``; publishing
frames nothing itself (the SSE library does that per subscriber, as it would
in an application), and drops an event for a subscriber whose queue is full,
like the Go original's ``select { case ch <- msg: default: }``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import defaultdict


class Broker:
    def __init__(self, queue_size: int) -> None:
        self.queue_size = queue_size
        self.every: set[asyncio.Queue] = set()
        self.by_channel: defaultdict[str, set[asyncio.Queue]] = defaultdict(set)
        self.dropped = 0

    def subscribe(self, channel: str | None) -> asyncio.Queue:
        q: asyncio.Queue = asyncio.Queue(maxsize=self.queue_size)
        (self.every if channel is None else self.by_channel[channel]).add(q)
        return q

    def unsubscribe(self, channel: str | None, q: asyncio.Queue) -> None:
        if channel is None:
            self.every.discard(q)
        else:
            subs = self.by_channel.get(channel)
            if subs is not None:
                subs.discard(q)
                if not subs:
                    del self.by_channel[channel]

    def publish_body(self, body: bytes) -> None:
        """Publish ``{"channel","event","data"}``: data JSON-encoded once."""
        msg = json.loads(body)
        item = (msg["event"], json.dumps(msg["data"]))
        for subs in (self.every, self.by_channel.get(msg["channel"], ())):
            for q in subs:
                try:
                    q.put_nowait(item)
                except asyncio.QueueFull:
                    self.dropped += 1


def parse_args(extra=None) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--queue-size", type=int, default=256)
    p.add_argument("--ping", type=float, default=0, help="heartbeat seconds, 0 = off")
    if extra:
        extra(p)
    return p.parse_args()
