"""
JWT authorisation at its edges: private channels, where the token comes
from, bad and expired tokens, publishing, RS256.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from twisted.internet.task import Clock

from sse_twisted.auth import JWTAuth

from ..support.conn import Conn, post, serve

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(clock: Clock, exp: float | None = 60, **sse: Any) -> bytes:
    claims: dict[str, Any] = {"sse": sse}
    if exp is not None:
        claims["exp"] = int(clock.seconds() + exp)
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


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


def test_a_stream_knows_its_tokens_subject(clock: Clock) -> None:
    """A stream opened with a token carries its C{sub} claim as its user; anonymous, none."""
    broker, site = serve(clock, auth=auth(private=["orders.*"]))
    claims = {"sse": {"subscribe": ["orders.*"]}, "sub": "ada", "exp": int(clock.seconds() + 60)}
    signed = jwt.encode(claims, SECRET, algorithm="HS256").encode()
    Conn(site, b"/events?channel=orders.eu&token=" + signed)
    Conn(site, b"/events?channel=news")
    users = sorted((s.user or "") for s in broker._subscribers)
    assert users == ["", "ada"]
