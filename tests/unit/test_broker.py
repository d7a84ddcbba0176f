"""SSEBroker and its stream resource, over a real HTTPChannel on a StringTransport."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.interfaces import IPushProducer
from twisted.internet.task import Clock
from zope.interface.verify import verifyObject

from sse_twisted import SSEBroker
from sse_twisted.broker import HEARTBEAT
from sse_twisted.event import dropped_notice
from sse_twisted.parser import EventStreamParser
from sse_twisted.subscriber import Subscriber

from ..support.conn import Conn, serve


def only_events(conn: Conn) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in conn.events()]


def test_stream_headers_and_first_comment(clock: Clock) -> None:
    """A subscriber gets 200, the SSE headers (no Connection header) and a first comment at once."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    assert c.status == 200
    assert c.header(b"content-type") == b"text/event-stream; charset=utf-8"
    assert c.header(b"cache-control") == b"no-cache, no-transform"
    assert c.header(b"x-accel-buffering") == b"no"
    assert c.header(b"connection") is None
    assert c.header(b"content-encoding") is None
    assert c.stream() == b": connected\nretry: 2000\n\n"
    assert broker.client_count() == 1


def test_publish_writes_same_bytes_to_matching(clock: Clock) -> None:
    """One publish frames once and every matching subscriber receives exactly that frame."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    a = Conn(site, b"/events?channel=a")
    ab = Conn(site, b"/events?channel=a&channel=b")
    every = Conn(site, b"/events")
    b = Conn(site, b"/events?channel=b")
    for c in (a, ab, every, b):
        c.clear()
    ev = broker.publish("a", "tick", {"n": 1, "s": "é"})
    assert ev.frame == 'id: t-1\nevent: tick\ndata: {"n":1,"s":"é"}\n\n'.encode()
    for c in (a, ab, every):
        assert c.stream() == ev.frame
    assert b.raw() == b""
    broker.publish("b", None, [1, 2])
    assert only_events(ab)[-1] == ("message", "[1,2]", "t-2")
    assert only_events(b) == [("message", "[1,2]", "t-2")]
    assert [e.data for e in a.events()] == ['{"n":1,"s":"é"}']


def test_client_count(clock: Clock) -> None:
    """client_count counts all streams, or those that receive one channel."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    Conn(site, b"/events?channel=a")
    Conn(site, b"/events?channel=a&channel=b")
    Conn(site, b"/events")
    assert broker.client_count() == 3
    assert broker.client_count("a") == 3
    assert broker.client_count("b") == 2
    assert broker.client_count("zzz") == 1


def test_empty_channel_parameter_means_all(clock: Clock) -> None:
    """As in the original, ?channel= (empty) subscribes to every channel."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site, b"/events?channel=")
    broker.publish("x", "e", 1)
    assert only_events(c) == [("e", "1", "t-1")]


def test_ids_unique_increasing_and_explicit(clock: Clock) -> None:
    """Generated ids increase within a broker; a publisher's own id is used verbatim."""
    broker, _ = serve(clock, stream_only=True, heartbeat=15)
    ids = [broker.publish("c", "e", n).id for n in range(3)]
    assert ids == ["t-1", "t-2", "t-3"]
    assert broker.publish("c", "e", 0, id="custom-7").id == "custom-7"
    assert broker.publish("c", "e", 0).id == "t-4"


def test_default_ids_differ_between_brokers() -> None:
    """Two brokers (two runs of a server) never produce the same id."""
    one, two = SSEBroker(reactor=Clock()), SSEBroker(reactor=Clock())
    assert one.publish("c", None, 1).id != two.publish("c", None, 1).id


def test_publish_without_subscribers(clock: Clock) -> None:
    """Publishing with nobody listening is fine and returns the event."""
    broker, _ = serve(clock, stream_only=True, heartbeat=15)
    ev = broker.publish("nobody", "e", {"x": 1})
    assert ev.id == "t-1" and ev.data == '{"x":1}'
    assert broker.dispatch(ev) == 0


