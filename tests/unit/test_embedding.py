"""Embedding in an application: paths normalised, a Klein app, a putChild tree."""

from __future__ import annotations

import pytest
from klein import Klein
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from sse_twisted import SSEBroker, normalise_path
from sse_twisted.resource import StreamResource

from ..support.conn import Conn, make_site


@pytest.mark.parametrize(
    "given, expected",
    [
        ("", "/events"),
        ("   ", "/events"),
        ("/", "/events"),
        ("///", "/events"),
        ("events", "/events"),
        (" /live/ ", "/live"),
        ("a/b/", "/a/b"),
        ("//a//", "/a"),
        (None, "/events"),
    ],
)
def test_normalise_path(given: str | None, expected: str) -> None:
    """Paths are normalised as the original's normaliseSSEPath/resolveSSEPath."""
    assert normalise_path(given) == expected


def test_klein_embedding() -> None:
    """A Klein route that returns StreamResource(broker) serves a stream beside other routes."""
    clock = Clock()
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="k")
    app = Klein()

    @app.route("/hello")
    def hello(request: object) -> str:
        return "hi"

    @app.route("/live/events")
    def events(request: object) -> object:
        return StreamResource(broker)

    site = make_site(app.resource(), clock)
    assert b"hi" in Conn(site, b"/hello").head_and_body()[1]
    sub = Conn(site, b"/live/events?channel=x")
    assert sub.status == 200
    broker.publish("x", "e", 1)
    assert [(e.type, e.data) for e in sub.events()] == [("e", "1")]
    sub.drop()
    assert broker.client_count() == 0


def test_putchild_embedding() -> None:
    """StreamResource(broker) mounts with putChild at any depth."""
    clock = Clock()
    broker = SSEBroker(reactor=clock, heartbeat=0)
    root, api = Resource(), Resource()
    root.putChild(b"api", api)
    api.putChild(b"stream", StreamResource(broker))
    sub = Conn(make_site(root, clock), b"/api/stream")
    broker.publish("c", "e", 2)
    assert [e.data for e in sub.events()] == ["2"]
