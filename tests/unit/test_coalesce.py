"""
A batch of events published in one call goes to each subscriber in one write;
a lone event is written at once, as it is published.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from sse_twisted.parser import EventStreamParser

from ..support.conn import Conn, serve


def _count_writes(conn: Conn) -> list[bytes]:
    writes: list[bytes] = []
    original = conn.transport.write

    def write(data: bytes) -> None:
        writes.append(data)
        original(data)

    conn.transport.write = write  # type: ignore[method-assign]
    return writes


def _names(conn: Conn) -> list[Any]:
    return [e.data for e in EventStreamParser().feed(conn.stream())]


def test_a_batch_is_one_write_per_subscriber(clock: Clock) -> None:
    """publish_many of 5 events on 2 channels: each subscriber gets its share in one write."""
    broker, site = serve(clock, stream_only=True)
    a, b, every = Conn(site, b"/events?channel=a"), Conn(site, b"/events?channel=b"), Conn(site)
    writes = {name: _count_writes(c) for name, c in (("a", a), ("b", b), ("all", every))}
    batch = [{"channel": ch, "text": f"{ch}{n}"} for n, ch in enumerate("ababa")]
    broker.publish_many(batch)
    assert {name: len(w) for name, w in writes.items()} == {"a": 1, "b": 1, "all": 1}
    assert _names(a) == ["a0", "a2", "a4"]
    assert _names(b) == ["b1", "b3"]
    assert _names(every) == ["a0", "b1", "a2", "b3", "a4"]


def test_a_lone_event_is_written_as_it_is_published(clock: Clock) -> None:
    """publish() writes at once, each event its own write: nothing is held for later."""
    broker, site = serve(clock, stream_only=True)
    c = Conn(site, b"/events?channel=a")
    writes = _count_writes(c)
    broker.publish("a", text="one")
    assert len(writes) == 1 and _names(c) == ["one"]
    broker.publish("a", text="two")
    assert len(writes) == 2 and _names(c) == ["one", "two"]
