"""
The outbox (L{sse_twisted.outbox}): a fan-out writes one slice of
connections before publish returns and the rest in the next reactor turns;
what is published meanwhile joins what a connection is still owed, so it
gets several events in one write; every other write to a connection comes
after what it is owed, and a batch is one write per subscriber.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock

from sse_twisted.outbox import HELD_BYTES, QUIET, Outbox, held
from sse_twisted.parser import EventStreamParser

from ..support.conn import Conn, count_writes, serve


def _names(conn: Conn) -> list[Any]:
    return [e.data for e in EventStreamParser().feed(conn.stream())]


def _turn(clock: Clock) -> None:
    """
    One reactor turn's timers: those due now, not the ones they schedule
    (a reactor runs those in its next turn; C{Clock.advance(0)} would run
    them at once).
    """
    due = [c for c in clock.getDelayedCalls() if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.func(*call.args, **call.kw)


def _recorder(sent: list[bytes]) -> type:
    """A transport class whose instances append what they are written to C{sent}."""

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(data)

    return Transport


def _streams(clock: Clock, n: int, slice_size: int) -> tuple[Any, list[Conn], list[list[bytes]]]:
    broker, site = serve(clock, stream_only=True)
    broker.outbox.slice_size = broker.outbox.first_slice = slice_size
    broker.outbox.ended = clock.seconds()  # a fan-out just ended: the next is sliced
    conns = [Conn(site, b"/events?channel=a") for _ in range(n)]
    return broker, conns, [count_writes(c) for c in conns]


def test_a_batch_is_one_write_per_subscriber(clock: Clock) -> None:
    """publish_many of 5 events on 2 channels: each subscriber gets its share in one write."""
    broker, site = serve(clock, stream_only=True)
    a, b, every = Conn(site, b"/events?channel=a"), Conn(site, b"/events?channel=b"), Conn(site)
    writes = {name: count_writes(c) for name, c in (("a", a), ("b", b), ("all", every))}
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
    writes = count_writes(c)
    broker.publish("a", text="one")
    assert len(writes) == 1 and _names(c) == ["one"]
    broker.publish("a", text="two")
    assert len(writes) == 2 and _names(c) == ["one", "two"]


def test_a_fan_out_goes_a_slice_per_reactor_turn(clock: Clock) -> None:
    """5 streams, slices of 2: two now, two on the next turn, the last on the one after."""
    broker, conns, writes = _streams(clock, 5, 2)
    broker.publish("a", text="one")
    assert sorted(len(w) for w in writes) == [0, 0, 0, 1, 1]
    _turn(clock)
    assert sorted(len(w) for w in writes) == [0, 1, 1, 1, 1]
    _turn(clock)
    assert [len(w) for w in writes] == [1, 1, 1, 1, 1]
    assert all(_names(c) == ["one"] for c in conns)
    assert not clock.getDelayedCalls() and len(broker.outbox) == 0


def test_what_is_published_between_slices_joins_what_is_owed(clock: Clock) -> None:
    """
    Slices of 1: the first stream gets each event alone; the streams the
    fan-out had not reached get both events in one write, in order.
    """
    broker, conns, writes = _streams(clock, 3, 1)
    broker.publish("a", text="one")
    broker.publish("a", text="two")  # in the same turn: no slice ran in between
    assert sorted(len(w) for w in writes) == [0, 0, 1]
    _turn(clock)
    assert sorted(len(w) for w in writes) == [0, 1, 1]
    _turn(clock)
    _turn(clock)
    assert sorted(len(w) for w in writes) == [1, 1, 2]
    assert all(len(w) == 1 and w[0].count(b"data:") == 2 for w in writes if len(w) == 1)
    assert all(_names(c) == ["one", "two"] for c in conns)
    assert broker.stats.delivered == 6


def test_another_write_comes_after_what_the_connection_is_owed(clock: Clock) -> None:
    """A heartbeat written while a slice waits: the owed events go first."""
    broker, conns, writes = _streams(clock, 2, 1)
    broker.publish("a", text="one")
    [late] = [s for s in broker._subscribers if s.held]
    conn = conns[writes.index([])]
    assert late.send_unqueued(b": heartbeat\n\n")
    assert conn.stream().endswith(b"data: one\n\n: heartbeat\n\n")
    assert late.held == 0


def test_a_drain_ends_a_stream_after_what_it_is_owed(clock: Clock) -> None:
    """Draining while slices wait: every stream ends cleanly after both events."""
    broker, conns, _ = _streams(clock, 3, 1)
    broker.publish("a", text="one")
    broker.publish("a", text="two")
    broker.drain(1.0)
    for c in conns:
        assert c.ended() and _names(c) == ["one", "two"]


def test_an_aborted_stream_is_sent_nothing_more(clock: Clock) -> None:
    """Aborting a stream the outbox owes drops what it owed: no write after the abort."""
    broker, conns, writes = _streams(clock, 2, 1)
    broker.publish("a", text="one")
    [late] = [s for s in broker._subscribers if s.held]
    index = writes.index([])
    late.abort()
    clock.advance(0)
    assert writes[index] == [] and conns[index].transport.disconnecting
    assert len(broker.outbox) == 0


def test_a_connection_holds_a_bounded_number_of_bytes(clock: Clock) -> None:
    """Events pile up for a stream no slice reaches: it is sent once about HELD_BYTES wait."""
    broker, conns, writes = _streams(clock, 2, 1)
    text = "x" * 1000
    published = 3 * HELD_BYTES // 1000
    for _ in range(published):
        broker.publish("a", text=text)
        assert max(s.held for s in broker._subscribers) < HELD_BYTES + 1100
    late = 1 if len(writes[0]) == published else 0
    assert 2 <= len(writes[late]) < published
    clock.advance(0)
    assert all(_names(c) == [text] * published for c in conns)


def test_held_blocks_nest_and_send_once_the_outermost_ends() -> None:
    """Inside held() nothing is sent; the outermost block's end sends the first slice."""
    clock = Clock()
    sent: list[bytes] = []
    Transport = _recorder(sent)

    outbox, transport = Outbox(clock.callLater), Transport()
    with held():
        with held():
            outbox.add(transport, b"a")
            outbox.kick()
        outbox.add(transport, b"b")
        outbox.kick()
        assert sent == [] and outbox.held_bytes(transport) == 2
    assert sent == [b"ab"] and len(outbox) == 0
    assert not clock.getDelayedCalls()


