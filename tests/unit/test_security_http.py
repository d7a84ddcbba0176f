"""
The HTTP layer's security edges (issue 10): bodies judged on their headers,
the whole-request deadline, rate limits per verified identity, one id limit,
encodable errors, JWT expiry rules, loopback Host, CORS for publishing,
default channel cap and redacted access logs. Real SSESite/HTTPChannel on a
StringTransport, on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.auth import InvalidToken, JWTAuth
from sse_twisted.cors import CORSPolicy
from sse_twisted.limits import DEFAULT_MAX_CHANNELS, RateLimiter, SubscriberLimits
from sse_twisted.site import SSESite, redact_uri

from ..support.conn import Conn, make_site, post, serve

SECRET = "s3cret-for-tests-only-0123456789abcdef"
JSON = b"application/json"


class Raw:
    """A connection to a site, fed raw bytes: what the server answered, whether it closed."""

    def __init__(self, site: SSESite, peer: str = "127.0.0.1") -> None:
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", peer, 40000))
        self.protocol = site.buildProtocol(None)
        self.protocol.makeConnection(self.transport)
        self.channel = self.protocol._channel  # the HTTP/1.1 channel inside

    def send(self, data: bytes) -> Raw:
        self.protocol.dataReceived(data)
        return self

    @property
    def status(self) -> int:
        return int(self.transport.value().split(b" ", 2)[1])

    def json(self) -> Any:
        head, _, body = self.transport.value().partition(b"\r\n\r\n")
        assert b"content-type: application/json" in head.lower(), head
        return json.loads(body.decode("utf-8"))  # strict UTF-8: valid JSON bytes


def head(
    method: bytes, path: bytes, headers: dict[bytes, bytes], host: bytes = b"localhost"
) -> bytes:
    lines = [method + b" " + path + b" HTTP/1.1", b"Host: " + host]
    lines += [k + b": " + v for k, v in headers.items()]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def token(clock: Clock, exp: Any = 60, **claims: Any) -> bytes:
    body: dict[str, Any] = {"sse": {"publish": ["*"], "subscribe": ["*"]}, **claims}
    if exp is not None:
        body["exp"] = int(clock.seconds()) + exp if isinstance(exp, int) else exp
    return jwt.encode(body, SECRET, algorithm="HS256").encode()


# 4. Bodies are judged on their headers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        (b"POST", b"/health"),
        (b"GET", b"/events"),
        (b"POST", b"/metrics"),
        (b"PUT", b"/"),
        (b"POST", b"/nowhere"),
        (b"GET", b"/publish"),
    ],
)
def test_bodyless_paths_refuse_a_body_from_its_headers(
    clock: Clock, method: bytes, path: bytes
) -> None:
    """A 200 MB Content-Length on a path that takes no body: 413 JSON at once, no body read."""
    broker, site = serve(clock, header_timeout=5)
    c = Raw(site).send(head(method, path, {b"Content-Length": b"209715200"}))
    assert c.status == 413 and c.json() == {"error": "this request takes no body"}
    assert c.transport.disconnecting and broker.client_count() == 0
    assert c.channel.requests[-1].content is None  # nothing was ever allocated for the body
    c.send(b"x" * 65536)  # what still comes is dropped
    assert c.channel.requests[-1].content is None


def test_chunked_body_on_the_stream_is_refused_at_once(clock: Clock) -> None:
    """GET /events with Transfer-Encoding: chunked gets 413 before any chunk."""
    broker, site = serve(clock, header_timeout=5)
    c = Raw(site).send(head(b"GET", b"/events", {b"Transfer-Encoding": b"chunked"}))
    assert c.status == 413 and broker.client_count() == 0


def test_publish_is_authorised_before_its_body(clock: Clock) -> None:
    """A wrong token on a 50 MB publish: 401 from the headers (with WWW-Authenticate)."""
    broker, site = serve(clock, header_timeout=5, publish_token="right")
    c = Raw(site).send(
        head(
            b"POST",
            b"/publish",
            {b"Content-Length": b"52428800", b"Content-Type": JSON, b"Authorization": b"Bearer x"},
        )
    )
    assert c.status == 401 and b"WWW-Authenticate: Bearer" in c.transport.value()
    assert c.channel.requests[-1].content is None and broker.stats.published == 0


def test_publish_content_length_over_max_body(clock: Clock) -> None:
    """An authorised publish announcing more than --max-body gets 413 before its body."""
    _, site = serve(clock, header_timeout=5, max_body=1000)
    hdrs = {b"Content-Length": b"1001", b"Content-Type": JSON}
    c = Raw(site).send(head(b"POST", b"/publish", hdrs))
    assert c.status == 413 and c.json() == {"error": "body larger than 1000 bytes"}
    assert c.channel.requests[-1].content is None


def test_publish_wrong_content_type_before_body(clock: Clock) -> None:
    """A text/plain publish is refused (415) from its headers."""
    _, site = serve(clock, header_timeout=5)
    hdrs = {b"Content-Length": b"500000", b"Content-Type": b"text/plain"}
    assert Raw(site).send(head(b"POST", b"/publish", hdrs)).status == 415


def test_chunked_publish_is_cut_at_max_body(clock: Clock) -> None:
    """A chunked publish is answered 413 by the chunk that passes --max-body; no more is stored."""
    broker, site = serve(clock, header_timeout=5, max_body=100)
    c = Raw(site).send(
        head(b"POST", b"/publish", {b"Transfer-Encoding": b"chunked", b"Content-Type": JSON})
    )
    c.send(b"32\r\n" + b"a" * 50 + b"\r\n")
    assert c.transport.value() == b""
    c.send(b"33\r\n" + b"a" * 51 + b"\r\n")
    assert c.status == 413 and c.json() == {"error": "body larger than 100 bytes"}
    request = c.channel.requests[-1]
    assert request.content.getvalue() == b""
    c.send(b"10\r\n" + b"b" * 16 + b"\r\n0\r\n\r\n")
    assert broker.stats.published == 0 and request.content.getvalue() == b""


def test_chunked_publish_within_max_body(clock: Clock) -> None:
    """A chunked publish under --max-body is published as usual."""
    broker, site = serve(clock, header_timeout=5, max_body=100)
    body = b'{"channel":"c","data":1}'
    c = Raw(site).send(
        head(b"POST", b"/publish", {b"Transfer-Encoding": b"chunked", b"Content-Type": JSON})
        + b"%x\r\n" % len(body)
        + body
        + b"\r\n0\r\n\r\n"
    )
    assert b"200 OK" in c.transport.value() and broker.stats.published == 1


def test_trickled_body_meets_the_request_deadline(clock: Clock) -> None:
    """A body sent one byte every 1.5 s is cut off (408) when the whole request is late."""
    broker, site = serve(clock, header_timeout=5)
    c = Raw(site).send(
        head(b"POST", b"/publish", {b"Content-Length": b"100", b"Content-Type": JSON})
    )
    for _ in range(3):
        clock.advance(1.5)
        c.send(b"{")
    assert c.transport.value() == b""
    clock.advance(0.6)
    assert c.status == 408 and c.json() == {"error": "request body took too long"}
    assert c.transport.disconnecting and broker.stats.published == 0


def test_deadline_rearmed_for_the_next_request(clock: Clock) -> None:
    """After a publish, the next request on the connection has its own deadline."""
    _, site = serve(clock, header_timeout=5)
    body = b'{"channel":"c","data":1}'
    hdrs = {b"Content-Length": b"%d" % len(body), b"Content-Type": JSON}
    c = Raw(site).send(head(b"POST", b"/publish", hdrs) + body)
    assert b"200 OK" in c.transport.value()
    c.transport.clear()
    clock.advance(4)
    c.send(b"GET /health HTTP/1.1\r\n")
    clock.advance(1.1)
    assert c.status == 408


def test_small_refused_body_is_dropped_and_the_connection_goes_on(clock: Clock) -> None:
    """A refused request with a small announced body: answered, body dropped, next one served."""
    broker, site = serve(clock, header_timeout=5)
    body = b'{"channel":"c","data":1}'
    c = Raw(site).send(head(b"POST", b"/health", {b"Content-Length": b"%d" % len(body)}))
    assert c.status == 413 and b"Connection: close" not in c.transport.value()
    assert not c.transport.disconnecting
    c.send(body[:5])
    c.send(body[5:] + head(b"GET", b"/health", {}))
    assert c.transport.value().count(b"HTTP/1.1 200 OK") == 1
    assert c.channel.requests == [] and broker.stats.published == 0


def test_refusal_with_expect_continue_closes(clock: Clock) -> None:
    """A refused request that waits for 100 Continue is answered and closed, never sent 100."""
    _, site = serve(clock, header_timeout=5, publish_token="tok")
    hdrs = {b"Content-Length": b"10", b"Content-Type": JSON, b"Expect": b"100-continue"}
    c = Raw(site).send(head(b"POST", b"/publish", hdrs))
    assert c.status == 401 and b"100 Continue" not in c.transport.value()
    assert c.transport.disconnecting


def test_admitted_publish_gets_100_continue(clock: Clock) -> None:
    """An admitted publish that asks for 100 Continue gets it, then its answer."""
    broker, site = serve(clock, header_timeout=5)
    body = b'{"channel":"c","data":1}'
    hdrs = {b"Content-Length": b"%d" % len(body), b"Content-Type": JSON, b"Expect": b"100-continue"}
    c = Raw(site).send(head(b"POST", b"/publish", hdrs))
    assert c.transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.send(body)
    assert b"200 OK" in c.transport.value() and broker.stats.published == 1


def test_plain_site_still_reads_bodies(clock: Clock) -> None:
    """Outside SSESite (a plain Site, Klein) publishing works as before, checked in render."""
    broker = SSEBroker(reactor=clock, id_prefix="t", heartbeat=0)
    site = make_site(make_resource(broker, max_body=100), clock)
    ok = Conn(
        site,
        b"/publish",
        method=b"POST",
        headers={b"content-type": JSON},
        body=b'{"channel":"c","data":1}',
    )
    assert ok.status == 200
    big = Conn(
        site,
        b"/publish",
        method=b"POST",
        headers={b"content-type": JSON},
        body=b'{"channel":"c","text":"' + b"a" * 200 + b'"}',
    )
    assert big.status == 413


# 5. Rate limit per verified identity


def publish(site: Any, headers: dict[bytes, bytes] | None = None, **kw: Any) -> Conn:
    return post(site, None, headers, raw=b'{"channel":"c","data":1}', **kw)


def test_rate_limit_ignores_garbage_authorization(clock: Clock) -> None:
    """From loopback without a token, any Authorization scheme counts against the peer's bucket."""
    _, site = serve(clock, header_timeout=5, publish_rate=RateLimiter(1, reactor=clock))
    statuses = [publish(site, {b"authorization": b"X %d" % n}).status for n in range(5)]
    assert statuses == [200, 429, 429, 429, 429]


