"""The standalone HTTP API (Klein app): publish, health, errors; over a real HTTPChannel."""

from __future__ import annotations

import json

import pytest
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_app, make_resource

from ..support.conn import Conn, make_site, post, serve

JSON = {b"content-type": b"application/json"}


def test_publish_one(clock: Clock) -> None:
    """POST one object: 200 with the id and the number of subscribers it went to."""
    broker, site = serve(clock, heartbeat=15)
    sub = Conn(site, b"/events?channel=news")
    r = post(site, {"channel": "news", "event": "story", "data": {"title": "é"}})
    assert r.status == 200
    assert r.header(b"content-type") == b"application/json"
    assert r.json() == {"id": "t-1", "clients": 1}
    ((typ, data, last),) = [(e.type, e.data, e.last_event_id) for e in sub.events()]
    assert (typ, json.loads(data), last) == ("story", {"title": "é"}, "t-1")


def test_publish_text_and_options(clock: Clock) -> None:
    """text, id and retry are honoured; event may be omitted (EventSource fires 'message')."""
    broker, site = serve(clock, heartbeat=15)
    sub = Conn(site)
    sub.clear()
    r = post(site, {"channel": "c", "text": "<b>x</b>\ny", "id": "my-1", "retry": 500})
    assert r.json() == {"id": "my-1", "clients": 1}
    assert sub.stream() == b"id: my-1\nretry: 500\ndata: <b>x</b>\ndata: y\n\n"


def test_publish_batch(clock: Clock) -> None:
    """A JSON list publishes in order and answers a list of answers."""
    broker, site = serve(clock, heartbeat=15)
    sub = Conn(site, b"/events?channel=a")
    r = post(
        site,
        [{"channel": "a", "data": 1}, {"channel": "b", "data": 2}, {"channel": "a", "data": 3}],
    )
    assert r.json() == [
        {"id": "t-1", "clients": 1},
        {"id": "t-2", "clients": 0},
        {"id": "t-3", "clients": 1},
    ]
    assert [e.data for e in sub.events()] == ["1", "3"]


BAD_BODIES = [
    (b"not json", 400, "not valid JSON"),
    (b"{", 400, "not valid JSON"),
    (b"\xff\xfe{}", 400, "not valid JSON"),
    (b'{"channel": "c", "data": NaN}', 400, "NaN"),
    (b"[" * 100000 + b"]" * 100000, 400, "not valid JSON"),
    (b'{"channel": "c", "data": ' + b"9" * 5000 + b"}", 400, "not valid JSON"),
    (b"42", 400, "JSON object"),
    (b'{"data": 1}', 400, "missing field: channel"),
    (b'{"channel": "c"}', 400, "exactly one of"),
    (b'{"channel": "c", "data": 1, "text": "x"}', 400, "exactly one of"),
    (b'{"channel": 1, "data": 1}', 400, "channel must be a string"),
    (b'{"channel": "c", "event": 5, "data": 1}', 400, "event must be a string"),
    (b'{"channel": "c", "text": 5}', 400, "text must be a string"),
    (b'{"channel": "c", "id": 5, "data": 1}', 400, "id must be a string"),
    (b'{"channel": "c", "retry": "5", "data": 1}', 400, "retry must be"),
    (b'{"channel": "c", "retry": -5, "data": 1}', 400, "retry must be"),
    (b'{"channel": "c", "retry": true, "data": 1}', 400, "retry must be"),
    (b'{"channel": "c", "data": 1, "colour": "red"}', 400, "unknown field"),
    (b'{"channel": "c", "event": "a\\nb", "data": 1}', 400, "CR, LF or NUL"),
    (b'{"channel": "c", "event": "a\\rb", "data": 1}', 400, "CR, LF or NUL"),
    (b'{"channel": "c", "id": "1\\u0000", "data": 1}', 400, "CR, LF or NUL"),
    (b'{"channel": "c\\n", "data": 1}', 400, "control characters"),
    (b'{"channel": "", "data": 1}', 400, "1 to 200"),
    (b'{"channel": "' + b"x" * 201 + b'", "data": 1}', 400, "1 to 200"),
    (
        b'[{"channel": "c", "data": 1}, {"channel": "c", "event": "x\\ny", "data": 2}]',
        400,
        "item 1",
    ),
    (b'[{"channel": "c", "data": 1}, 7]', 400, "item 1"),
]


