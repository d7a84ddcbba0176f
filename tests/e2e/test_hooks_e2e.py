"""
Subscribe hooks and stream lifetimes on real processes: `twistd sse` with
--subscribe-hook / --unsubscribe-hook pointing at a small twisted.web
backend (written below, run as its own process on a free loopback port),
and --max-lifetime with a client that reconnects as EventSource does.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sse_twisted.parser import EventStreamParser

from ..support.processes import Process, RawSubscriber, SSEServer, free_port, wait

#: The application's hook endpoints, as a Django or Flask app would be:
#: the session cookie decides. POST /subscribe answers by the cookie's
#: session; POST /ended prints each report as a line the test reads.
BACKEND = r"""
import json, sys
from twisted.internet import reactor
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

class Subscribe(Resource):
    isLeaf = True
    def render_POST(self, request):
        body = json.loads(request.content.read())
        print("SUBSCRIBE " + json.dumps(body), flush=True)
        cookie = body["headers"]["cookie"] or ""
        session = cookie.partition("session=")[2]
        request.setHeader(b"content-type", b"application/json")
        if session == "alice":
            grant = [c for c in body["channels"] if c in ("a", "news")]
            return json.dumps({"channels": grant, "user": "alice"}).encode()
        if session == "bob":
            request.setResponseCode(403)
            return b'{"error": "bob may not read these"}'
        if session == "slow":
            return NOT_DONE_YET
        if session == "broken":
            request.setResponseCode(500)
            return b'{"error": "bug"}'
        request.setResponseCode(401)
        return b'{"error": "log in first"}'

class Ended(Resource):
    isLeaf = True
    def render_POST(self, request):
        for report in json.loads(request.content.read())["ended"]:
            print("ENDED " + json.dumps(report), flush=True)
        request.setResponseCode(204)
        return b""

