"""
Cross-origin rules at their edges: no headers by default, listed origins
with credentials, the wildcard, the publish preflight.
"""

from __future__ import annotations

from twisted.internet.task import Clock

from sse_twisted.cors import CORSPolicy

from ..support.conn import Conn, post, serve


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