def test_text_event_line_breaks(clock: Clock) -> None:
    """A text event is sent verbatim; CR, LF and CRLF become data lines joined by LF."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    c.clear()
    broker.publish_text("c", "html", "<li>a</li>\r\n<li>b</li>\r<li>c</li>\n")
    assert c.stream() == (
        b"id: t-1\nevent: html\ndata: <li>a</li>\ndata: <li>b</li>\ndata: <li>c</li>\ndata: \n\n"
    )
    assert only_events(c) == [("html", "<li>a</li>\n<li>b</li>\n<li>c</li>\n", "t-1")]


def _deep(depth: int) -> list[object]:
    """A list nested `depth` deep, built without recursion."""
    root: list[object] = []
    node = root
    for _ in range(depth):
        child: list[object] = []
        node.append(child)
        node = child
    return root


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"channel": "c", "event": "a\nb"}, ValueError),
        ({"channel": "c", "event": "a\rb"}, ValueError),
        ({"channel": "c", "event": "a\x00b"}, ValueError),
        ({"channel": "c\n", "event": "e"}, ValueError),
        ({"channel": "", "event": "e"}, ValueError),
        ({"channel": "x" * 201, "event": "e"}, ValueError),
        ({"channel": "c\x01", "event": "e"}, ValueError),
        ({"channel": "c", "event": "e", "id": "1\n2"}, ValueError),
        ({"channel": "c", "event": "e", "retry": -1}, ValueError),
        ({"channel": "c", "event": "e", "data": object()}, TypeError),
        ({"channel": "c", "event": "e", "data": {1j}}, TypeError),
        ({"channel": "c", "event": "e", "data": float("nan")}, ValueError),
        ({"channel": 5, "event": "e"}, TypeError),
        ({"channel": "c\ud800", "event": "e"}, ValueError),
        ({"channel": "c", "event": "e\udfff"}, ValueError),
        ({"channel": "c", "event": "e", "text": "x\ud800"}, ValueError),
        ({"channel": "c", "event": "e", "id": ""}, ValueError),
        ({"channel": "c", "event": "e", "retry": 86_400_001}, ValueError),
        # Deeper than any supported Python's JSON encoder goes (about 10,000 on 3.13).
        ({"channel": "c", "event": "e", "data": _deep(20_000)}, ValueError),
    ],
)
def test_bad_publish_raises_and_writes_nothing(
    clock: Clock, kwargs: dict[str, object], error: type[Exception]
) -> None:
    """Bad names, ids or data raise at the caller; no subscriber sees a byte; no id is used."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    c.clear()
    with pytest.raises(error):
        broker.publish(**kwargs)  # type: ignore[arg-type]
    assert c.raw() == b""
    assert broker.publish("c", "ok", 1).id == "t-1"


def test_subscriber_is_push_producer(clock: Clock) -> None:
    """Each stream is an IPushProducer registered on its request."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    (sub,) = broker._subscribers
    assert verifyObject(IPushProducer, sub)
    assert c.channel._channel._requestProducer is sub


def test_paused_queues_and_flushes_in_order(clock: Clock) -> None:
    """A paused stream queues events and writes them in order on resume; others flow on."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    slow, fast = Conn(site), Conn(site)
    slow.clear()
    fast.clear()
    slow.pause()
    frames = [broker.publish("c", "e", n).frame for n in range(5)]
    assert slow.raw() == b""
    assert fast.stream() == b"".join(frames)
    (sub,) = [s for s in broker._subscribers if s.paused]
    assert sub.queued == 5
    slow.resume()
    assert slow.stream() == b"".join(frames)
    assert sub.queued == 0


def test_drop_policy_counts_and_tells_the_client(clock: Clock) -> None:
    """With overflow=drop a full queue drops events, counts them, and says how many on resume."""
    broker, site = serve(clock, stream_only=True, heartbeat=15, queue_size=3)
    slow, fast = Conn(site), Conn(site)
    slow.clear()
    slow.pause()
    for n in range(10):
        broker.publish("c", "e", n)
    assert broker.stats.dropped == 7
    assert slow.raw() == b""
    slow.resume()
    evs = slow.events()
    assert [e.data for e in evs[:3]] == ["0", "1", "2"]
    assert (evs[3].type, evs[3].data) == ("sse.dropped", '{"dropped":7}')
    assert evs[3].last_event_id == "t-3"  # the notice carries no id
    assert len(fast.events()) == 10
    # Later events flow normally and no second notice comes.
    broker.publish("c", "e", 10)
    assert [e.type for e in slow.events()][4:] == ["e"]
    assert dropped_notice(7) in slow.stream()


def test_drop_notice_waits_for_queue(clock: Clock) -> None:
    """If the client pauses again while its queue is flushed, the rest waits, order kept."""
    broker, site = serve(clock, stream_only=True, heartbeat=15, queue_size=2)
    slow = Conn(site)
    slow.clear()
    slow.pause()
    for n in range(4):
        broker.publish("c", "e", n)
    (sub,) = broker._subscribers
    original = sub._write
    calls = []

    def write_then_pause(data: bytes) -> None:
        calls.append(data)
        original(data)
        sub.pauseProducing()

    sub._write = write_then_pause  # type: ignore[method-assign]
    sub.resumeProducing()
    assert len(calls) == 1 and sub.queued == 1
    sub._write = original  # type: ignore[method-assign]
    sub.resumeProducing()
    assert [e.data for e in slow.events()] == ["0", "1", '{"dropped":2}']


