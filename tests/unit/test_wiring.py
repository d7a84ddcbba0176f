"""Options, plugin, service lifecycle, paths, exports, embedding, log streaming."""

from __future__ import annotations

import pytest
from klein import Klein
from twisted.application.service import IServiceMaker
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import Logger, LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

import sse_twisted
from sse_twisted import SSEBroker, SSEService, normalise_path
from sse_twisted.logstream import LogStreamObserver
from sse_twisted.resource import StreamResource
from sse_twisted.tap import Options, makeService

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


def test_exports() -> None:
    """Every public name is the object from its home module (nothing re-defined)."""
    import importlib

    homes = {
        "AllChannels": "access", "CORSPolicy": "cors", "Event": "event",
        "EventSource": "client", "EventStreamParser": "parser", "HealthResource": "resource",
        "IHistory": "history", "IRelay": "relay", "InvalidItem": "event", "Item": "event",
        "JWTAuth": "auth", "LogStreamObserver": "logstream", "MemoryHistory": "history",
        "MessageEvent": "parser", "PublishResource": "publish", "Published": "publishing",
        "RateLimiter": "limits", "SSEBroker": "broker", "SSEService": "service",
        "Stats": "stats", "StreamResource": "resource", "Subscriber": "subscriber",
        "SubscriberLimits": "limits", "make_app": "app", "make_resource": "app",
        "normalise_path": "paths", "__version__": "_version",
    }  # fmt: skip
    assert set(sse_twisted.__all__) == set(homes)
    for name, module in homes.items():
        home = importlib.import_module(f"sse_twisted.{module}")
        assert getattr(sse_twisted, name) is getattr(home, name), name


def test_plugin_is_found() -> None:
    """twistd finds the `sse` tap through the plugin system."""
    makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
    assert makers["sse"].options is Options


def test_options_defaults() -> None:
    """Defaults are as documented."""
    o = Options()
    o.parseOptions([])
    assert o["port"] == "tcp:8080"
    assert (o["path"], o["publish-path"], o["queue-size"], o["overflow"]) == (
        "/events",
        "/publish",
        64,
        "drop",
    )
    assert (o["heartbeat"], o["drain-timeout"], o["max-body"], o["history"]) == (
        15.0,
        5.0,
        1 << 20,
        1000,
    )