root = Resource()
root.putChild(b"subscribe", Subscribe())
root.putChild(b"ended", Ended())
port = reactor.listenTCP(0, Site(root), interface="127.0.0.1")
print("listening on %d" % port.getHost().port, flush=True)
reactor.run()
"""


class Backend(Process):
    """The hook backend above, on a free loopback port."""

    def __init__(self, folder: Path) -> None:
        script = folder / "hook_backend.py"
        script.write_text(BACKEND)
        super().__init__([sys.executable, str(script)], env={"PYTHONUNBUFFERED": "1"})
        self.port = int(self.read_until(r"listening on (\d+)").group(1))
        self.url = f"http://127.0.0.1:{self.port}"

    def ended(self, n: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The first C{n} end reports the backend received (waiting for them)."""
        wait(lambda: len(self._reports()) >= n, f"{n} end reports", timeout)
        return self._reports()[:n]

    def _reports(self) -> list[dict[str, Any]]:
        return [json.loads(line[6:]) for line in list(self.lines) if line.startswith("ENDED ")]

    def subscribes(self, n: int = 1, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The subscribe calls the backend received, once it logged C{n} (its output may lag)."""
        wait(lambda: len(self._subscribes()) >= n, f"{n} subscribe calls", timeout)
        return self._subscribes()

    def _subscribes(self) -> list[dict[str, Any]]:
        return [json.loads(line[10:]) for line in list(self.lines) if line.startswith("SUBSCRIBE ")]


@pytest.fixture
def backend(tmp_path: Path) -> Iterator[Backend]:
    proc = Backend(tmp_path)
    yield proc
    proc.stop()


@pytest.fixture
def hooked(start: Callable[..., SSEServer], backend: Backend) -> SSEServer:
    return start(
        "--subscribe-hook",
        f"{backend.url}/subscribe",
        "--unsubscribe-hook",
        f"{backend.url}/ended",
        "--hook-timeout",
        "1",
    )


def events(sub: RawSubscriber) -> list[Any]:
    return [e for e in EventStreamParser().feed(sub.body()) if e.type == "story"]


def test_the_backend_grants_a_subset_and_hears_the_end(hooked: SSEServer, backend: Backend) -> None:
    """
    The backend gets the channels, the peer and the cookie; the stream gets
    the subset it granted; when the client leaves, the backend is told
    who held it (its user), on what, why (gone) and for how long.
    """
    sub = RawSubscriber(hooked, "/events?channel=a&channel=b", headers={"Cookie": "session=alice"})
    sub.read_until(b": connected")
    (asked,) = backend.subscribes()
    assert asked["channels"] == ["a", "b"] and asked["patterns"] == []
    assert asked["headers"]["cookie"] == "session=alice"
    assert asked["peer"].startswith("127.0.0.1:")
    hooked.publish("b", "story", "not granted")
    hooked.publish("a", "story", "granted")
    sub.read_until(b"granted")
    assert [e.data for e in events(sub)] == ['"granted"']
    sub.close()
    (report,) = backend.ended(1)
    assert report["user"] == "alice" and report["channels"] == ["a"]
    assert report["reason"] == "gone" and report["seconds"] >= 0
    assert report["peer"] == asked["peer"]


@pytest.mark.parametrize(
    "cookie, status, error",
    [("session=bob", 403, "bob may not read these"), ("", 401, "log in first")],
)
def test_the_backends_refusal_is_passed_on(
    hooked: SSEServer, cookie: str, status: int, error: str
) -> None:
    """401 and 403 from the backend reach the client, with the backend's error."""
    code, headers, body = hooked.request("GET", "/events?channel=a", headers={"Cookie": cookie})
    assert code == status and body == {"error": error}


@pytest.mark.parametrize("cookie", ["session=slow", "session=broken"])
def test_a_slow_or_failing_backend_sends_the_client_away_to_retry(
    hooked: SSEServer, cookie: str
) -> None:
    """
    A backend slower than --hook-timeout (1 s), or answering 500: the client
    gets a 200 event stream with a retry: that ends (EventSource tries
    again), never a 5xx; the slow one after about the timeout.
    """
    began = time.monotonic()
    sub = RawSubscriber(hooked, "/events?channel=a", headers={"Cookie": cookie})
    data = sub.read_to_close(timeout=10)
    took = time.monotonic() - began
    assert sub.head().startswith(b"HTTP/1.1 200 ")
    assert b"text/event-stream" in sub.head()
    assert b"retry: " in sub.body()
    if cookie == "session=slow":
        assert 0.9 <= took < 5, took
    assert data.endswith(b"0\r\n\r\n")
    hooked.read_until("subscribe hook: .* client sent away to retry")


def test_a_backend_that_is_down_sends_the_client_away(start: Callable[..., SSEServer]) -> None:
    """Nothing listens at the hook's address: 200, retry:, end."""
    srv = start("--subscribe-hook", f"http://127.0.0.1:{free_port()}/subscribe")
    sub = RawSubscriber(srv, "/events")
    sub.read_to_close(timeout=10)
    assert sub.head().startswith(b"HTTP/1.1 200 ") and b"retry: " in sub.body()


def test_lifetime_ends_are_reported(start: Callable[..., SSEServer], backend: Backend) -> None:
    """A stream ended at --max-lifetime is reported with the reason 'lifetime'."""
    srv = start("--max-lifetime", "1", "--unsubscribe-hook", f"{backend.url}/ended")
    sub = RawSubscriber(srv, "/events?channel=a")
    sub.read_to_close(timeout=10)
    (report,) = backend.ended(1)
    assert report["reason"] == "lifetime" and 0.85 <= report["seconds"] <= 1.6, report


def test_streams_end_at_their_lifetime_and_resume_without_loss(
    start: Callable[..., SSEServer],
) -> None:
    """
    With --max-lifetime 1, an EventSource-like client (reconnects after each
    end with its Last-Event-ID, as browsers do) receives, over several
    lifetime ends, every event published on its channel, in order, once,
    while a publisher keeps publishing; each end is clean, with a retry:,
    within [0.9, 1.1] s of the connection's start (plus a scheduling margin).
    """
    srv = start("--max-lifetime", "1", "--retry", "50", "--history", "10000")
    published: list[str] = []
    stop = threading.Event()

    def publisher() -> None:
        n = 0
        while not stop.is_set() and n < 2000:
            published.append(srv.publish("a", "story", n)["id"])
            n += 1
            time.sleep(0.005)

    received: list[str] = []
    lifetimes: list[float] = []
    last = ""
    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while len(lifetimes) < 3 and time.monotonic() < deadline:
            headers = {"Last-Event-ID": last} if last else {}
            began = time.monotonic()
            # replay=all: the first connection also gets what was published
            # before it subscribed; later ones resume (Last-Event-ID wins).
            sub = RawSubscriber(srv, "/events?channel=a&replay=all", headers=headers)
            data = sub.read_to_close(timeout=5)
            lifetimes.append(time.monotonic() - began)
            assert data.endswith(b"0\r\n\r\n"), "a clean end (the terminating chunk)"
            assert sub.body().rstrip(b"\n").rsplit(b"\n\n", 1)[-1].startswith(b"retry: ")
            got = [e.last_event_id for e in events(sub)]
            received += got
            last = got[-1] if got else last
            sub.close()
    finally:
        stop.set()
        thread.join(10)
    assert len(lifetimes) == 3
    assert all(0.85 <= t <= 1.5 for t in lifetimes), lifetimes
    # Whatever was published up to the last connection's end arrived, once, in order.
    sub = RawSubscriber(srv, "/events?channel=a", headers={"Last-Event-ID": last})
    if published[-1] != last:
        sub.read_until(f"id: {published[-1]}\n".encode())
    received += [e.last_event_id for e in events(sub)]
    sub.close()
    assert received == published


def test_streams_drained_at_stop_are_reported(
    start: Callable[..., SSEServer], backend: Backend
) -> None:
    """On SIGTERM the streams are drained and their ends reach the backend before the exit."""
    srv = start("--unsubscribe-hook", f"{backend.url}/ended")
    subs = [RawSubscriber(srv, f"/events?channel=c{n}") for n in range(3)]
    for sub in subs:
        sub.read_until(b": connected")
    srv.stop()
    reports = backend.ended(3)
    assert sorted(r["channels"][0] for r in reports) == ["c0", "c1", "c2"]
    assert {r["reason"] for r in reports} == {"drained"}