def test_disconnect_policy_closes_slow_client(clock: Clock) -> None:
    """With overflow=disconnect a slow client's connection is aborted; others are untouched."""
    broker, site = serve(clock, stream_only=True, heartbeat=15, queue_size=2, overflow="disconnect")
    slow, fast = Conn(site), Conn(site)
    slow.pause()
    for n in range(3):
        broker.publish("c", "e", n)
    assert slow.transport.disconnected
    assert broker.client_count() == 1
    broker.publish("c", "e", 3)
    assert [e.data for e in fast.events()] == ["0", "1", "2", "3"]
    slow.drop()
    assert broker.client_count() == 1


def test_disconnect_removes_subscriber(clock: Clock) -> None:
    """A client that leaves is forgotten at once, and the heartbeat timer stops with the last."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    a, b = Conn(site, b"/events?channel=x"), Conn(site)
    assert broker.client_count() == 2
    a.drop()
    assert broker.client_count() == 1 and broker.client_count("x") == 1
    assert broker._by_channel == {}
    b.drop()
    assert broker.client_count() == 0
    assert broker._subscribers == set() and broker._all == set()
    assert clock.getDelayedCalls() == []
    broker.publish("x", "e", 1)  # nothing to write to, nothing raised


def test_disconnect_while_paused(clock: Clock) -> None:
    """A paused client that leaves is removed, and its queue with it."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    c.pause()
    broker.publish("c", "e", 1)
    c.drop()
    assert broker.client_count() == 0


def test_heartbeat(clock: Clock) -> None:
    """Every `heartbeat` seconds each reading subscriber gets one comment; paused ones skip it."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    a, b = Conn(site), Conn(site)
    a.clear()
    b.clear()
    b.pause()
    clock.advance(14.9)
    assert a.raw() == b""
    clock.advance(0.1)
    assert a.stream() == HEARTBEAT
    clock.advance(15)
    assert a.stream() == HEARTBEAT * 2
    assert b.raw() == b""
    assert len(clock.getDelayedCalls()) == 1  # one timer per broker


def test_heartbeat_off(clock: Clock) -> None:
    """heartbeat=0 schedules nothing."""
    broker, site = serve(clock, stream_only=True, heartbeat=0)
    Conn(site)
    assert clock.getDelayedCalls() == []


def test_retry_off(clock: Clock) -> None:
    """retry=None sends no retry line as the stream opens."""
    broker, site = serve(clock, stream_only=True, heartbeat=15, retry=None)
    assert Conn(site).stream() == b": connected\n\n"


def test_drain_ends_streams_cleanly(clock: Clock) -> None:
    """drain() flushes queues, sends a jittered retry, ends each response and closes."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    reading, paused = Conn(site), Conn(site)
    paused.pause()
    broker.publish("c", "e", 1)
    done = broker.drain(timeout=5)
    fired: list[object] = []
    done.addCallback(fired.append)
    for c in (reading, paused):
        assert c.ended()
        evs = c.events()
        assert [e.data for e in evs] == ["1"]
        parser = EventStreamParser()
        parser.feed(c.stream())
        assert parser.retry is not None and 2000 <= parser.retry <= 4000
        assert c.transport.disconnecting
    assert broker.client_count() == 0
    # StringTransport never really closes: the deadline aborts them.
    clock.advance(5.1)
    assert fired == [None]
    assert reading.transport.disconnected
    assert clock.getDelayedCalls() == []


def test_drain_waits_for_closed_connections(clock: Clock) -> None:
    """drain() fires as soon as every connection is really closed, before the deadline."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    fired: list[object] = []
    broker.drain(timeout=5).addCallback(fired.append)
    clock.advance(0.1)
    assert fired == []
    c.transport.disconnected = True
    clock.advance(0.1)
    assert fired == [None]
    assert clock.getDelayedCalls() == []


def test_drain_with_no_subscribers(clock: Clock) -> None:
    """Draining an idle broker fires at once."""
    broker, _ = serve(clock, stream_only=True, heartbeat=15)
    fired: list[object] = []
    broker.drain().addCallback(fired.append)
    assert fired == [None]


def test_subscriber_while_draining_is_told_to_retry(clock: Clock) -> None:
    """A subscriber arriving while draining gets 200, a retry hint and an immediate end."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    broker.drain()
    c = Conn(site)
    assert c.status == 200
    assert c.header(b"content-type") == b"text/event-stream; charset=utf-8"
    assert c.ended()
    parser = EventStreamParser()
    assert parser.feed(c.stream()) == []
    assert parser.retry is not None
    assert broker.client_count() == 0


