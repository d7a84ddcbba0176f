"""The broker and the HTTP API with a relay (what --redis plugs in), using an in-memory relay."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.event import Event, Item
from sse_twisted.history import MemoryHistory

from ..support.conn import Conn, serve

JSON = {b"content-type": b"application/json"}


class LoopRelay:
    """Stores items in a list and hands them back as events when told to (one 'node')."""

    def __init__(self) -> None:
        self.ready = True
        self.history = MemoryHistory(1000)
        self.on_event: Callable[[Event], object] | None = None
        self.on_gap: Callable[[str, str], object] | None = None
        self.stored: list[tuple[str, Item]] = []
        self.pending: list[Deferred[list[str]]] = []
        self.hold = False

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(self, items: Sequence[Item]) -> Deferred[list[str]]:
        if not self.ready:
            return fail(ConnectionError("relay not connected"))
        ids = []
        for item in items:
            stream_id = f"{1000 + len(self.stored)}-0"
            self.stored.append((stream_id, item))
            ids.append(stream_id)
        d: Deferred[list[str]] = Deferred()
        if self.hold:
            self.pending.append(d)
            d.addCallback(self._deliver)
        else:
            d.addCallback(self._deliver)
            d.callback(ids)
        return d

    def _deliver(self, ids: list[str]) -> list[str]:
        assert self.on_event is not None
        stored = dict(self.stored)
        for stream_id in ids:
            self.on_event(stored[stream_id].framed(stream_id))
        return ids


def test_publish_goes_through_the_relay() -> None:
    """With a relay, publish stores first; subscribers get the event from the relay, its id too."""
    clock = Clock()
    relay = LoopRelay()
    broker, site = serve(clock, relay=relay, id_prefix=None)
    sub = Conn(site, b"/events?channel=c")
    result = broker.publish("c", "e", {"x": 1})
    assert isinstance(result, Deferred)
    got: list[Event] = []
    result.addCallback(got.append)
    assert got[0].id == "1000-0"
    assert [(e.type, e.data, e.last_event_id) for e in sub.events()] == [("e", '{"x":1}', "1000-0")]
    assert relay.stored[0][1] == Item("c", "e", '{"x":1}', None)


def test_relay_refuses_publisher_ids() -> None:
    """Ids are the relay's: a publisher's own id is refused, nothing stored."""
    clock = Clock()
    relay = LoopRelay()
    broker, _ = serve(clock, relay=relay, id_prefix=None)
    with pytest.raises(ValueError, match="chosen by the relay"):
        broker.publish("c", "e", 1, id="mine")
    assert relay.stored == []


def test_http_publish_answers_after_storing() -> None:
    """POST /publish answers once the relay stored the batch, with the relay's ids."""
    clock = Clock()
    relay = LoopRelay()
    broker, site = serve(clock, relay=relay, id_prefix=None)
    relay.hold = True
    sub = Conn(site, b"/events?channel=c")
    r = Conn(
        site,
        b"/publish",
        method=b"POST",
        headers=JSON,
        body=b'[{"channel":"c","data":1},{"channel":"c","text":"two"}]',
    )
    assert r.raw() == b""  # not answered yet: nothing is stored until the relay says so
    relay.pending.pop().callback(["1000-0", "1001-0"])
    assert r.status == 200
    assert r.json() == [{"id": "1000-0", "clients": 1}, {"id": "1001-0", "clients": 1}]
    assert [e.data for e in sub.events()] == ["1", "two"]


def test_http_publish_with_relay_down() -> None:
    """Relay not ready: 503 and nothing stored; health says unavailable."""
    clock = Clock()
    relay = LoopRelay()
    broker, site = serve(clock, relay=relay, id_prefix=None)
    relay.ready = False
    r = Conn(site, b"/publish", method=b"POST", headers=JSON, body=b'{"channel":"c","data":1}')
    assert r.status == 503 and "relay" in r.json()["error"]
    h = Conn(site, b"/health")
    assert h.status == 503 and h.json()["status"] == "unavailable"
    assert relay.stored == []


def test_http_publish_relay_fails_midway() -> None:
    """A relay that fails after accepting the request gets a 503 JSON answer, never a 200."""
    clock = Clock()
    relay = LoopRelay()
    broker, site = serve(clock, relay=relay, id_prefix=None)
    relay.hold = True
    r = Conn(site, b"/publish", method=b"POST", headers=JSON, body=b'{"channel":"c","data":1}')
    relay.pending.pop().errback(ConnectionError("lost Redis"))
    assert r.status == 503 and "lost Redis" in r.json()["error"]


def test_bad_items_refused_before_the_relay() -> None:
    """Validation happens before anything reaches the relay: a 400 and nothing stored."""
    clock = Clock()
    relay = LoopRelay()
    broker, site = serve(clock, relay=relay, id_prefix=None)
    r = Conn(
        site,
        b"/publish",
        method=b"POST",
        headers=JSON,
        body=b'[{"channel":"c","data":1},{"channel":"c","event":"a\\nb","data":2}]',
    )
    assert r.status == 400 and "item 1" in r.json()["error"]
    assert relay.stored == []


def test_publish_threadsafe_through_the_relay() -> None:
    """publish_threadsafe resolves its future once the relay stored the event."""

    class ThreadClock(Clock):
        def __init__(self) -> None:
            super().__init__()
            self.handed: list[Any] = []

        def callFromThread(self, f: Any, *a: Any, **kw: Any) -> None:
            self.handed.append((f, a, kw))

    clock = ThreadClock()
    relay = LoopRelay()
    broker = SSEBroker(reactor=clock, heartbeat=0, relay=relay)
    futures = []
    t = threading.Thread(target=lambda: futures.append(broker.publish_threadsafe("c", "e", [1])))
    t.start()
    t.join(5)
    for f, a, kw in clock.handed:
        f(*a, **kw)
    assert futures[0].result(timeout=1).id == "1000-0"
