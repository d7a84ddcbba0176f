"""CORS, limits, rate limiting, JWT authorisation and the header deadline, at their edges."""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.auth import JWTAuth
from sse_twisted.cors import CORSPolicy
from sse_twisted.limits import RateLimiter, SubscriberLimits
from sse_twisted.parser import EventStreamParser
from sse_twisted.site import SSESite

from ..support.conn import Conn, post, serve

JSON = {b"content-type": b"application/json"}
SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(clock: Clock, exp: float | None = 60, **sse: Any) -> bytes:
    claims: dict[str, Any] = {"sse": sse}
    if exp is not None:
        claims["exp"] = int(clock.seconds() + exp)
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


# CORS


def test_no_cors_headers_by_default(clock: Clock) -> None:
    """Without --cors-origin no CORS header is ever sent."""
    _, site = serve(clock)
    c = Conn(site, headers={b"origin": b"https://app.example"})
    assert c.header(b"access-control-allow-origin") is None


def test_cors_listed_origin_with_credentials(clock: Clock) -> None:
    """A listed origin is echoed with credentials allowed, on the stream and on publish."""
    _, site = serve(clock, cors=CORSPolicy(["https://app.example"]))
    c = Conn(site, headers={b"origin": b"https://app.example"})
    assert c.header(b"access-control-allow-origin") == b"https://app.example"
    assert c.header(b"access-control-allow-credentials") == b"true"
    assert c.header(b"vary") == b"Origin"
    other = Conn(site, headers={b"origin": b"https://evil.example"})
    assert other.header(b"access-control-allow-origin") is None
    p = post(site, {"channel": "c", "data": 1}, {b"origin": b"https://app.example"})
    assert p.header(b"access-control-allow-origin") == b"https://app.example"


def test_cors_wildcard_without_credentials(clock: Clock) -> None:
    """* lets any origin read, never with credentials."""
    _, site = serve(clock, cors=CORSPolicy(["*"]))
    c = Conn(site, headers={b"origin": b"https://any.example"})
    assert c.header(b"access-control-allow-origin") == b"*"
    assert c.header(b"access-control-allow-credentials") is None


def test_cors_preflight_for_publish(clock: Clock) -> None:
    """OPTIONS on publish answers the preflight for allowed origins only."""
    broker, site = serve(clock, cors=CORSPolicy(["https://app.example"]))
    pre = Conn(
        site,
        b"/publish",
        method=b"OPTIONS",
        headers={
            b"origin": b"https://app.example",
            b"access-control-request-method": b"POST",
            b"access-control-request-headers": b"content-type, authorization",
        },
    )
    assert pre.status == 204
    assert pre.header(b"access-control-allow-methods") == b"POST, OPTIONS"
    assert pre.header(b"access-control-allow-headers") == b"content-type, authorization"
    bad = Conn(site, b"/publish", method=b"OPTIONS", headers={b"origin": b"https://evil.example"})
    assert bad.status == 405
    assert broker.stats.published == 0


# Limits


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


# JWT


def auth(**kw: Any) -> JWTAuth:
    return JWTAuth(secret=SECRET, **kw)


def test_private_channel_needs_token(clock: Clock) -> None:
    """Anonymous: 401; token without the right: 403; with it: subscribed."""
    broker, site = serve(clock, auth=auth(private=["orders.*"]))
    anon = Conn(site, b"/events?channel=orders.eu")
    assert anon.status == 401 and "private" in anon.json()["error"]
    assert anon.header(b"www-authenticate")
    wrong = token(clock, subscribe=["news"])
    c = Conn(site, b"/events?channel=orders.eu&token=" + wrong)
    assert c.status == 403 and "orders.eu" in c.json()["error"]
    good = token(clock, subscribe=["orders.*"])
    ok = Conn(site, b"/events?channel=orders.eu", headers={b"authorization": b"Bearer " + good})
    assert ok.status == 200 and not ok.ended()
    assert Conn(site, b"/events?channel=news").status == 200  # public: no token needed
    assert broker.client_count() == 2


def test_token_from_cookie(clock: Clock) -> None:
    """With --jwt-cookie the token may come from a cookie."""
    _, site = serve(clock, auth=auth(private=["p"], cookie="sse_token"))
    good = token(clock, subscribe=["*"])
    c = Conn(site, b"/events?channel=p", headers={b"cookie": b"sse_token=" + good})
    assert c.status == 200


