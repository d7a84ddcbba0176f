"""History, Last-Event-ID resume, the unknown-id signal and the catchup policy."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.event import Event
from sse_twisted.history import MemoryHistory

from ..support.conn import Conn, serve


def datas(conn: Conn) -> list[str]:
    return [e.data for e in conn.events()]


def ev(n: int, channel: str = "c") -> Event:
    return Event.create(channel, "e", n, id=f"t-{n}")


# MemoryHistory


def test_history_since_and_filter() -> None:
    """since() returns the events after an id, in order, filtered by channels, up to a limit."""
    h = MemoryHistory(10)
    for n in range(1, 6):
        h.append(ev(n, "a" if n % 2 else "b"))
    assert [e.id for e in h.since("t-1", None, 100)] == ["t-2", "t-3", "t-4", "t-5"]  # type: ignore[union-attr]
    assert [e.id for e in h.since("t-1", frozenset({"a"}), 100)] == ["t-3", "t-5"]  # type: ignore[union-attr]
    assert [e.id for e in h.since("t-1", None, 2)] == ["t-2", "t-3"]  # type: ignore[union-attr]
    assert h.since("t-5", None, 10) == []
    assert h.since("nope", None, 10) is None
    assert len(h) == 5


def test_history_evicts_oldest() -> None:
    """The ring keeps the last `size` events; an evicted id is unknown."""
    h = MemoryHistory(3)
    for n in range(1, 6):
        h.append(ev(n))
    assert [e.id for e in h] == ["t-3", "t-4", "t-5"]
    assert h.since("t-2", None, 10) is None
    assert [e.id for e in h.since("t-3", None, 10)] == ["t-4", "t-5"]  # type: ignore[union-attr]


def test_history_ttl() -> None:
    """Events older than ttl seconds are forgotten."""
    clock = Clock()
    h = MemoryHistory(100, ttl=10, reactor=clock)
    h.append(ev(1))
    clock.advance(6)
    h.append(ev(2))
    clock.advance(5)
    assert [e.id for e in h] == ["t-2"]
    assert h.since("t-1", None, 10) is None
    clock.advance(5)
    assert len(h) == 0


def test_history_validation() -> None:
    """Bad history settings fail early."""
    with pytest.raises(ValueError):
        MemoryHistory(0)
    with pytest.raises(ValueError):
        MemoryHistory(5, ttl=-1)
    with pytest.raises(ValueError, match="catchup"):
        SSEBroker(history=0, overflow="catchup")


# Resume over HTTP


def test_resume_with_header() -> None:
    """Last-Event-ID replays the later events of the subscriber's channels, then goes live."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    for n in range(5):
        broker.publish("a" if n % 2 == 0 else "b", "e", n)
    c = Conn(site, b"/events?channel=a", headers={b"Last-Event-ID": b"t-1"})
    assert datas(c) == ["2", "4"]
    broker.publish("a", "e", 5)
    assert datas(c) == ["2", "4", "5"]
    assert broker.stats.replayed == 2


def test_resume_with_query() -> None:
    """?lastEventId= works for a first connect; the header wins when both are given."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    for n in range(4):
        broker.publish("c", "e", n)
    assert datas(Conn(site, b"/events?lastEventId=t-2")) == ["2", "3"]
    both = Conn(site, b"/events?lastEventId=t-1", headers={b"Last-Event-ID": b"t-3"})
    assert datas(both) == ["3"]


def test_resume_at_head_is_just_live() -> None:
    """Resuming from the newest id replays nothing and sends no reset."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    last = broker.publish("c", "e", 0).id
    c = Conn(site, b"/events", headers={b"Last-Event-ID": last.encode()})  # type: ignore[union-attr]
    assert c.events() == []
    broker.publish("c", "e", 1)
    assert datas(c) == ["1"]


@pytest.mark.parametrize("history", [1000, 0])
def test_unknown_id_gets_reset(history: int) -> None:
    """An id the history lacks (or with history off) gets sse.reset, then the live stream."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True, history=history)
    broker.publish("c", "e", 0)
    c = Conn(site, b"/events", headers={b"Last-Event-ID": b"earlier-run-7"})
    broker.publish("c", "e", 1)
    evs = c.events()
    assert evs[0].type == "sse.reset"
    assert json.loads(evs[0].data) == {"lastEventId": "earlier-run-7", "reason": "unknown-id"}
    assert evs[0].last_event_id == ""  # no id: the client's place is not moved
    assert [e.data for e in evs[1:]] == ["1"]
    assert broker.stats.resets == 1


def test_evicted_id_gets_reset() -> None:
    """An id pushed out of the history gets sse.reset."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True, history=2)
    for n in range(4):
        broker.publish("c", "e", n)
    c = Conn(site, b"/events", headers={b"Last-Event-ID": b"t-1"})
    assert [e.type for e in c.events()] == ["sse.reset"]