@pytest.mark.parametrize("raw, status, message", BAD_BODIES)
def test_bad_publish_bodies(clock: Clock, raw: bytes, status: int, message: str) -> None:
    """Each bad body gets its status and a JSON error; nothing is published; streams untouched."""
    broker, site = serve(clock, heartbeat=15)
    sub = Conn(site)
    sub.clear()
    r = post(site, None, raw=raw)
    assert r.status == status
    assert r.header(b"content-type") == b"application/json"
    assert message in r.json()["error"]
    assert sub.raw() == b""
    assert broker.stats.published == 0
    assert post(site, {"channel": "c", "data": 1}).json()["id"] == "t-1"


def test_content_type_must_be_json(clock: Clock) -> None:
    """A body that is not declared JSON gets 415."""
    broker, site = serve(clock, heartbeat=15)
    for headers in ({b"content-type": b"text/plain"}, {}):
        r = post(site, {"channel": "c", "data": 1}, headers or {b"x": b"y"}, content_type=None)
        assert r.status == 415 and "application/json" in r.json()["error"]
    r = post(
        site,
        {"channel": "c", "data": 1},
        headers={b"content-type": b"application/json; charset=utf-8"},
    )
    assert r.status == 200


def test_body_too_large(clock: Clock) -> None:
    """A body over max_body gets 413, by its Content-Length or by what arrives."""
    broker, site = serve(clock, heartbeat=15, max_body=50)
    r = post(site, {"channel": "c", "data": "x" * 100})
    assert r.status == 413 and "50 bytes" in r.json()["error"]
    assert post(site, {"channel": "c", "data": "x"}).status == 200
    assert broker.stats.published == 1


def test_wrong_methods(clock: Clock) -> None:
    """Wrong methods get 405 with Allow and a JSON error."""
    _, site = serve(clock, heartbeat=15)
    for path, method, allow in [
        (b"/publish", b"GET", b"POST"),
        (b"/publish", b"DELETE", b"POST"),
        (b"/events", b"POST", b"GET"),
        (b"/events", b"PUT", b"GET"),
        (b"/health", b"POST", b"GET, HEAD"),
    ]:
        c = Conn(site, path, method=method)
        assert c.status == 405, (path, method)
        assert c.header(b"allow") == allow
        assert "method not allowed" in c.json()["error"]


def test_loopback_only_without_token(clock: Clock) -> None:
    """Without a token, loopback peers may publish and others get 403."""
    broker, site = serve(clock, heartbeat=15)
    assert post(site, {"channel": "c", "data": 1}, peer="127.0.0.9").status == 200
    r = post(site, {"channel": "c", "data": 1}, peer="10.1.2.3")
    assert r.status == 403 and "loopback" in r.json()["error"]
    assert broker.stats.published == 1


def test_token_required(clock: Clock) -> None:
    """With a token every request needs Authorization: Bearer <token>, loopback included."""
    broker, site = serve(clock, heartbeat=15, publish_token="s3cret")
    body = {"channel": "c", "data": 1}
    assert post(site, body).status == 401
    wrong = post(site, body, headers={**JSON, b"authorization": b"Bearer nope"})
    assert wrong.status == 401 and wrong.header(b"www-authenticate")
    basic = post(site, body, headers={**JSON, b"authorization": b"Basic s3cret"})
    assert basic.status == 401
    ok = post(site, body, headers={**JSON, b"authorization": b"Bearer s3cret"}, peer="10.1.2.3")
    assert ok.status == 200
    assert broker.stats.published == 1


def test_bad_channel_query(clock: Clock) -> None:
    """A bad channel in the query gets 400 JSON and no subscription."""
    broker, site = serve(clock, heartbeat=15)
    for query in (b"?channel=%0A", b"?channel=%FF", b"?channel=" + b"x" * 201):
        c = Conn(site, b"/events" + query)
        assert c.status == 400, query
        assert "channel" in c.json()["error"]
    assert broker.client_count() == 0


def test_health(clock: Clock) -> None:
    """GET /health: 200 ok with the client count; 503 draining while draining."""
    broker, site = serve(clock, heartbeat=15)
    Conn(site)
    h = Conn(site, b"/health")
    assert (h.status, h.json()) == (200, {"status": "ok", "clients": 1})
    broker.drain()
    h = Conn(site, b"/health")
    assert h.status == 503 and h.json()["status"] == "draining"


def test_publish_while_draining(clock: Clock) -> None:
    """Publishing while draining gets 503."""
    broker, site = serve(clock, heartbeat=15)
    broker.drain()
    r = post(site, {"channel": "c", "data": 1})
    assert r.status == 503 and "draining" in r.json()["error"]


def test_unknown_path(clock: Clock) -> None:
    """Unknown paths get a JSON 404."""
    _, site = serve(clock, heartbeat=15)
    c = Conn(site, b"/nothing/here")
    assert c.status == 404 and c.json() == {"error": "not found"}


