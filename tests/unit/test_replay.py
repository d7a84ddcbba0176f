"""
C{?replay=} on a first connect, the C{Last-Event-ID} response header, and the
history lookups behind them (C{latest}, C{newest_id}, an O(1) C{since}).
"""

from __future__ import annotations

import time
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from sse_twisted import SSEBroker
from sse_twisted.auth import JWTAuth
from sse_twisted.cors import CORSPolicy
from sse_twisted.event import Event
from sse_twisted.history import MemoryHistory

from ..support.conn import Conn, make_site, serve

CHANNELS = ["a", "b", "c"]


def ev(n: int, channel: str = "c", size: int = 0, id: str | None = None) -> Event:
    return Event.create(channel, "e", "x" * size, id=id or f"t-{n}")


# The history against a reference


class HistoryModel(RuleBasedStateMachine):
    """
    L{MemoryHistory} against the plainest possible history (a list of what
    is held, trimmed by count, bytes and time): every lookup answers the same
    after any interleaving of appends (ids repeated too), time passing and
    clears. Pins the list-with-a-moving-head layout behind the O(1) lookup.
    """

    @initialize(
        size=st.integers(1, 6),
        ttl=st.sampled_from([0, 5]),
        max_bytes=st.sampled_from([0, 200, 400]),
    )
    def setup(self, size: int, ttl: float, max_bytes: int) -> None:
        self.clock = Clock()
        self.history = MemoryHistory(size, ttl, self.clock, max_bytes=max_bytes)
        self.size, self.ttl, self.max_bytes = size, ttl, max_bytes
        self.held: list[tuple[float, Event]] = []
        self.seen: list[str] = []
        self.n = 0

    def expire(self) -> None:
        if self.ttl:
            horizon = self.clock.seconds() - self.ttl
            self.held = [(t, e) for t, e in self.held if t > horizon]

    @rule(channel=st.sampled_from(CHANNELS), size=st.integers(0, 150), reuse=st.integers(0, 5))
    def append(self, channel: str, size: int, reuse: int) -> None:
        self.n += 1
        # Sometimes an id seen before (publishers may repeat theirs).
        event_id = self.seen[-reuse] if reuse and len(self.seen) >= reuse else f"t-{self.n}"
        event = ev(self.n, channel, size, event_id)
        self.history.append(event)
        self.seen.append(event_id)
        self.held.append((self.clock.seconds(), event))
        self.held = self.held[-self.size :]
        while self.max_bytes and len(self.held) > 1:
            if sum(len(e.frame) for _, e in self.held) <= self.max_bytes:
                break
            del self.held[0]
        self.expire()

    @rule(seconds=st.sampled_from([1, 3, 6]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def clear(self) -> None:
        self.history.clear()
        self.held = []

    @invariant()
    def answers_as_the_reference(self) -> None:
        if not hasattr(self, "history"):
            return
        self.expire()
        h = self.history
        held = [e for _, e in self.held]
        assert list(h) == held
        assert len(h) == len(held)
        assert h.bytes == sum(len(e.frame) for e in held)
        assert h.newest_id == (held[-1].id if held else None)
        for channels in (None, frozenset({"a"}), frozenset({"a", "b"}), frozenset({"z"})):
            mine = [e for e in held if channels is None or e.channel in channels]
            for limit in (None, 1, 2, 100):
                expected = mine if limit is None else mine[len(mine) - min(limit, len(mine)) :]
                assert h.latest(channels, limit) == expected, (channels, limit)
                # A filter that is not a set takes the scanning path.
                if channels is not None:
                    assert h.latest(list(channels), limit) == expected
            for last_id in set(self.seen):
                # The newest event with that id is where a resume continues.
                at = [i for i, e in enumerate(held) if e.id == last_id]
                for limit in (1, 3, 100):
                    got = h.since(last_id, channels, limit)
                    if not at:
                        assert got is None
                        continue
                    after = held[at[-1] + 1 :]
                    want = [e for e in after if channels is None or e.channel in channels]
                    assert got == want[:limit], (last_id, channels, limit)


HistoryModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_history_model = HistoryModel.TestCase


def test_forgotten_events_are_freed_at_once() -> None:
    """
    An event pushed out of the history is not referenced any more (its frame
    can be freed): the byte bound holds for memory, not just for the count.
    """
    h = MemoryHistory(2)
    for n in range(1, 6):
        h.append(ev(n))
    assert sum(e is not None for e in h._events) == 2
    assert len(h._events) <= 4


def test_latest_and_newest_id() -> None:
    """latest() gives the newest events on the channels in publish order; newest_id the last id."""
    h = MemoryHistory(10)
    assert h.newest_id is None
    assert h.latest(None, 3) == []
    for n in range(1, 7):
        h.append(ev(n, "a" if n % 2 else "b"))
    assert [e.id for e in h.latest(None, 2)] == ["t-5", "t-6"]
    assert [e.id for e in h.latest(frozenset({"a"}), 2)] == ["t-3", "t-5"]
    assert [e.id for e in h.latest(frozenset({"a"}), None)] == ["t-1", "t-3", "t-5"]
    assert [e.id for e in h.latest(frozenset({"a", "b"}), 1)] == ["t-6"]
    assert h.latest(None, 0) == []
    assert h.newest_id == "t-6"


# ?replay= over HTTP


def datas(conn: Conn) -> list[str]:
    return [e.data for e in conn.events()]


def published(clock: Clock, count: int, **options: Any) -> tuple[SSEBroker, Any]:
    """A stream-only site whose broker published 0..count-1 on a, b, a, b..."""
    broker, site = serve(clock, stream_only=True, **options)
    for n in range(count):
        broker.publish("a" if n % 2 == 0 else "b", "e", n)
    return broker, site


def test_replay_n_then_live() -> None:
    """
    ?replay=N sends the newest N events on the subscribed channels, oldest
    first, then the live stream: nothing twice, nothing missing between.
    """
    broker, site = published(Clock(), 10)
    c = Conn(site, b"/events?channel=a&replay=3")
    assert datas(c) == ["4", "6", "8"]
    broker.publish("b", "e", 10)
    broker.publish("a", "e", 11)
    assert datas(c) == ["4", "6", "8", "11"]
    assert [e.last_event_id for e in c.events()] == ["t-5", "t-7", "t-9", "t-12"]
    assert broker.stats.replayed == 3


def test_replay_all_and_more_than_held() -> None:
    """
    ?replay=all sends every event the history holds on the channels; an N
    above what it holds sends the same (a replay is bounded by the history).
    """
    broker, site = published(Clock(), 12, history=8)
    every = Conn(site, b"/events?replay=all")
    assert datas(every) == [str(n) for n in range(4, 12)]
    assert datas(Conn(site, b"/events?channel=b&replay=all")) == ["5", "7", "9", "11"]
    assert datas(Conn(site, b"/events?channel=b&replay=1000000")) == ["5", "7", "9", "11"]
    broker.publish("a", "e", 12)
    assert datas(every)[-2:] == ["11", "12"]


@pytest.mark.parametrize("value", [b"0", b""])
def test_replay_zero_or_empty_is_live_only(value: bytes) -> None:
    """?replay=0 and an empty ?replay= replay nothing: the live stream only."""
    broker, site = published(Clock(), 4)
    c = Conn(site, b"/events?replay=" + value)
    assert c.status == 200 and c.events() == []
    broker.publish("a", "e", 4)
    assert datas(c) == ["4"]


def test_last_event_id_takes_precedence_over_replay() -> None:
    """
    With Last-Event-ID (header or ?lastEventId=) the stream resumes after it
    and ?replay= is ignored: a reconnecting EventSource, whose URL still says
    replay=N, is not replayed the same events again.
    """
    _, site = published(Clock(), 10)
    header = Conn(site, b"/events?channel=a&replay=all", headers={b"Last-Event-ID": b"t-7"})
    assert datas(header) == ["8"]
    query = Conn(site, b"/events?channel=a&replay=all&lastEventId=t-9")
    assert datas(query) == []
    unknown = Conn(site, b"/events?replay=3", headers={b"Last-Event-ID": b"gone"})
    assert [e.type for e in unknown.events()] == ["sse.reset"]


@pytest.mark.parametrize(
    "value", [b"-1", b"abc", b"1.5", b"1000001", b"99999999999999999999", b"+3", b"%203", b"ALL"]
)
def test_bad_replay_is_a_400(value: bytes) -> None:
    """
    A ?replay= that is neither 'all' nor a whole number up to 1,000,000 is a
    400 with a JSON error naming the accepted values (even beside a
    Last-Event-ID); no stream is opened and nobody else's is touched.
    """
    broker, site = published(Clock(), 3)
    other = Conn(site, b"/events?replay=2")
    before = other.stream()
    c = Conn(site, b"/events?replay=" + value, headers={b"Last-Event-ID": b"t-1"})
    assert c.status == 400
    assert c.header(b"content-type") == b"application/json"
    assert c.json() == {"error": "replay must be 'all' or a whole number from 0 to 1,000,000"}
    assert broker.client_count() == 1 and other.stream() == before


@pytest.mark.parametrize("replay", ["3", "all"])
def test_without_a_history_replay_is_the_live_stream(replay: str) -> None:
    """
    With the history off (--history 0) there is nothing to replay: ?replay=
    opens the live stream (no error, which would stop EventSource for good),
    with no Last-Event-ID header.
    """
    broker, site = published(Clock(), 3, history=0)
    c = Conn(site, b"/events?replay=" + replay.encode())
    assert c.status == 200 and c.events() == []
    assert c.header(b"last-event-id") is None
    broker.publish("a", "e", 3)
    assert datas(c) == ["3"]


def test_replay_cut_short_by_a_full_transport_continues_from_the_history() -> None:
    """
    A replay larger than the client takes at once stops when the transport
    is full and goes on from the history as the client reads, with the
    events published meanwhile after it: every one once, in order.
    """
    clock = Clock()
    broker, site = published(clock, 200, history=500)
    size = len(broker.history.latest(None, 1)[0].frame)  # type: ignore[union-attr]
    c = Conn(site, b"/events?channel=a&replay=80", limit=10 * size)
    (sub,) = broker._subscribers
    assert sub.paused and sub.catching_up
    assert 0 < len(c.events()) < 80
    n = 200
    for _ in range(200):
        broker.publish("a" if n % 2 == 0 else "b", "e", n)  # mid-replay
        n += 1
        c.read()
        if not sub.catching_up and not sub.paused:
            break
    broker.publish("a", "e", 1000)
    c.read()
    expected = list(range(40, 200, 2)) + [k for k in range(200, n) if k % 2 == 0] + [1000]
    assert [int(d) for d in datas(c)] == expected


@given(
    st.lists(st.sampled_from("abc"), max_size=30),
    st.sets(st.sampled_from("abc")),
    st.sampled_from([b"1", b"2", b"5", b"all"]),
    st.lists(st.sampled_from("abc"), max_size=5),
)
def test_replay_property(
    before: list[str], wanted: set[str], replay: bytes, after: list[str]
) -> None:
    """
    For any history, channels and N: the stream is the newest N held events
    on the channels, then every later one on them, and its Last-Event-ID
    header is the newest of them held when it connected.
    """
    broker, site = serve(Clock(), stream_only=True, history=10)
    for n, channel in enumerate(before):
        broker.publish(channel, "e", n)
    query = b"&".join([b"channel=" + w.encode() for w in sorted(wanted)] + [b"replay=" + replay])
    c = Conn(site, b"/events?" + query)
    for n, channel in enumerate(after, len(before)):
        broker.publish(channel, "e", n)
    held = list(enumerate(before))[-10:]
    mine = [n for n, ch in held if not wanted or ch in wanted]
    replayed = mine if replay == b"all" else mine[len(mine) - min(int(replay), len(mine)) :]
    live = [n for n, ch in enumerate(after, len(before)) if not wanted or ch in wanted]
    assert [int(d) for d in datas(c)] == replayed + live
    assert c.header(b"last-event-id") == (f"t-{mine[-1] + 1}".encode() if mine else None)


# The Last-Event-ID response header


def test_header_is_the_newest_id_on_the_subscribed_channels() -> None:
    """
    A stream's response carries Last-Event-ID: the newest id the history
    holds on its channels (all of them without a channel), so a client that
    came without one knows its cursor; none while the history holds none.
    """
    broker, site = serve(Clock(), stream_only=True)
    assert Conn(site, b"/events").header(b"last-event-id") is None
    for n in range(5):
        broker.publish("a" if n < 3 else "b", "e", n)
    assert Conn(site, b"/events").header(b"last-event-id") == b"t-5"
    assert Conn(site, b"/events?channel=a").header(b"last-event-id") == b"t-3"
    assert Conn(site, b"/events?channel=a&channel=b").header(b"last-event-id") == b"t-5"
    assert Conn(site, b"/events?channel=z").header(b"last-event-id") is None
    # Also beside a resume: the cursor now, not the one it came with.
    resumed = Conn(site, b"/events?channel=a", headers={b"Last-Event-ID": b"t-1"})
    assert resumed.header(b"last-event-id") == b"t-3"


def test_header_cursor_resumes_with_nothing_lost() -> None:
    """
    The cursor from the header resumes exactly after what the stream had
    replayed: a client that leaves and comes back with it gets the events
    published in between on its channels.
    """
    broker, site = published(Clock(), 6)
    c = Conn(site, b"/events?channel=a&replay=2")
    cursor = c.header(b"last-event-id")
    assert cursor == b"t-5" and c.events()[-1].last_event_id == "t-5"
    c.drop()
    broker.publish("a", "e", 6)
    broker.publish("b", "e", 7)
    back = Conn(site, b"/events?channel=a", headers={b"Last-Event-ID": cursor})
    assert datas(back) == ["6"]


SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(*grants: str) -> bytes:
    claims = {"sse": {"subscribe": list(grants)}, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def test_private_channels_are_neither_replayed_nor_named_in_the_header() -> None:
    """
    An anonymous subscriber of every channel, with private channels
    configured, is replayed only the public events, and its Last-Event-ID
    header is the newest public id: a private event's id would tell it that
    (and when) something private was published. A token that grants the
    private channel opens both.
    """
    clock = Clock()
    clock.advance(time.time())
    broker, site = serve(clock, auth=JWTAuth(secret=SECRET, private=["priv*"]))
    broker.publish("pub", "e", "p0")
    broker.publish("priv-x", "e", "secret-1")
    broker.publish("pub", "e", "p1")
    broker.publish("priv-x", "e", "secret-2")
    anon = Conn(site, b"/events?replay=all")
    assert datas(anon) == ['"p0"', '"p1"']
    assert anon.header(b"last-event-id") == b"t-3"
    granted = Conn(site, b"/events?replay=3&token=" + token("priv-x"))
    assert datas(granted) == ['"secret-1"', '"p1"', '"secret-2"']
    assert granted.header(b"last-event-id") == b"t-4"
    public = Conn(site, b"/events?replay=1&channel=pub")
    assert public.header(b"last-event-id") == b"t-3"


def test_cors_exposes_the_header() -> None:
    """A page on an allowed origin may read the Last-Event-ID header (it is exposed)."""
    broker, site = serve(Clock(), cors=CORSPolicy(["https://app.example"]))
    broker.publish("a", "e", 0)
    c = Conn(site, b"/events", headers={b"Origin": b"https://app.example"})
    assert c.header(b"access-control-expose-headers") == b"Last-Event-ID"
    assert c.header(b"last-event-id") == b"t-1"


# In code


def test_subscribe_replay_in_code() -> None:
    """SSEBroker.subscribe(replay=N or "all") replays as ?replay= does; bad values fail early."""
    clock = Clock()
    broker = SSEBroker(reactor=clock, id_prefix="t", heartbeat=0)
    for n in range(4):
        broker.publish("a" if n % 2 == 0 else "b", "e", n)

    class Embedded(Resource):
        isLeaf = True

        def render_GET(self, request: Request) -> int:
            return broker.subscribe(request, ["a"], replay="all")

    c = Conn(make_site(Embedded(), clock), b"/")
    assert datas(c) == ["0", "2"]
    assert c.header(b"last-event-id") == b"t-3"
    for bad in (-1, "3", True, 1.5):
        with pytest.raises(ValueError, match="replay must be"):
            broker.subscribe(DummyRequest([b"events"]), replay=bad)  # type: ignore[arg-type]


def test_a_history_without_latest_is_refused_at_start() -> None:
    """A history that does not implement IHistory's latest() is refused when the broker is made."""

    class Old:
        def append(self, event: Event) -> None:
            pass

        def since(self, last_id: str, channels: Any, limit: int) -> list[Event] | None:
            return None

        def __len__(self) -> int:
            return 0

    with pytest.raises(TypeError, match="latest"):
        SSEBroker(history=Old())  # type: ignore[arg-type]