def test_rate_limit_static_token_spacing(clock: Clock) -> None:
    """The static token with extra spaces is the same identity: one bucket."""
    _, site = serve(
        clock, header_timeout=5, publish_token="tok", publish_rate=RateLimiter(1, reactor=clock)
    )
    assert publish(site, {b"authorization": b"Bearer tok"}).status == 200
    assert publish(site, {b"authorization": b"Bearer    tok  "}).status == 429
    assert publish(site, {b"authorization": b"bearer tok"}).status == 429


def test_rate_limit_per_jwt_subject(clock: Clock) -> None:
    """Different JWTs with one sub share a bucket; another sub has its own."""
    auth = JWTAuth(secret=SECRET)
    _, site = serve(clock, header_timeout=5, auth=auth, publish_rate=RateLimiter(1, reactor=clock))

    def bearer(**claims: Any) -> dict[bytes, bytes]:
        return {b"authorization": b"Bearer " + token(clock, **claims)}

    assert publish(site, bearer(sub="alice", n=1), peer="10.0.0.1").status == 200
    assert publish(site, bearer(sub="alice", n=2), peer="10.0.0.2").status == 429
    assert publish(site, bearer(sub="bob"), peer="10.0.0.1").status == 200
    anonymous = bearer(n=3)
    assert publish(site, anonymous, peer="10.0.0.1").status == 200
    assert publish(site, anonymous, peer="10.0.0.1").status == 429  # keyed on the token