def test_options_port_forms() -> None:
    """--port takes a number or an endpoint description."""
    for given, expected in [
        ("9000", "tcp:9000"),
        ("tcp:80:interface=127.0.0.1", "tcp:80:interface=127.0.0.1"),
        ("unix:/run/sse.sock", "unix:/run/sse.sock"),
    ]:
        o = Options()
        o.parseOptions(["--port", given])
        assert o["port"] == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--overflow", "explode"], "--overflow"),
        (["--queue-size", "0"], "--queue-size"),
        (["--queue-size", "many"], "integer"),
        (["--heartbeat", "-1"], "negative"),
        (["--heartbeat", "nan"], "negative"),
        (["--max-body", "-5"], "negative"),
        (["--path", "/x", "--publish-path", "x/"], "must differ"),
        (["--history", "0", "--overflow", "catchup"], "catchup"),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    """Bad options raise UsageError with a message that says what is wrong."""
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(argv)


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSE_PUBLISH_TOKEN is the default publish token."""
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "env-token")
    o = Options()
    o.parseOptions([])
    assert o["publish-token"] == "env-token"
    o = Options()
    o.parseOptions(["--publish-token", "flag"])
    assert o["publish-token"] == "flag"


def test_make_service() -> None:
    """makeService wires the broker settings into an SSEService."""
    o = Options()
    o.parseOptions(
        [
            "--port",
            "tcp:0",
            "--queue-size",
            "7",
            "--overflow",
            "disconnect",
            "--heartbeat",
            "0",
            "--drain-timeout",
            "2",
        ]
    )
    svc = makeService(o)
    assert isinstance(svc, SSEService)
    assert (svc.broker.queue_size, svc.broker.overflow, svc.broker.drain_timeout) == (
        7,
        "disconnect",
        2,
    )


def test_service_stops_listening_then_drains() -> None:
    """stopService closes the port first, then drains; it fires when streams are gone."""
    reactor = MemoryReactorClock()
    broker = SSEBroker(reactor=reactor, heartbeat=0)
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    svc = SSEService(
        "tcp:8123:interface=127.0.0.1", Site(root), broker, reactor=reactor, drain_timeout=1
    )
    svc.startService()
    (port,) = reactor.tcpServers
    assert port[0] == 8123
    order: list[str] = []
    listening = svc.port
    assert listening is not None
    original = listening.stopListening

    def stop() -> Deferred[None] | None:
        order.append("stopListening")
        assert not broker.draining
        return original()

    listening.stopListening = stop  # type: ignore[method-assign]
    site = make_site(root, reactor)
    Conn(site)
    done = svc.stopService()
    assert order == ["stopListening"] and broker.draining
    fired: list[object] = []
    done.addCallback(fired.append)
    reactor.advance(1.1)
    assert fired == [None]
    assert not svc.running


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


def test_log_stream_observer() -> None:
    """The log observer publishes selected log events and never feeds back on itself."""
    clock = Clock()
    broker = SSEBroker(reactor=clock, heartbeat=0)
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    sub = Conn(make_site(root, clock), b"/events?channel=logs")
    observer = LogStreamObserver(broker, "logs", lambda e: e.get("log_level") >= LogLevel.warn)
    log = Logger(namespace="app", observer=observer)
    log.info("not this one")
    log.warn("disk {pct}% full", pct=91)
    (event,) = sub.events()
    import json

    data = json.loads(event.data)
    assert event.type == "log"
    assert (data["level"], data["namespace"], data["text"]) == ("warn", "app", "disk 91% full")


def test_import_leaves_reactor_choice_to_the_application() -> None:
    """Importing sse_twisted (and its client) does not install the global reactor."""
    import subprocess
    import sys

    code = (
        "import sys, sse_twisted, sse_twisted.client, sse_twisted.broker, sse_twisted.resource;"
        "print('twisted.internet.reactor' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize("on", [True, False])
def test_client_logging_is_opt_in(on: bool) -> None:
    """Subscriber connects and disconnects are logged at debug level only with log_clients."""
    from twisted.logger import globalLogPublisher

    seen: list[dict[str, object]] = []
    globalLogPublisher.addObserver(seen.append)
    try:
        clock = Clock()
        broker = SSEBroker(reactor=clock, heartbeat=0, log_clients=on)
        root = Resource()
        root.putChild(b"events", StreamResource(broker))
        Conn(make_site(root, clock), b"/events?channel=a").drop()
    finally:
        globalLogPublisher.removeObserver(seen.append)
    mine = [e for e in seen if e.get("log_namespace", "").startswith("sse_twisted.broker")]  # type: ignore[union-attr]
    assert len(mine) == (2 if on else 0)
    assert all(e["log_level"] == LogLevel.debug for e in mine)


def test_site_access_log_is_opt_in() -> None:
    """SSESite writes access-log lines only with access_log=True, and never parses forms."""
    from sse_twisted.resource import PageResource
    from sse_twisted.site import SSESite

    for on in (True, False):
        site = SSESite(PageResource(b"ok", b"text/plain"), access_log=on)
        lines: list[object] = []
        site._logFormatter = lambda timestamp, request, lines=lines: lines.append(request) or "line"  # type: ignore[attr-defined]
        site._logFile = type("F", (), {"write": lambda self, s: None})()  # type: ignore[attr-defined]
        conn = Conn(site, b"/")
        assert bool(lines) == on, conn.raw()
        assert site._parsePOSTFormSubmission is False