def test_a_write_that_pauses_a_stream_the_outbox_owes_keeps_the_order(clock: Clock) -> None:
    """
    A heartbeat fills a stream the outbox still owes an event: it pauses,
    the next event is queued, and once the client reads it gets both in
    publish order (the owed one went out before the heartbeat).
    """
    broker, site = serve(clock, stream_only=True)
    broker.outbox.slice_size = broker.outbox.first_slice = 1
    broker.outbox.ended = clock.seconds()
    conns = [Conn(site, b"/events?channel=a", limit=2000) for _ in range(2)]
    writes = [count_writes(c) for c in conns]
    broker.publish("a", text="one")
    [late] = [s for s in broker._subscribers if s.held]
    conn = conns[writes.index([])]
    late.send_unqueued(b": " + b"h" * 3000 + b"\n\n")
    assert late.paused
    broker.publish("a", text="two")
    assert late.queued == 1
    conn.transport.read()  # the socket drains before the outbox's next slice
    clock.advance(0)
    assert _names(conn) == ["one", "two"]


def test_streams_owed_different_events_each_get_their_own(clock: Clock) -> None:
    """One slice, two streams owed as many events on different channels: no mix-up."""
    broker, site = serve(clock, stream_only=True)
    a, b = Conn(site, b"/events?channel=a"), Conn(site, b"/events?channel=b")
    broker.publish_many([{"channel": ch, "text": f"{ch}{n}"} for n, ch in enumerate("abab")])
    assert _names(a) == ["a0", "a2"] and _names(b) == ["b1", "b3"]


def test_later_slices_follow_each_other_while_nothing_waits() -> None:
    """With no input waiting, the second turn sends every slice left; with input, one."""
    clock = Clock()
    sent: list[bytes] = []
    Transport = _recorder(sent)

    for waiting, after_one_turn in ((False, 5), (True, 2)):
        del sent[:]
        outbox = Outbox(clock.callLater, 1, 1, input_waiting=lambda w=waiting: w)  # type: ignore[misc]
        outbox.add_all([Transport() for _ in range(5)], b"e")
        outbox.kick()
        assert len(sent) == 1
        _turn(clock)
        assert len(sent) == after_one_turn
        clock.advance(0)
        assert len(sent) == 5 and len(outbox) == 0


def test_a_lone_event_after_a_quiet_spell_goes_out_whole(clock: Clock) -> None:
    """
    QUIET seconds after the last fan-out ended, an event goes to every
    stream before publish returns; one that follows closer is sliced.
    """
    broker, conns, writes = _streams(clock, 3, 1)
    clock.advance(QUIET)
    broker.publish("a", text="one")
    assert [len(w) for w in writes] == [1, 1, 1]
    broker.publish("a", text="two")
    assert sorted(len(w) for w in writes) == [1, 1, 2]
    clock.advance(0)
    assert [len(w) for w in writes] == [2, 2, 2]
