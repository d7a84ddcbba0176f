"""Each file in examples/ runs, and does what its docstring says, as a real process."""

from __future__ import annotations

import http.client
import json
import socket
import sys
from collections.abc import Iterator

import pytest

from sse_twisted.parser import EventStreamParser

from ..support.processes import ROOT, Process, RawSubscriber

pytestmark = pytest.mark.e2e


class Example(Process):
    def __init__(self, name: str, *ports: str) -> None:
        super().__init__(
            [sys.executable, str(ROOT / "examples" / name), *ports], env={"PYTHONUNBUFFERED": "1"}
        )
        m = self.read_until(r"listening on (\d+)(?: lines on (\d+))?")
        self.host = "127.0.0.1"
        self.port = int(m.group(1))
        self.extra = int(m.group(2)) if m.group(2) else None


@pytest.fixture
def run() -> Iterator[object]:
    started: list[Example] = []

    def start(name: str, *ports: str) -> Example:
        ex = Example(name, *ports)
        started.append(ex)
        return ex

    yield start
    for ex in started:
        ex.stop()


def post(ex: Example, path: str, body: bytes = b"") -> bytes:
    conn = http.client.HTTPConnection(ex.host, ex.port, timeout=10)
    conn.request("POST", path, body=body)
    data = conn.getresponse().read()
    conn.close()
    return data


def events(sub: RawSubscriber) -> list[tuple[str, str]]:
    return [(e.type, e.data) for e in EventStreamParser().feed(sub.body())]


def test_ticker(run) -> None:  # type: ignore[no-untyped-def]
    """The LoopingCall ticker publishes a tick every second."""
    ex = run("ticker.py", "0")
    sub = RawSubscriber(ex, "/events?channel=clock")  # type: ignore[arg-type]
    sub.read_until(b"event: tick", timeout=5)
    sub.read_until(b"\n\n", timeout=5)
    (kind, data), *_ = events(sub)
    assert kind == "tick" and "time" in json.loads(data)


def test_line_protocol(run) -> None:  # type: ignore[no-untyped-def]
    """Each line sent to the TCP protocol is published as a text event."""
    ex = run("line_protocol.py", "0", "0")
    sub = RawSubscriber(ex, "/events?channel=lines")  # type: ignore[arg-type]
    sub.read_until(b": connected")
    with socket.create_connection(("127.0.0.1", ex.extra), timeout=10) as s:
        s.sendall(b"hello world\r\nsecond\n")
        reply = b""
        while reply.count(b"published") < 2:
            reply += s.recv(1024)
    sub.read_until(b"data: second\n\n")
    assert events(sub) == [("line", "hello world"), ("line", "second")]


def test_klein_app(run) -> None:  # type: ignore[no-untyped-def]
    """The broker mounted in a Klein app streams beside the app's own routes."""
    ex = run("klein_app.py", "0")
    conn = http.client.HTTPConnection(ex.host, ex.port, timeout=10)
    conn.request("GET", "/")
    assert b"existing app" in conn.getresponse().read()
    conn.close()
    sub = RawSubscriber(ex, "/api/stream?channel=orders")  # type: ignore[arg-type]
    sub.read_until(b": connected")
    assert post(ex, "/api/orders", b"widget").startswith(b"order ")
    sub.read_until(b"widget")
    assert events(sub) == [("created", '{"item":"widget"}')]


def test_worker_thread(run) -> None:  # type: ignore[no-untyped-def]
    """A job in a worker thread publishes its progress with publish_threadsafe."""
    ex = run("worker_thread.py", "0")
    sub = RawSubscriber(ex, "/events?channel=jobs")  # type: ignore[arg-type]
    sub.read_until(b": connected")
    assert post(ex, "/start") == b"started job-1\n"
    sub.read_until(b"event: done", timeout=10)
    sub.read_until(b"\n\n")
    got = events(sub)
    assert [json.loads(d)["step"] for k, d in got if k == "progress"] == [1, 2, 3, 4, 5]
    assert got[-1] == ("done", '{"job":"job-1"}')
