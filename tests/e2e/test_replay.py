"""
C{?replay=} on a first connect and the C{Last-Event-ID} response header, on
real `twistd sse` processes (issue 13).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from sse_twisted.parser import EventStreamParser, MessageEvent

from ..support.processes import RawSubscriber, SSEServer

pytestmark = pytest.mark.e2e


def events_until(sub: RawSubscriber, data: str, timeout: float = 10.0) -> list[MessageEvent]:
    """Read until an event whose data is C{data} arrives; the events so far."""
    deadline = time.monotonic() + timeout
    while True:
        got = EventStreamParser().feed(sub.body())
        if any(e.data == data for e in got):
            return got
        left = deadline - time.monotonic()
        assert left > 0, f"{data!r} not received; got {[e.data for e in got]}"
        sub.sock.settimeout(left)
        chunk = sub.sock.recv(65536)
        assert chunk, f"closed before {data!r}"
        sub.data += chunk


def header(sub: RawSubscriber, name: bytes) -> bytes | None:
    for line in sub.head().split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    return None


def test_replay_then_live_with_its_cursor(start: Callable[..., SSEServer]) -> None:
    """
    ?replay=3 gets the newest 3 events of its channel, then the live ones;
    the response's Last-Event-ID is the newest of them; a reconnect with
    that id (and the same URL) resumes after it instead of replaying again;
    ?replay=all gets all the history holds; a bad value is a JSON 400.
    """
    srv = start("--history", "5")
    ids = [srv.publish("x", "e", n)["id"] for n in range(8)]
    srv.publish("other", "e", "not mine")
    sub = RawSubscriber(srv, "/events?channel=x&replay=3")
    sub.read_until(b": connected")
    assert header(sub, b"last-event-id") == ids[-1].encode()
    srv.publish("x", "e", "live")
    got = events_until(sub, '"live"')
    assert [e.data for e in got] == ["5", "6", "7", '"live"']
    assert [e.last_event_id for e in got][:3] == ids[5:]
    sub.close()
    srv.publish("x", "e", "missed")
    back = RawSubscriber(
        srv, "/events?channel=x&replay=3", {"Last-Event-ID": got[-1].last_event_id}
    )
    srv.publish("x", "e", "after")
    assert [e.data for e in events_until(back, '"after"')] == ['"missed"', '"after"']
    every = RawSubscriber(srv, "/events?replay=all")
    every.read_until(b": connected")
    srv.publish("x", "e", "end")
    # --history 5: the last five events published, whatever their channel.
    assert [e.data for e in events_until(every, '"end"')] == [
        "7",
        '"not mine"',
        '"live"',
        '"missed"',
        '"after"',
        '"end"',
    ]
    status, _, answer = srv.request("GET", "/events?replay=-3")
    assert status == 400
    assert answer == {"error": "replay must be 'all' or a whole number from 0 to 1,000,000"}
    for s in (back, every):
        s.close()


def test_replay_without_a_history_is_the_live_stream(start: Callable[..., SSEServer]) -> None:
    """With --history 0, ?replay=all opens the live stream, with no Last-Event-ID header."""
    srv = start("--history", "0")
    srv.publish("x", "e", "before")
    sub = RawSubscriber(srv, "/events?replay=all")
    sub.read_until(b": connected")
    assert header(sub, b"last-event-id") is None
    srv.publish("x", "e", "live")
    assert [e.data for e in events_until(sub, '"live"')] == ['"live"']
    sub.close()