# 6. One id limit; never a 4xx for a Last-Event-ID


def test_publish_id_limit_matches_last_event_id(clock: Clock) -> None:
    """An id of 1,024 bytes is published; 1,025 bytes is a 400 naming the limit."""
    _, site = serve(clock, header_timeout=5)
    for size, status in [(1024, 200), (1025, 400)]:
        body = json.dumps({"channel": "c", "id": "é" * (size // 2) + "x" * (size % 2), "data": 1})
        c = Conn(
            site, b"/publish", method=b"POST", headers={b"content-type": JSON}, body=body.encode()
        )
        assert c.status == status, c.raw()
    assert "Last-Event-ID" in c.json()["error"]


@pytest.mark.parametrize(
    "value", [b"x" * 5000, b"\xff\xfe", b"ok\xc3"], ids=["long", "not-utf8", "truncated-utf8"]
)
def test_unusable_last_event_id_gets_a_reset(clock: Clock, value: bytes) -> None:
    """Any Last-Event-ID the server cannot use opens a 200 stream with sse.reset."""
    broker, site = serve(clock, header_timeout=5)
    broker.publish("c", "e", 1)
    c = Conn(site, b"/events", headers={b"Last-Event-ID": value})
    assert c.status == 200 and [e.type for e in c.events()] == ["sse.reset"]
    q = Conn(site, b"/events?lastEventId=" + b"".join(b"%%%02x" % b for b in value))
    assert q.status == 200 and [e.type for e in q.events()] == ["sse.reset"]


# 8. Every error message is encodable


def test_surrogate_in_unknown_field_name(clock: Clock) -> None:
    """A lone surrogate in an unknown field's name: 400 with valid UTF-8 JSON, not a 500."""
    _, site = serve(clock, header_timeout=5)
    c = Conn(
        site,
        b"/publish",
        method=b"POST",
        headers={b"content-type": JSON},
        body=b'{"channel":"c","data":1,"\\ud800x":1}',
    )
    assert c.status == 400
    assert "unknown field" in c.json()["error"]


_KEY = st.text(max_size=6) | st.sampled_from(["\ud800", "\udfff", "a\udc80", "channel", "id"])
_LEAF = (
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["\ud800", "x\udfffy", 10**400])
)
_JSONISH = st.recursive(
    _LEAF,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_KEY, inner, max_size=4),
    max_leaves=10,
)


@st.composite
def fuzz_body(draw: st.DrawFn) -> bytes:
    """A JSON-ish publish body: items with random fields, surrogates, huge numbers, depth."""
    item = draw(st.dictionaries(_KEY, _JSONISH, max_size=5))
    if draw(st.booleans()):
        item.setdefault("channel", draw(st.text(max_size=5) | st.sampled_from(["\ud800", 7])))
    value: Any = item if draw(st.booleans()) else [item, draw(_JSONISH)]
    text = json.dumps(value, ensure_ascii=True)  # \uXXXX escapes carry the surrogates
    depth = draw(st.sampled_from([0, 0, 990, 2000, 100_000]))
    if depth and draw(st.booleans()):
        text = "[" * depth + text + "]" * depth
    elif depth:
        text = '{"channel":"c","data":' + "[" * depth + text + "]" * depth + "}"
    return text.encode("utf-8")


@settings(max_examples=300, deadline=None)
@given(body=fuzz_body())
def test_fuzz_publish_error_paths(body: bytes) -> None:
    """Whatever the body, the answer is 200 or a 4xx, always with a valid UTF-8 JSON body."""
    clock = Clock()
    broker = SSEBroker(reactor=clock, id_prefix="t", heartbeat=0)
    site = SSESite(make_resource(broker, max_body=1 << 20), header_timeout=0, reactor=clock)
    c = Conn(site, b"/publish", method=b"POST", headers={b"content-type": JSON}, body=body)
    assert c.status == 200 or 400 <= c.status < 500, c.raw()[:300]
    answer = c.json()
    if c.status != 200:
        assert isinstance(answer, dict) and isinstance(answer["error"], str)


# 9. JWT expiry


def test_token_without_exp_is_refused(clock: Clock) -> None:
    """No exp: 401 "token has no exp"; with allow_no_exp it is accepted and never expires."""
    _, site = serve(clock, header_timeout=5, auth=JWTAuth(secret=SECRET, private=["p*"]))
    c = Conn(site, b"/events?channel=p1&token=" + token(clock, exp=None))
    assert c.status == 401 and "token has no exp" in c.json()["error"]
    lax = JWTAuth(secret=SECRET, allow_no_exp=True)
    assert lax.verify(token(clock, exp=None).decode()).expires is None


@pytest.mark.parametrize(
    "exp",
    ["99999999999", 10**400, 1e300, True, None, [1]],
    ids=["string", "huge-int", "huge-float", "bool", "null", "list"],
)
def test_bad_exp_is_refused_at_verify(clock: Clock, exp: Any) -> None:
    """A non-numeric or out-of-range exp is an InvalidToken (a 401), never accepted nor a 500."""
    raw = jwt.encode({"sse": {}, "exp": exp}, SECRET, algorithm="HS256")
    with pytest.raises(InvalidToken):
        JWTAuth(secret=SECRET, allow_no_exp=True).verify(raw)
    _, site = serve(clock, header_timeout=5, auth=JWTAuth(secret=SECRET, private=["p*"]))
    c = Conn(site, b"/events?channel=p1&token=" + raw.encode())
    assert c.status == 401 and c.json()["error"].startswith("invalid token")


def test_non_finite_iat_is_a_401(clock: Clock) -> None:
    """Claims PyJWT converts with int() (iat: Infinity) give InvalidToken, not a crash."""
    import base64
    import hashlib
    import hmac

    def b64(raw: bytes) -> bytes:
        return base64.urlsafe_b64encode(raw).rstrip(b"=")

    signed = b64(b'{"alg":"HS256","typ":"JWT"}') + b"." + b64(b'{"iat":Infinity,"exp":1e999}')
    sig = b64(hmac.new(SECRET.encode(), signed, hashlib.sha256).digest())
    with pytest.raises(InvalidToken):
        JWTAuth(secret=SECRET).verify((signed + b"." + sig).decode())


# 10. Loopback trust and DNS rebinding


@pytest.mark.parametrize(
    ("host", "status"),
    [
        (b"attacker.example", 403),
        (b"attacker.example:8080", 403),
        (b"127.0.0.1.nip.io", 403),
        (b"localhost", 200),
        (b"localhost:8080", 200),
        (b"127.0.0.1:1", 200),
        (b"[::1]:8080", 200),
    ],
)
def test_tokenless_publish_needs_a_loopback_host(clock: Clock, host: bytes, status: int) -> None:
    """Without a token, a loopback peer must also name a loopback Host (DNS rebinding)."""
    broker, site = serve(clock, header_timeout=5)
    body = b'{"channel":"c","data":1}'
    hdrs = {b"Content-Type": JSON, b"Content-Length": b"%d" % len(body)}
    c = Raw(site).send(head(b"POST", b"/publish", hdrs, host=host) + body)
    assert c.status == status
    if status == 403:
        assert "Host" in c.json()["error"] and broker.stats.published == 0


def test_token_publish_accepts_any_host(clock: Clock) -> None:
    """With the publish token, the Host header does not matter."""
    _, site = serve(clock, header_timeout=5, publish_token="tok")
    body = b'{"channel":"c","data":1}'
    hdrs = {
        b"Content-Type": JSON,
        b"Content-Length": b"%d" % len(body),
        b"Authorization": b"Bearer tok",
    }
    assert (
        Raw(site).send(head(b"POST", b"/publish", hdrs, host=b"sse.example") + body).status == 200
    )


def preflight(site: Any) -> Conn:
    return Conn(
        site,
        b"/publish",
        method=b"OPTIONS",
        headers={b"origin": b"https://evil.example", b"access-control-request-method": b"POST"},
    )


def test_cors_wildcard_does_not_open_tokenless_publishing(clock: Clock) -> None:
    """--cors-origin '*' without a token: the stream is open to all origins, publishing is not."""
    _, site = serve(clock, header_timeout=5, cors=CORSPolicy(["*"]))
    assert preflight(site).header(b"access-control-allow-origin") is None
    stream = Conn(site, b"/events", headers={b"origin": b"https://evil.example"})
    assert stream.header(b"access-control-allow-origin") == b"*"
    _, site = serve(clock, header_timeout=5, cors=CORSPolicy(["*", "https://app.example"]))
    listed = Conn(site, b"/publish", method=b"OPTIONS", headers={b"origin": b"https://app.example"})
    assert listed.header(b"access-control-allow-origin") == b"https://app.example"


def test_cors_wildcard_applies_to_publishing_with_a_token(clock: Clock) -> None:
    """With a publish token (or JWT), '*' lets any origin publish, as configured."""
    _, site = serve(clock, header_timeout=5, cors=CORSPolicy(["*"]), publish_token="tok")
    assert preflight(site).header(b"access-control-allow-origin") == b"*"


# 11. A channel cap by default


def test_default_max_channels_edge(clock: Clock) -> None:
    """SubscriberLimits() caps a subscription at 64 channels: 64 open, 65 get 400."""
    assert DEFAULT_MAX_CHANNELS == 64
    broker, site = serve(clock, header_timeout=5, limits=SubscriberLimits())
    query = b"&".join(b"channel=c%d" % n for n in range(64))
    assert Conn(site, b"/events?" + query).status == 200
    c = Conn(site, b"/events?" + query + b"&channel=one-more")
    assert c.status == 400 and "64" in c.json()["error"]


# 12. Tokens never in access logs


@pytest.mark.parametrize(
    ("uri", "logged"),
    [
        (b"/events?token=abc.def", b"/events?token=REDACTED"),
        (b"/events?channel=a&token=x&channel=b", b"/events?channel=a&token=REDACTED&channel=b"),
        (b"/events?t%6fken=x", b"/events?token=REDACTED"),
        (b"/events?tokens=x", b"/events?tokens=x"),
        (b"/events", b"/events"),
    ],
)
def test_redact_uri(uri: bytes, logged: bytes) -> None:
    """Every token query parameter (however its name is escaped) is redacted; nothing else."""
    assert redact_uri(uri) == logged


def test_access_log_line_is_redacted(clock: Clock) -> None:
    """The access-log line of a request with ?token= carries token=REDACTED."""
    _, site = serve(clock, header_timeout=5, auth=JWTAuth(secret=SECRET, private=["p"]))
    site.access_log = True
    lines: list[str] = []
    site._logFile = type("F", (), {"write": lambda self, s: lines.append(s)})()  # type: ignore[attr-defined]
    good = token(clock)
    assert Conn(site, b"/health?token=" + good).status == 200
    assert lines and "token=REDACTED" in lines[0] and good.decode() not in "".join(lines)
