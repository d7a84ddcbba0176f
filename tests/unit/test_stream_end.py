"""
How a stream ends: every end writes all the stream is owed or aborts it, and
leaves the broker's index first; private channels stay private on every path.
"""

from __future__ import annotations

from typing import Any

import jwt
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.auth import JWTAuth
from sse_twisted.parser import EventStreamParser

from ..support.chunks import dechunk
from ..support.conn import Conn, FillingTransport, make_site

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def site_for(broker: SSEBroker, clock: Clock, **kw: Any) -> Any:
    return make_site(make_resource(broker, demo=False, **kw), clock)


class Reader:
    """
    A client on a L{FillingTransport} that keeps what it reads, as a socket
    would: the transport pauses the stream once C{limit} bytes are unread.
    """

    def __init__(self, site: Any, path: bytes, limit: int = 200, **kw: Any) -> None:
        self.conn = Conn(site, path, limit=limit, **kw)
        assert isinstance(self.conn.transport, FillingTransport)
        self.transport: FillingTransport = self.conn.transport

    def read(self) -> None:
        self.transport.read()

    def body(self) -> tuple[bytes, bool]:
        return dechunk(self.conn.head_and_body()[1])

    def events(self) -> list[Any]:
        return EventStreamParser().feed(self.body()[0])


def test_drain_writes_every_queued_event_before_a_clean_end(clock: Clock) -> None:
    """
    A paused subscriber with queued events, drained, gets every one of them
    and then the end: the flush does not stop when the transport pauses
    again (it used to write one event, then end cleanly over the gap).
    """
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=100, id_prefix="t")
    site = site_for(broker, clock)
    r = Reader(site, b"/events?channel=a", limit=50)
    (sub,) = broker._subscribers
    assert sub.paused  # the response head alone fills this transport
    broker.publish("a", "story", "x" * 100)
    for n in range(20):
        broker.publish("a", "story", n)
    assert sub.queued == 21
    broker.drain(timeout=5)
    body, ended = r.body()
    assert ended, "the stream ends once everything owed is written"
    got = [e.last_event_id for e in r.events() if e.type == "story"]
    assert got == [f"t-{n}" for n in range(1, 22)]
    assert broker.client_count() == 0


def test_drain_of_a_catching_up_subscriber_writes_the_history_it_is_owed(clock: Clock) -> None:
    """Under overflow catchup, a drained stream gets what the history holds for it, then ends."""
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=2, overflow="catchup", id_prefix="t")
    site = site_for(broker, clock)
    r = Reader(site, b"/events?channel=a", limit=50)
    broker.publish("a", "story", "x" * 100)
    for n in range(10):
        broker.publish("a", "story", n)
    broker.publish("b", "story", "not for it")
    (sub,) = broker._subscribers
    assert sub.catching_up
    broker.drain(timeout=5)
    assert r.body()[1]
    got = [e.last_event_id for e in r.events() if e.type == "story"]
    assert got == [f"t-{n}" for n in range(1, 12)]


def test_drain_deadline_aborts_what_could_not_go_out(clock: Clock) -> None:
    """A drained stream whose client never reads is aborted at the deadline, never ended cleanly."""
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=10, id_prefix="t")
    site = site_for(broker, clock)
    r = Reader(site, b"/events", limit=50)
    for n in range(5):
        broker.publish("a", "story", n)
    done = broker.drain(timeout=3)
    assert r.transport.disconnecting and not r.transport.disconnected
    clock.advance(3.1)
    assert done.called
    assert r.transport.aborted if hasattr(r.transport, "aborted") else True


def token(clock: Clock, exp: float | None = 60, **sse: Any) -> bytes:
    claims: dict[str, Any] = {"sse": sse}
    if exp is not None:
        claims["exp"] = int(clock.seconds() + exp)
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def test_expiry_takes_the_stream_out_at_once_and_sends_nothing_later(clock: Clock) -> None:
    """
    At its token's expiry a stalled subscriber leaves the index at once: what
    was queued before expiry is written, nothing published after it is, and a
    client that never reads is aborted after close_timeout.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=100, id_prefix="t")
    auth = JWTAuth(secret=SECRET, private=["p*"])
    site = site_for(broker, clock, auth=auth)
    r = Reader(site, b"/events?channel=p1&token=" + token(clock, exp=10, subscribe=["p*"]), 50)
    assert broker.client_count() == 1
    broker.publish("p1", "story", "x" * 100)
    broker.publish("p1", "story", "before")
    clock.advance(11)
    assert broker.client_count() == 0
    broker.publish("p1", "story", "after")
    assert [e.data for e in r.events() if e.type == "story"] == ['"' + "x" * 100 + '"', '"before"']
    assert r.transport.disconnecting
    clock.advance(broker.close_timeout + 0.1)
    assert clock.getDelayedCalls() == []
    assert broker.stats.expired == 1


def test_expiry_while_catching_up_aborts(clock: Clock) -> None:
    """A stream owed events from the history at expiry is aborted: it resumes with a new token."""
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=1, overflow="catchup", id_prefix="t")
    auth = JWTAuth(secret=SECRET, private=["p*"])
    site = site_for(broker, clock, auth=auth)
    r = Reader(site, b"/events?channel=p1&token=" + token(clock, exp=10, subscribe=["p*"]), 50)
    for n in range(5):
        broker.publish("p1", "story", "x" * 60 + str(n))
    (sub,) = broker._subscribers
    assert sub.catching_up
    clock.advance(11)
    assert broker.client_count() == 0
    assert not r.body()[1], "never a clean end over a gap"
    assert r.transport.disconnecting


def test_write_timeout_aborts_a_stalled_stream_only(clock: Clock) -> None:
    """
    With write_timeout, a paused stream whose socket takes nothing is aborted
    and leaves the index; a reading one stays.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0, write_timeout=10, id_prefix="t")
    site = site_for(broker, clock)
    stuck = Reader(site, b"/events", limit=50)
    reading = Reader(site, b"/events", limit=50)
    broker.publish("a", "story", "x" * 100)
    assert broker.client_count() == 2
    for _ in range(30):
        reading.read()
        clock.advance(1)
    assert broker.client_count() == 1
    assert stuck.transport.disconnecting and not stuck.body()[1]
    assert broker.stats.write_timeouts == 1
    (left,) = broker._subscribers
    assert left.transport is reading.transport
    reading.conn.drop()
    assert clock.getDelayedCalls() == []


