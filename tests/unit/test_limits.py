"""
Subscriber limits (clients, clients per address, channels) and the publish
rate limit, at their edges.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from sse_twisted.limits import RateLimiter, SubscriberLimits
from sse_twisted.parser import EventStreamParser

from ..support.conn import Conn, post, serve


def turned_away(c: Conn) -> str:
    """The comment of a turn-away stream; checks it is a 200 stream that asks for a retry."""
    assert c.status == 200
    assert c.header(b"content-type") == b"text/event-stream; charset=utf-8"
    assert c.ended()
    comments: list[str] = []
    parser = EventStreamParser(on_comment=comments.append)
    assert parser.feed(c.stream()) == []
    assert parser.retry is not None and 2000 <= parser.retry <= 4000
    return comments[0]


def test_max_clients_edge(clock: Clock) -> None:
    """The Nth client gets in; the N+1th is told to retry later; a freed place is taken."""
    broker, site = serve(clock, limits=SubscriberLimits(max_clients=2))
    a, b = Conn(site), Conn(site)
    assert broker.client_count() == 2 and not a.ended() and not b.ended()
    third = Conn(site)
    assert "--max-clients" in turned_away(third)
    assert broker.client_count() == 2
    a.drop()
    fourth = Conn(site)
    assert not fourth.ended() and broker.client_count() == 2


def test_max_clients_per_ip_edge(clock: Clock) -> None:
    """Per-address caps count each address separately."""
    broker, site = serve(clock, limits=SubscriberLimits(max_per_ip=1))
    Conn(site, peer="127.0.0.2")
    assert "--max-clients-per-ip" in turned_away(Conn(site, peer="127.0.0.2"))
    assert not Conn(site, peer="127.0.0.3").ended()
    assert broker.client_count() == 2


def test_max_channels_edge(clock: Clock) -> None:
    """N channels are fine; N+1 get 400."""
    broker, site = serve(clock, limits=SubscriberLimits(max_channels=2))
    assert Conn(site, b"/events?channel=a&channel=b").status == 200
    c = Conn(site, b"/events?channel=a&channel=b&channel=c")
    assert c.status == 400 and "--max-channels" in c.json()["error"]
    assert broker.client_count() == 1


def test_publish_rate_limit(clock: Clock) -> None:
    """Past the burst a publisher gets 429 with Retry-After; tokens refill with time."""
    broker, site = serve(clock, publish_rate=RateLimiter(2, 2, reactor=clock))
    assert [post(site, {"channel": "c", "data": n}).status for n in range(3)] == [200, 200, 429]
    limited = post(site, {"channel": "c", "data": 9})
    assert limited.status == 429 and limited.header(b"retry-after") == b"1"
    assert "too many" in limited.json()["error"]
    other_peer = post(site, {"channel": "c", "data": 3}, peer="127.0.0.5")
    assert other_peer.status == 200  # counted per peer
    clock.advance(0.5)
    assert post(site, {"channel": "c", "data": 4}).status == 200
    assert broker.stats.published == 4


def test_rate_limiter_forgets_idle() -> None:
    """Idle buckets are dropped once there are many, so memory follows active publishers."""
    clock = Clock()
    limiter = RateLimiter(1, 1, reactor=clock)
    for n in range(10_001):
        limiter.allow(f"k{n}")
    clock.advance(10)
    limiter.allow("fresh")
    limiter.allow("fresh2")
    assert len(limiter._buckets) < 10