def test_client_gone_mid_drain(clock: Clock) -> None:
    """A client that already left when drain runs causes no error."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    (sub,) = broker._subscribers
    c.drop()
    sub.close(b"retry: 1\n\n")  # a dead request must not be finished
    fired: list[object] = []
    broker.drain().addCallback(fired.append)
    assert fired == [None]


def test_publish_threadsafe() -> None:
    """publish_threadsafe validates in the caller's thread and publishes in the reactor's."""

    class ThreadClock(Clock):
        def __init__(self) -> None:
            super().__init__()
            self.handed: list[object] = []

        def callFromThread(self, f, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            self.handed.append((f, a, kw))

    clock = ThreadClock()
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site, b"/events?channel=w")
    futures = []
    t = threading.Thread(target=lambda: futures.append(broker.publish_threadsafe("w", "e", [1])))
    t.start()
    t.join(5)
    (future,) = futures
    assert not future.done()
    assert c.events() == []
    for f, a, kw in clock.handed:  # type: ignore[misc]
        f(*a, **kw)  # the reactor thread runs what was handed to it
    ev = future.result(timeout=1)
    assert ev.id == "t-1"
    assert only_events(c) == [("e", "[1]", "t-1")]
    with pytest.raises(TypeError):
        broker.publish_threadsafe("w", "e", object())
    with pytest.raises(ValueError):
        broker.publish_threadsafe("w", "bad\nname", 1)


def test_no_request_kept_after_finish(clock: Clock) -> None:
    """Once drained, the broker holds no Request objects."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    for _ in range(3):
        Conn(site)
    broker.drain()
    assert broker._subscribers == set() and broker._all == set() and broker._by_channel == {}


def test_constructor_validation() -> None:
    """Bad broker settings fail early with a clear message."""
    with pytest.raises(ValueError, match="queue_size"):
        SSEBroker(queue_size=0)
    with pytest.raises(ValueError, match="overflow"):
        SSEBroker(overflow="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="heartbeat"):
        SSEBroker(heartbeat=-1)


def test_subscriber_repr_and_properties(clock: Clock) -> None:
    """A subscriber reports its channels and state."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    Conn(site, b"/events?channel=b&channel=a")
    (sub,) = broker._subscribers
    assert isinstance(sub, Subscriber)
    assert "['a', 'b']" in repr(sub)
    assert sub.channels == frozenset({"a", "b"})


payload = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.lists(st.text(), max_size=3),
    st.dictionaries(st.text(), st.integers(), max_size=3),
)
name = st.text(min_size=1).filter(lambda s: not any(ch in s for ch in "\r\n\x00"))


@given(
    channel=st.text(min_size=1, max_size=200).filter(
        lambda s: not any(ord(ch) < 32 or ord(ch) == 127 for ch in s)
    ),
    event=st.one_of(st.none(), name),
    data=payload,
    text=st.one_of(st.none(), st.text()),
)
def test_whatever_publish_accepts_parses_back(
    channel: str, event: str | None, data: object, text: str | None
) -> None:
    """Whatever publish accepts reaches a subscriber as a stream a spec parser reads back."""
    import json

    clock = Clock()
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    c = Conn(site)
    ev = broker.publish(channel, event, data, text=text)
    (got,) = c.events()
    assert got.type == (event or "message")
    assert got.last_event_id == ev.id
    if text is None:
        assert json.loads(got.data) == data
    else:
        assert got.data == text.replace("\r\n", "\n").replace("\r", "\n")


def test_http10_client_gets_unchunked_stream(clock: Clock) -> None:
    """An HTTP/1.0 client gets the raw stream (no chunking) with the same frames."""
    broker, site = serve(clock, stream_only=True, heartbeat=15)
    old = Conn(site, version=b"HTTP/1.0")
    new = Conn(site)
    ev = broker.publish("c", "e", 1)
    body = old.head_and_body()[1]
    assert body == b": connected\nretry: 2000\n\n" + ev.frame
    assert new.stream().endswith(ev.frame)
    (sub,) = [s for s in broker._subscribers if s.request.clientproto == b"HTTP/1.0"]
    assert sub.fast is None  # the chunk fast path is for HTTP/1.1 chunked responses only


def test_publish_frames_each_event_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """publish() returns the very event it delivered: framed once, not again for the answer."""
    from sse_twisted.event import Event, Item

    framed: list[str | None] = []
    original = Item.framed

    def counting(self: Item, id: str | None = None) -> Event:
        framed.append(id)
        return original(self, id)

    monkeypatch.setattr(Item, "framed", counting)
    broker = SSEBroker(reactor=Clock(), heartbeat=0, id_prefix="t")
    event = broker.publish("c", "e", {"n": 1})
    assert framed == ["t-1"] and event.id == "t-1"  # type: ignore[union-attr]