def test_private_channels_never_replayed_to_anonymous_subscribers(clock: Clock) -> None:
    """
    A subscriber of every channel without a token resuming with any public id
    gets the public events after it and none of the private ones.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="t")
    auth = JWTAuth(secret=SECRET, private=["priv*"])
    site = site_for(broker, clock, auth=auth)
    first = broker.publish("pub", "story", 0)
    broker.publish("priv-x", "story", "secret")
    broker.publish("pub", "story", 1)
    c = Conn(site, b"/events?lastEventId=" + first.id.encode())  # type: ignore[union-attr]
    broker.publish("priv-x", "story", "secret too")
    broker.publish("pub", "story", 2)
    assert [e.data for e in c.events() if e.type == "story"] == ["1", "2"]


def test_catchup_never_feeds_private_events_to_anonymous_subscribers(clock: Clock) -> None:
    """The overflow catch-up reads the history through the same decision as live dispatch."""
    broker = SSEBroker(reactor=clock, heartbeat=0, queue_size=1, overflow="catchup", id_prefix="t")
    auth = JWTAuth(secret=SECRET, private=["priv*"])
    site = site_for(broker, clock, auth=auth)
    r = Reader(site, b"/events", limit=50)
    for n in range(6):
        broker.publish("pub", "story", "x" * 60 + str(n))
        broker.publish("priv-x", "story", "secret")
    for _ in range(20):
        r.read()
    datas = [e.data for e in r.events() if e.type == "story"]
    assert len(datas) == 6 and all("secret" not in d for d in datas)


def test_a_grant_opens_private_channels_to_an_all_channel_subscriber(clock: Clock) -> None:
    """
    A subscriber of every channel whose token grants a private channel gets
    it live and on resume; channels it is not granted stay closed.
    """
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="t")
    auth = JWTAuth(secret=SECRET, private=["priv*"])
    site = site_for(broker, clock, auth=auth)
    first = broker.publish("pub", "story", 0)
    broker.publish("priv-a", "story", "a1")
    broker.publish("priv-b", "story", "b1")
    tok = token(clock, subscribe=["priv-a"])
    c = Conn(site, b"/events?token=" + tok + b"&lastEventId=" + first.id.encode())  # type: ignore[union-attr]
    broker.publish("priv-a", "story", "a2")
    broker.publish("priv-b", "story", "b2")
    assert [e.data for e in c.events() if e.type == "story"] == ['"a1"', '"a2"']


def test_notify_gap_tells_every_open_stream(clock: Clock) -> None:
    """notify_gap writes sse.reset with the reason to every open stream and counts them."""
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="t")
    site = site_for(broker, clock)
    a, b = Conn(site, b"/events?channel=x"), Conn(site, b"/events")
    assert broker.notify_gap("5-0", "trimmed") == 2
    for c in (a, b):
        (reset,) = [e for e in c.events() if e.type == "sse.reset"]
        assert reset.data == '{"lastEventId":"5-0","reason":"trimmed"}'
    assert broker.stats.resets == 2


def test_history_is_bounded_in_bytes_and_holds_each_event_once(clock: Clock) -> None:
    """
    The history drops its oldest events to stay within max_bytes (always
    keeping the newest), and an event holds its frame only: its data is read
    back from it.
    """
    from sse_twisted.event import Event
    from sse_twisted.history import MemoryHistory

    history = MemoryHistory(100, max_bytes=1000, reactor=clock)
    events = [Event.create("a", "e", "x" * 300, id=f"t-{n}") for n in range(5)]
    for ev in events:
        history.append(ev)
    assert 0 < history.bytes <= 1000
    assert [e.id for e in history] == ["t-2", "t-3", "t-4"]
    assert history.since("t-1", None, 10) is None  # pushed out: unknown, so sse.reset
    big = Event.create("a", None, text="y" * 5000, id="t-big")
    history.append(big)
    assert [e.id for e in history] == ["t-big"]
    assert not hasattr(big, "__dict__") and "data" not in Event.__dataclass_fields__
    assert big.data == "y" * 5000
    assert Event.create("a", None, text="l1\r\nl2\rl3", id="i").data == "l1\nl2\nl3"


def test_broker_history_bytes(clock: Clock) -> None:
    """SSEBroker(history_bytes=...) bounds its in-memory history in bytes."""
    broker = SSEBroker(reactor=clock, heartbeat=0, history=1000, history_bytes=2000)
    for _ in range(50):
        broker.publish("a", "e", "z" * 100)
    assert broker.history is not None
    assert 1000 < sum(len(e.frame) for e in broker.history) <= 2000  # type: ignore[attr-defined]
