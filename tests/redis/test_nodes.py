"""Two real `twistd sse --redis` nodes and one real redis-server: fan-out, resume, faults."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

import sse_twisted.tap
from sse_twisted.parser import EventStreamParser

from ..support.processes import RawSubscriber, wait
from ..support.redis_server import REDIS_SERVER, RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def events(sub: RawSubscriber) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in EventStreamParser().feed(sub.body())]


def test_redis_binary_present() -> None:
    """The Redis tests run here (CI installs redis-server)."""
    assert REDIS_SERVER is not None


def test_publish_on_one_node_reaches_both(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """An event published on node A reaches subscribers on A and B once, with the same id."""
    a, b = node(redis), node(redis)
    on_a, on_b = RawSubscriber(a, "/events?channel=x"), RawSubscriber(b, "/events?channel=x")
    for s in (on_a, on_b):
        s.read_until(b": connected")
    first = a.publish("x", "e", {"n": 1})["id"]
    second = b.publish("x", "e", {"n": 2})["id"]
    assert tuple(map(int, first.split("-"))) < tuple(map(int, second.split("-")))  # stream ids
    for s in (on_a, on_b):
        s.read_until(second.encode() + b"\n")
        s.read_until(b'{"n":2}\n\n')
        assert events(s) == [("e", '{"n":1}', first), ("e", '{"n":2}', second)]


def test_resume_on_another_node(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """A subscriber of A that reconnects to B with its Last-Event-ID misses nothing."""
    a, b = node(redis), node(redis)
    sub = RawSubscriber(a, "/events?channel=r")
    sub.read_until(b": connected")
    seen = a.publish("r", "e", 0)["id"]
    sub.read_until(seen.encode())
    sub.close()
    missed = [a.publish("r", "e", n)["id"] for n in range(1, 4)]
    b.publish("other", "e", 99)
    again = RawSubscriber(b, "/events?channel=r", headers={"Last-Event-ID": seen})
    again.read_until(missed[-1].encode() + b"\n")
    again.read_until(b"data: 3\n\n")
    assert [(d, i) for _, d, i in events(again)] == [
        ("1", missed[0]),
        ("2", missed[1]),
        ("3", missed[2]),
    ]


def test_redis_lost_and_back_empty(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """
    Redis killed mid-stream: streams stay open, health and publish answer 503;
    Redis back (empty): health 200, publishing flows, an old id gets sse.reset.
    """
    a = node(redis)
    sub = RawSubscriber(a, "/events?channel=f")
    sub.read_until(b": connected")
    old = a.publish("f", "e", 1)["id"]
    sub.read_until(old.encode())
    redis.kill()
    wait(lambda: a.request("GET", "/health")[0] == 503, "health 503 without Redis")
    status, _, answer = a.request("POST", "/publish", {"channel": "f", "data": 2})
    assert status == 503 and "error" in answer
    sub.sock.settimeout(0.3)
    with pytest.raises(TimeoutError):  # still open: nothing arrives, and no close
        sub.sock.recv(1)
    redis.spawn()
    wait(lambda: a.request("GET", "/health")[0] == 200, "health 200 with Redis back", timeout=20)
    new = a.publish("f", "e", 3)["id"]
    sub.read_until(new.encode() + b"\n")
    sub.read_until(b"data: 3\n\n")
    got = events(sub)
    assert [d for t, d, _ in got if t != "sse.reset"] == ["1", "3"]
    if "on_gap" in Path(sse_twisted.tap.__file__).read_text():
        # What Redis held after "1" is lost to this node: the open stream is told.
        resets = [d for t, d, _ in got if t == "sse.reset"]
        assert resets == [
            json.dumps({"lastEventId": old, "reason": "stream-lost"}, separators=(",", ":"))
        ]
        assert [t for t, _, _ in got].index("sse.reset") == 1
    resumed = RawSubscriber(a, "/events?channel=f", headers={"Last-Event-ID": old})
    resumed.read_until(b"sse.reset")
    resumed.read_until(b"\n\n")
    kinds = [t for t, _, _ in events(resumed)]
    assert kinds[0] == "sse.reset"


def test_redis_unreachable_at_start(redis_binary: str, node) -> None:  # type: ignore[no-untyped-def]
    """A node started before Redis says so once, answers 503, and becomes ready when Redis is."""
    server = RedisServer()  # not started yet
    a = node(server, ready=False)
    a.read_until(r"(?i)redis", timeout=15)
    assert a.request("GET", "/health")[0] == 503
    assert a.request("POST", "/publish", {"channel": "c", "data": 1})[0] == 503
    server.spawn()
    try:
        wait(lambda: a.request("GET", "/health")[0] == 200, "ready once Redis is up", timeout=20)
        assert a.publish("c", "e", 1)["clients"] == 0
    finally:
        server.kill()


def test_node_restart_mid_stream(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """A node stopped mid-stream: its client resumes on the other node without loss."""
    a, b = node(redis), node(redis)
    sub = RawSubscriber(a, "/events?channel=n")
    sub.read_until(b": connected")
    last = a.publish("n", "e", 0)["id"]
    sub.read_until(last.encode())
    a.stop(signal.SIGTERM)
    sub.read_to_close()
    gap = [b.publish("n", "e", n)["id"] for n in (1, 2)]
    moved = RawSubscriber(b, "/events?channel=n", headers={"Last-Event-ID": last})
    moved.read_until(gap[-1].encode() + b"\n")
    moved.read_until(b"data: 2\n\n")
    assert [json.loads(d) for _, d, _ in events(moved)] == [1, 2]
