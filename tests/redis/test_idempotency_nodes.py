"""
Idempotency keys across two real `twistd sse --redis` nodes and one real
redis-server (issue 13).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from sse_twisted.parser import EventStreamParser

from ..support.processes import RawSubscriber, SSEServer
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

BODY = {"channel": "orders", "event": "created", "data": {"n": 7}}


def data_of(sub: RawSubscriber, marker: str) -> list[tuple[str, str]]:
    """The (data, id) of the events before the text event C{marker}, waited for with a deadline."""
    sub.read_until(f"data: {marker}\n\n".encode())
    events = EventStreamParser().feed(sub.body())
    return [(e.data, e.last_event_id) for e in events if e.data != marker]


def test_two_nodes_share_keys(redis: RedisServer, node: Any) -> None:
    """
    With --redis: a key posted to node A then to node B publishes once (B
    answers duplicate with A's id); the same key posted to both nodes at the
    same moment, many times over, delivers exactly one event per key.
    """
    a, b = node(redis), node(redis)
    sub = RawSubscriber(b, "/events?channel=orders")
    sub.read_until(b": connected")
    _, _, first = a.request("POST", "/publish", BODY, {"Idempotency-Key": "a-then-b"})
    status, _, again = b.request("POST", "/publish", BODY, {"Idempotency-Key": "a-then-b"})
    assert (status, again) == (200, {"id": first["id"], "clients": 0, "duplicate": True})

    rounds = 20
    answers: dict[tuple[int, str], Any] = {}

    def post(n: int, srv: SSEServer, name: str, go: threading.Barrier) -> None:
        body = {"channel": "orders", "data": n}
        go.wait(10)
        answers[n, name] = srv.request("POST", "/publish", body, {"Idempotency-Key": f"k{n}"})

    for n in range(rounds):
        go = threading.Barrier(2)
        threads = [
            threading.Thread(target=post, args=(n, srv, name, go))
            for srv, name in ((a, "a"), (b, "b"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(15)
    for n in range(rounds):
        (sa, _, x), (sb, _, y) = answers[n, "a"], answers[n, "b"]
        assert sa == sb == 200 and x["id"] == y["id"], (x, y)
        assert sorted([bool(x.get("duplicate")), bool(y.get("duplicate"))]) == [False, True]
    a.publish("orders", text="end")
    got = data_of(sub, "end")
    assert [d for d, _ in got] == ['{"n":7}', *map(str, range(rounds))]