def test_last_event_id_too_long() -> None:
    """
    An absurdly long Last-Event-ID gets a 200 stream opening with sse.reset,
    never a 4xx: EventSource gives up for good on any status but 200.
    """
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    c = Conn(site, b"/events", headers={b"Last-Event-ID": b"x" * 2000})
    assert c.status == 200 and [e.type for e in c.events()] == ["sse.reset"]
    assert broker.client_count() == 1


def test_resume_race_with_full_transport() -> None:
    """
    The race: a replay cut short by a full transport while events keep being
    published; as the client reads on it gets every event, in order, once.
    """
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    for n in range(200):
        broker.publish("c", "e", n)
    size = len(broker.history.since("t-100", None, 1)[0].frame)  # type: ignore[union-attr,index]
    c = Conn(site, b"/events?channel=c", headers={b"Last-Event-ID": b"t-100"}, limit=10 * size)
    (sub,) = broker._subscribers
    assert sub.paused and sub.catching_up
    got = len(c.events())
    assert 0 < got < 100
    n = 200
    for _ in range(100):
        broker.publish("c", "e", n)  # published mid-replay: must come once, in order
        n += 1
        c.read()
        if not sub.catching_up and not sub.paused:
            break
    broker.publish("c", "e", n)
    c.read()
    assert [int(d) for d in datas(c)] == list(range(100, n + 1))


def test_catchup_policy_loses_queue_not_events() -> None:
    """With overflow=catchup a slow client misses nothing the history holds, memory bounded."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True, queue_size=4, overflow="catchup")
    slow, fast = Conn(site), Conn(site)
    slow.pause()
    for n in range(50):
        broker.publish("c", "e", n)
    (sub,) = [s for s in broker._subscribers if s.paused]
    assert sub.queued == 4 and sub.catching_up
    slow.resume()
    assert [int(d) for d in datas(slow)] == list(range(50))
    assert not sub.catching_up
    broker.publish("c", "e", 50)
    assert [int(d) for d in datas(slow)] == list(range(51))
    assert len(fast.events()) == 51


def test_catchup_behind_history_gets_reset() -> None:
    """A catchup client that fell behind the history gets sse.reset, then the live stream."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True, queue_size=2, overflow="catchup", history=5)
    slow = Conn(site)
    slow.pause()
    for n in range(20):
        broker.publish("c", "e", n)
    slow.resume()
    evs = slow.events()
    assert [e.data for e in evs[:2]] == ["0", "1"]
    assert evs[2].type == "sse.reset"
    broker.publish("c", "e", 20)
    assert slow.events()[-1].data == "20"


def test_drain_flushes_catchup_backlog() -> None:
    """Draining a catching-up client writes what it is owed from the history first."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True, queue_size=2, overflow="catchup")
    slow = Conn(site)
    slow.pause()
    for n in range(10):
        broker.publish("c", "e", n)
    broker.drain()
    assert [int(d) for d in datas(slow)] == list(range(10))
    assert slow.ended()


@given(
    st.lists(st.tuples(st.sampled_from("abc"), st.integers()), min_size=1, max_size=40),
    st.data(),
)
def test_resume_property(events: list[tuple[str, int]], data: st.DataObject) -> None:
    """Resuming from any id yields exactly the later events of the wanted channels, in order."""
    clock = Clock()
    broker, site = serve(clock, stream_only=True)
    ids = [broker.publish(ch, "e", n).id for ch, n in events]
    k = data.draw(st.integers(0, len(ids) - 1))
    wanted = data.draw(st.sets(st.sampled_from("abc"), min_size=1))
    query = b"&".join(b"channel=" + w.encode() for w in sorted(wanted))
    c = Conn(site, b"/events?" + query, headers={b"Last-Event-ID": ids[k].encode()})  # type: ignore[union-attr]
    expected = [(i, str(n)) for i, (ch, n) in zip(ids, events, strict=True) if ch in wanted][
        sum(1 for ch, _ in events[: k + 1] if ch in wanted) :
    ]
    assert [(e.last_event_id, e.data) for e in c.events()] == expected
