"""What is logged, and only when asked: the log stream, subscriber connects, the access log."""

from __future__ import annotations

import pytest
from twisted.internet.task import Clock
from twisted.logger import Logger, LogLevel
from twisted.web.resource import Resource

from sse_twisted import SSEBroker
from sse_twisted.logstream import LogStreamObserver
from sse_twisted.resource import StreamResource

from ..support.conn import Conn, make_site


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