@pytest.mark.parametrize(
    "bad",
    [b"garbage", b"a.b.c", jwt.encode({"sse": {}}, "other-secret-0123456789abcdefghij").encode()],
)
def test_bad_tokens(clock: Clock, bad: bytes) -> None:
    """Malformed or wrongly signed tokens get 401 with a JSON error."""
    _, site = serve(clock, auth=auth(private=["p"]))
    c = Conn(site, b"/events?channel=p&token=" + bad)
    assert c.status == 401 and "invalid token" in c.json()["error"]


def test_expired_token(clock: Clock) -> None:
    """An expired token gets 401; a live one's stream closes when it expires."""
    broker, site = serve(clock, auth=auth(private=["p"]))
    expired = token(clock, exp=-5, subscribe=["*"])
    assert Conn(site, b"/events?channel=p&token=" + expired).status == 401
    live = token(clock, exp=30, subscribe=["*"])
    c = Conn(site, b"/events?channel=p&token=" + live)
    assert c.status == 200 and broker.client_count() == 1
    clock.advance(29)
    assert not c.transport.disconnecting
    clock.advance(2)
    assert c.transport.disconnecting and broker.client_count() == 0
    c.drop()
    clock.advance(broker.close_timeout)  # the deadline for its last bytes finds it gone
    assert clock.getDelayedCalls() == []


def test_all_channel_subscribers_get_only_public(clock: Clock) -> None:
    """A subscriber without a channel filter never receives private channels."""
    broker, site = serve(clock, auth=auth(private=["secret*"]))
    everyone = Conn(site)
    broker.publish("secret-plans", "e", 1)
    broker.publish("news", "e", 2)
    assert [e.data for e in everyone.events()] == ["2"]


def test_publish_with_jwt(clock: Clock) -> None:
    """Publishing accepts a JWT's publish rights (per channel) as well as the static token."""
    broker, site = serve(clock, auth=auth(), publish_token="static")
    grant = token(clock, publish=["news.*"])
    ok = post(
        site,
        {"channel": "news.eu", "data": 1},
        {b"authorization": b"Bearer " + grant},
        peer="10.0.0.1",
    )
    assert ok.status == 200
    batch = [{"channel": "news.eu", "data": 1}, {"channel": "orders", "data": 2}]
    no = post(site, batch, {b"authorization": b"Bearer " + grant}, peer="10.0.0.1")
    assert no.status == 403 and "item 1" in no.json()["error"]
    static = post(site, {"channel": "orders", "data": 3}, {b"authorization": b"Bearer static"})
    assert static.status == 200
    assert post(site, {"channel": "x", "data": 3}, {b"authorization": b"Bearer nope"}).status == 401
    assert broker.stats.published == 2


def test_jwt_public_key_rs256(clock: Clock) -> None:
    """RS256 tokens verify against a PEM public key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    a = JWTAuth(public_key=pem, private=["p"])
    claims = {"sse": {"subscribe": ["p"]}, "exp": int(clock.seconds()) + 60}
    good = jwt.encode(claims, key, algorithm="RS256")
    assert a.verify(good).may_subscribe("p")
    _, site = serve(clock, auth=a)
    assert Conn(site, b"/events?channel=p&token=" + good.encode()).status == 200


# Header deadline


def test_slow_headers_get_408(clock: Clock) -> None:
    """A client trickling its headers is cut off at the deadline, however it trickles."""
    from twisted.internet.testing import StringTransport
    from twisted.web.resource import Resource

    site = SSESite(Resource(), header_timeout=5, reactor=clock)
    proto = site.buildProtocol(None)
    tr = StringTransport()
    proto.makeConnection(tr)
    for piece in (b"GET /", b"events HTTP/1.1\r\n", b"Host: x\r\n"):
        proto.dataReceived(piece)
        clock.advance(1.6)
    assert not tr.disconnecting
    clock.advance(0.3)
    assert tr.value().startswith(b"HTTP/1.1 408 ")
    assert tr.disconnecting


def test_header_deadline_spares_streams(clock: Clock) -> None:
    """Once its headers are in, a long stream is never cut by the header deadline."""
    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = SSESite(make_resource(broker), header_timeout=5, reactor=clock, timeout=None)
    c = Conn(site)
    clock.advance(3600)
    assert not c.transport.disconnecting and broker.client_count() == 1