def test_custom_paths(clock: Clock) -> None:
    """Paths are normalised as in the original broker and served where configured."""
    broker, site = serve(
        clock, heartbeat=15, path=" live/stream/ ", publish_path="/api/pub/", health_path="hz"
    )
    sub = Conn(site, b"/live/stream?channel=c")
    assert sub.status == 200
    r = Conn(site, b"/api/pub", method=b"POST", headers=JSON, body=b'{"channel":"c","data":1}')
    assert r.json() == {"id": "t-1", "clients": 1}
    assert Conn(site, b"/hz").json()["status"] == "ok"
    assert Conn(site, b"/events").status == 404


def test_klein_app_serves_the_same_api(clock: Clock) -> None:
    """make_app (for embedding in Klein) serves the stream, publish and health too."""
    broker = SSEBroker(reactor=clock, id_prefix="t")
    site = make_site(make_app(broker).resource(), clock)
    sub = Conn(site, b"/events/?channel=c")
    assert post(site, {"channel": "c", "data": 1}).json() == {"id": "t-1", "clients": 1}
    assert [e.data for e in sub.events()] == ["1"]
    assert Conn(site, b"/health").json()["clients"] == 1


def test_stream_path_with_trailing_slash(clock: Clock) -> None:
    """The stream answers on its path with or without a trailing slash."""
    broker, site = serve(clock, heartbeat=15)
    Conn(site, b"/events/")
    assert broker.client_count() == 1


def test_demo_page(clock: Clock) -> None:
    """GET / serves the demo page unless turned off."""
    _, site = serve(clock, heartbeat=15)
    page = Conn(site, b"/")
    assert page.status == 200 and page.header(b"content-type") == b"text/html; charset=utf-8"
    assert b"EventSource" in page.head_and_body()[1]
    _, site = serve(clock, heartbeat=15, demo=False)
    assert Conn(site, b"/").status == 404


def test_metrics(clock: Clock) -> None:
    """GET /metrics exposes the broker's counters in the Prometheus text format."""
    from prometheus_client.parser import text_string_to_metric_families

    broker = SSEBroker(reactor=clock, id_prefix="t", queue_size=1, heartbeat=5)
    site = make_site(make_resource(broker), clock)
    slow, _fast = Conn(site), Conn(site)
    slow.pause()
    for n in range(3):
        post(site, {"channel": "c", "data": n})
    post(site, {"channel": "c"})  # a 400
    clock.advance(5)  # one heartbeat, to the reading client only
    resumed = Conn(site, b"/events", headers={b"Last-Event-ID": b"t-1"})
    page = Conn(site, b"/metrics")
    assert page.status == 200
    assert page.header(b"content-type").startswith(b"text/plain")  # type: ignore[union-attr]
    body = page.head_and_body()[1]
    if page.header(b"transfer-encoding") == b"chunked":
        from ..support.chunks import dechunk

        body = dechunk(body)[0]
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert values[("sse_subscribers", ())] == 3
    assert values[("sse_events_published_total", ())] == 3
    assert values[("sse_events_delivered_total", ())] == 4  # 3 to fast, 1 queued for slow
    assert values[("sse_events_dropped_total", (("reason", "queue_full"),))] == 2
    assert values[("sse_events_dropped_total", (("reason", "slow_disconnect"),))] == 0
    assert values[("sse_publish_requests_total", (("status", "200"),))] == 3
    assert values[("sse_publish_requests_total", (("status", "400"),))] == 1
    assert values[("sse_heartbeats_total", ())] == 1
    assert values[("sse_events_replayed_total", ())] == 2
    assert values[("sse_history_events", ())] == 3
    assert 0 < values[("sse_history_bytes", ())] < 1000
    assert values[("sse_write_timeouts_total", ())] == 0
    assert values[("sse_expired_total", ())] == 0
    assert values[("sse_expired_streams_total", ())] == 0
    assert values[("sse_bytes_sent_total", ())] > 0
    assert values[("sse_sent_bytes_total", ())] == values[("sse_bytes_sent_total", ())]
    assert ("process_resident_memory_bytes", ()) in values
    assert len(resumed.events()) == 2
    for channel in ("c", "t-1"):  # no label carries a user-chosen value
        assert f'"{channel}"'.encode() not in body


def test_metrics_off(clock: Clock) -> None:
    """metrics_path=None serves no metrics."""
    _, site = serve(clock, heartbeat=15, metrics_path=None)
    assert Conn(site, b"/metrics").status == 404
