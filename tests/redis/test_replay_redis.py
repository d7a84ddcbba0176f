"""
C{?replay=} and the C{Last-Event-ID} response header with C{--redis}: the
replay comes from the node's mirror of the stream (L{StreamHistory}), whose
ids are stream ids, so its cursor resumes on any node.
"""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from sse_twisted.event import Event
from sse_twisted.parser import EventStreamParser
from sse_twisted.redis import StreamHistory

from ..support.processes import RawSubscriber
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


def header(sub: RawSubscriber, name: bytes) -> bytes | None:
    for line in sub.head().split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def datas(sub: RawSubscriber) -> list[str]:
    return [e.data for e in EventStreamParser().feed(sub.body())]


def test_stream_history_latest_and_newest_id() -> None:
    """
    The mirror answers latest() and newest_id as any history: the newest
    entry held, so one the TTL took is no cursor any more (it used to stay
    the newest id, held or not), while an older id still cannot be appended.
    """
    clock = Clock()
    clock.advance(100)
    history = StreamHistory(10, ttl=5, reactor=clock)
    history.append(Event.create("a", None, 1, id="99000-0"))
    history.append(Event.create("b", None, 2, id="99000-1"))
    history.append(Event.create("a", None, 3, id="99000-2"))
    assert history.newest_id == "99000-2"
    assert [e.id for e in history.latest(frozenset({"a"}), 5)] == ["99000-0", "99000-2"]
    assert [e.id for e in history.latest(frozenset({"b"}), 1)] == ["99000-1"]
    clock.advance(10)
    assert history.newest_id is None and history.latest(None, None) == []
    history.append(Event.create("a", None, 4, id="98000-0"))
    assert len(history) == 0


def test_replay_on_another_node_then_live(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """
    Events published on node A are replayed by node B (?replay=2, from its
    mirror), then the live ones follow from A; B's Last-Event-ID header is
    the newest stream id on the channel, and resuming with it on A misses
    nothing.
    """
    a, b = node(redis), node(redis)
    watcher, on_a = RawSubscriber(b, "/events?channel=x"), RawSubscriber(a, "/events?channel=x")
    for s in (watcher, on_a):
        s.read_until(b": connected")
    ids = [a.publish("x", "e", n)["id"] for n in range(4)]
    a.publish("y", "e", "other channel")
    watcher.read_until(ids[-1].encode() + b"\n")  # B's mirror holds them
    sub = RawSubscriber(b, "/events?channel=x&replay=2")
    sub.read_until(b"data: 3\n\n")
    assert header(sub, b"last-event-id") == ids[-1].encode()
    live = a.publish("x", "e", "live")["id"]
    sub.read_until(live.encode() + b"\n")
    sub.read_until(b'"live"\n\n')
    assert datas(sub) == ["2", "3", '"live"']
    sub.close()
    missed = a.publish("x", "e", "missed")["id"]
    on_a.read_until(missed.encode() + b"\n")  # A's mirror holds it (it reads the stream too)
    back = RawSubscriber(a, "/events?channel=x&replay=2", {"Last-Event-ID": live})
    back.read_until(missed.encode() + b"\n")
    back.read_until(b'"missed"\n\n')
    assert datas(back) == ['"missed"']
    for s in (watcher, on_a, back):
        s.close()


def test_pattern_subscribers_across_nodes_never_widen_the_token(redis: RedisServer, node) -> None:  # type: ignore[no-untyped-def]
    """
    With --redis and private channels: an anonymous ?pattern=p* on node B
    gets the public events published on node A and no private one, live and
    on resume (from B's mirror); as envelopes, every event names its channel
    and keeps its stream id; the text kind travels through Redis.
    """
    private = ("--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cr", "--private-channel", "priv*")
    a, b = node(redis, *private), node(redis, *private)
    live = RawSubscriber(b, "/events?pattern=p*&envelope=1")
    live.read_until(b": connected")
    first = a.publish("pub", "e", "p0")["id"]
    a.publish("priv-x", "e", "secret")
    status, _, _ = a.request("POST", "/publish", {"channel": "pub-2", "text": "[1]"})
    assert status == 200
    end = a.publish("pub", "e", "end")["id"]
    live.read_until(end.encode() + b"\n")
    live.read_until(b'"end"}\n\n')
    got = [json.loads(e.data) for e in EventStreamParser().feed(live.body())]
    assert [(g["channel"], g.get("data", g.get("text"))) for g in got] == [
        ("pub", "p0"),
        ("pub-2", "[1]"),
        ("pub", "end"),
    ]
    assert "text" in got[1] and got[0]["id"] == first
    resumed = RawSubscriber(b, "/events?pattern=p*", {"Last-Event-ID": first})
    resumed.read_until(end.encode() + b"\n")
    resumed.read_until(b'"end"\n\n')
    assert datas(resumed) == ["[1]", '"end"']
    for sub in (live, resumed):
        sub.close()
