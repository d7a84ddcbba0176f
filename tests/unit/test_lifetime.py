"""
A stream's lifetime (C{max_lifetime}): streams end cleanly within [0.9, 1.1]
x the lifetime, spread (not all at once), each with a C{retry:} after
everything it is owed; the client resumes with C{Last-Event-ID} and misses
nothing. One sweep per broker, no timer per stream.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.lifetime import Lifetimes
from sse_twisted.parser import EventStreamParser

from ..support.chunks import dechunk
from ..support.conn import Conn, FillingTransport, make_site

LIFETIME = 100.0


def served(clock: Clock, **kw: Any) -> tuple[SSEBroker, Any]:
    broker = SSEBroker(
        reactor=clock, heartbeat=0, id_prefix="t", max_lifetime=LIFETIME, retry=1000, **kw
    )
    return broker, make_site(make_resource(broker, demo=False), clock)


def test_streams_end_within_a_tenth_of_the_lifetime_spread_out(clock: Clock) -> None:
    """
    200 streams opened together each end within [0.9, 1.1] x the lifetime,
    cleanly (the terminating chunk) with a retry:, and not together: their
    ends are spread over most of that band. Then no timer is left.
    """
    broker, site = served(clock)
    start = clock.seconds()
    conns = [Conn(site, b"/events?channel=a") for _ in range(200)]
    ends: dict[int, float] = {}
    step = LIFETIME / 1000
    for _ in range(2000):
        clock.advance(step)
        for n, conn in enumerate(conns):
            if n not in ends and conn.ended():
                ends[n] = clock.seconds() - start
        if len(ends) == len(conns):
            break
    assert len(ends) == 200
    assert min(ends.values()) >= 0.9 * LIFETIME - 1e-6
    assert max(ends.values()) <= 1.1 * LIFETIME + 1e-6
    # Jittered: spread over most of the band, about as many in each sweep
    # (one a second here: 200 over ~18 sweeps).
    assert max(ends.values()) - min(ends.values()) > 0.15 * LIFETIME
    per_sweep = [list(ends.values()).count(t) for t in set(ends.values())]
    assert len(per_sweep) >= 15 and max(per_sweep) <= 30, per_sweep
    for conn in conns:
        assert conn.stream().endswith(b"\n\n") and b"retry: " in conn.stream().split(b"\n\n")[-2]
    assert broker.client_count() == 0 and broker.stats.lifetimes == 200
    clock.advance(broker.close_timeout)  # the deadlines for the last bytes
    assert clock.getDelayedCalls() == []


def test_a_lifetime_end_writes_everything_owed_first(clock: Clock) -> None:
    """
    A paused stream with queued events reaches its lifetime: every queued
    event is written, then the retry:, then the clean end.
    """
    broker, site = served(clock, queue_size=100)
    conn = Conn(site, b"/events?channel=a", limit=50)
    assert isinstance(conn.transport, FillingTransport)
    (sub,) = broker._subscribers
    assert sub.paused
    for n in range(20):
        broker.publish("a", "story", n)
    assert sub.queued == 20
    clock.advance(1.1 * LIFETIME)
    body, ended = dechunk(conn.head_and_body()[1])
    assert ended
    events = EventStreamParser().feed(body)
    assert [e.data for e in events if e.type == "story"] == [str(n) for n in range(20)]
    assert body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1].startswith(b"retry: ")


def test_the_client_resumes_after_a_lifetime_end_and_misses_nothing(clock: Clock) -> None:
    """
    Events published while the client reconnects after a lifetime end reach
    it on the next connection, resumed with Last-Event-ID: no gap, no duplicate.
    """
    broker, site = served(clock)
    first = Conn(site, b"/events?channel=a")
    broker.publish("a", "story", 1)
    clock.advance(1.1 * LIFETIME)
    assert first.ended()
    broker.publish("a", "story", 2)
    broker.publish("a", "story", 3)
    last = EventStreamParser().feed(first.stream())[-1].last_event_id
    second = Conn(site, b"/events?channel=a", headers={b"last-event-id": last.encode()})
    got = [e.data for c in (first, second) for e in c.events() if e.type == "story"]
    assert got == ["1", "2", "3"]


def test_streams_that_end_early_are_forgotten(clock: Clock) -> None:
    """A stream gone before its lifetime leaves no deadline behind, and the sweep stops."""
    broker, site = served(clock)
    conns = [Conn(site, b"/events") for _ in range(5)]
    lifetimes = broker._lifetimes
    assert lifetimes is not None and len(lifetimes) == 5
    for conn in conns:
        conn.drop()
    assert len(lifetimes) == 0
    assert clock.getDelayedCalls() == []


def test_deadlines_are_drawn_one_sweep_inside_the_band() -> None:
    """The extreme draws still end within [0.9, 1.1] x the lifetime, sweep period included."""
    for r in (0.0, 0.999999):
        lt = Lifetimes(LIFETIME, lambda: Clock(), lambda sub: None, random=[r].pop)
        d = lt.deadline(0)
        assert d - lt.tick >= 0.9 * LIFETIME and d + lt.tick <= 1.1 * LIFETIME


@pytest.mark.parametrize("lifetime", [0, -1, float("nan")])
def test_a_lifetime_must_be_positive(lifetime: float) -> None:
    """Lifetimes refuses a lifetime that is not above 0 (0 on the broker means off)."""
    with pytest.raises(ValueError, match="max_lifetime"):
        Lifetimes(lifetime, lambda: Clock(), lambda sub: None)


def test_a_broker_without_max_lifetime_ends_nothing(clock: Clock) -> None:
    """max_lifetime=0 (the default): streams stay open, and there is no sweep."""
    broker = SSEBroker(reactor=clock, heartbeat=0)
    conn = Conn(make_site(make_resource(broker, demo=False), clock), b"/events")
    assert clock.getDelayedCalls() == []
    clock.advance(10 * LIFETIME)
    assert not conn.ended() and broker.client_count() == 1


def test_a_stream_that_does_not_take_its_last_bytes_is_aborted(clock: Clock) -> None:
    """Ended at its lifetime but not reading: aborted after close_timeout (it resumes elsewhere)."""
    broker, site = served(clock, close_timeout=5)
    conn = Conn(site, b"/events?channel=a", limit=10)
    clock.advance(1.1 * LIFETIME)
    assert broker.client_count() == 0
    assert not conn.transport.disconnected
    clock.advance(5)
    assert conn.transport.disconnected
