"""
Issue 10 items 1 and 7 on real `twistd sse` processes: private channels are
never replayed to a subscriber that may not read them (resume, catch-up and
C{?replay=} on first connect, whose C{Last-Event-ID} response header names no
private event either), and the history is bounded in bytes.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from sse_twisted.parser import EventStreamParser, MessageEvent

from ..support.processes import RawSubscriber, SSEServer

pytestmark = pytest.mark.e2e

SECRET = "s3cret-s3cret-s3cret-s3cret-s3cr"
PRIVATE = ("--jwt-secret", SECRET, "--private-channel", "priv*")


def token(**sse: Any) -> str:
    claims = {"sse": sse, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256")


def events(sub: RawSubscriber) -> list[MessageEvent]:
    return EventStreamParser().feed(sub.body())


def read_until_data(sub: RawSubscriber, data: str, timeout: float = 10.0) -> list[MessageEvent]:
    """Read until an event whose data is C{data} arrives."""
    deadline = time.monotonic() + timeout
    while not any(e.data == data for e in events(sub)):
        left = deadline - time.monotonic()
        assert left > 0, f"{data!r} not received; got {[e.data for e in events(sub)]}"
        sub.sock.settimeout(left)
        chunk = sub.sock.recv(65536)
        assert chunk, f"closed before {data!r}"
        sub.data += chunk
    return events(sub)


def test_anonymous_resume_with_a_public_id_gets_no_private_event(
    start: Callable[..., SSEServer],
) -> None:
    """
    GET /events?lastEventId=<public id> without a token replays the public
    events after it and none of the private ones; a token that grants the
    private channel opens them on the same path.
    """
    srv = start(*PRIVATE)
    first = srv.publish("pub", "story", "p0")["id"]
    srv.publish("priv-x", "story", "secret-1")
    srv.publish("pub", "story", "p1")
    srv.publish("priv-x", "story", "secret-2")
    srv.publish("pub", "story", "end")
    anon = RawSubscriber(srv, f"/events?lastEventId={first}")
    got = read_until_data(anon, '"end"')
    assert [e.data for e in got if e.type == "story"] == ['"p1"', '"end"']
    granted = RawSubscriber(srv, f"/events?lastEventId={first}&token={token(subscribe=['priv-x'])}")
    got = read_until_data(granted, '"end"')
    assert [e.data for e in got if e.type == "story"] == [
        '"secret-1"',
        '"p1"',
        '"secret-2"',
        '"end"',
    ]
    for sub in (anon, granted):
        sub.close()


def head_cursor(sub: RawSubscriber) -> str | None:
    """The stream response's Last-Event-ID header, if any."""
    for line in sub.head().split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"last-event-id":
            return value.strip().decode()
    return None


def test_anonymous_replay_gets_no_private_event_nor_its_id(
    start: Callable[..., SSEServer],
) -> None:
    """
    GET /events?replay=all (and ?replay=N) without a token replays the
    public events and none of the private ones, and its Last-Event-ID header
    is the newest public id, not the newer private one; a token that grants
    the private channel gets both on the same path.
    """
    srv = start(*PRIVATE)
    srv.publish("pub", "story", "p0")
    srv.publish("priv-x", "story", "secret-1")
    newest_public = srv.publish("pub", "story", "p1")["id"]
    newest = srv.publish("priv-x", "story", "secret-2")["id"]
    anon = RawSubscriber(srv, "/events?replay=all")
    anon.read_until(b"\r\n\r\n")
    srv.publish("pub", "story", "end")
    got = read_until_data(anon, '"end"')
    assert [e.data for e in got if e.type == "story"] == ['"p0"', '"p1"', '"end"']
    assert head_cursor(anon) == newest_public
    last = RawSubscriber(srv, "/events?replay=2")
    last.read_until(b"\r\n\r\n")
    srv.publish("pub", "story", "end2")
    got = read_until_data(last, '"end2"')
    assert [e.data for e in got if e.type == "story"] == ['"p1"', '"end"', '"end2"']
    granted = RawSubscriber(srv, f"/events?replay=3&token={token(subscribe=['priv-x'])}")
    granted.read_until(b"\r\n\r\n")
    srv.publish("pub", "story", "end3")
    got = read_until_data(granted, '"end3"')
    assert [e.data for e in got if e.type == "story"] == [
        '"secret-2"',
        '"end"',
        '"end2"',
        '"end3"',
    ]
    assert newest != newest_public
    for sub in (anon, last, granted):
        sub.close()


def test_catchup_never_feeds_private_events_to_a_stalled_anonymous_subscriber(
    start: Callable[..., SSEServer],
) -> None:
    """
    Under --overflow catchup, an anonymous subscriber of every channel that
    stopped reading is fed from the history once it reads again: the public
    events, in order, and no private one.
    """
    srv = start(*PRIVATE, "--overflow", "catchup", "--queue-size", "2", "--history", "500")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((srv.host, srv.port))
    sock.sendall(f"GET /events HTTP/1.1\r\nHost: 127.0.0.1:{srv.port}\r\n\r\n".encode())
    sub = RawSubscriber.__new__(RawSubscriber)
    sub.sock, sub.data = sock, b""
    sub.read_until(b": connected")
    pad = "x" * 8000
    for n in range(60):  # ~1 MB: far past the socket buffers, so it catches up
        srv.request(
            "POST",
            "/publish",
            [
                {"channel": "pub", "data": f"{n}{pad}"},
                {"channel": "priv-x", "data": f"secret{pad}"},
            ],
        )
    srv.publish("pub", "story", "end")
    got = read_until_data(sub, '"end"', timeout=30)
    datas = [e.data for e in got if not e.type.startswith("sse.")]
    assert not any("secret" in d for d in datas)
    assert [d for d in datas if d != '"end"'] == [f'"{n}{pad}"' for n in range(60)]
    sub.close()


def test_history_bounded_in_bytes(start: Callable[..., SSEServer]) -> None:
    """
    --history-bytes keeps the history within its bytes: an id pushed out by
    size gets sse.reset, a recent one resumes, and /metrics shows the bytes.
    """
    srv = start("--history", "1000", "--history-bytes", "40000")
    ids = [srv.publish("c", "e", "y" * 8000)["id"] for _ in range(10)]
    old = RawSubscriber(srv, f"/events?channel=c&lastEventId={ids[0]}")
    old.read_until(b"sse.reset")
    recent = RawSubscriber(srv, f"/events?channel=c&lastEventId={ids[8]}")
    recent.read_until(ids[9].encode())
    assert [e.last_event_id for e in events(recent) if e.type == "e"] == [ids[9]]
    status, _, text = srv.request("GET", "/metrics")
    assert status == 200
    (line,) = [ln for ln in text.decode().splitlines() if ln.startswith("sse_history_bytes ")]
    assert 32000 < float(line.split()[1]) <= 40000
    for sub in (old, recent):
        sub.close()


def test_pattern_subscriber_gets_no_private_event_on_any_path(
    start: Callable[..., SSEServer],
) -> None:
    """
    A pattern never widens what a token allows: GET /events?pattern=p* with
    no token gets the public channels it matches and no private one, live,
    on resume (Last-Event-ID) and on ?replay=; its Last-Event-ID header names
    no private event. A token granting priv-x opens priv-x, and only it, on
    the same paths; as envelopes, each names its channel.
    """
    srv = start(*PRIVATE)
    first = srv.publish("pub", "story", "p0")["id"]
    srv.publish("priv-x", "story", "secret-1")
    newest_public = srv.publish("pub", "story", "p1")["id"]
    srv.publish("priv-y", "story", "secret-y")
    live = RawSubscriber(srv, "/events?pattern=p*")
    resumed = RawSubscriber(srv, f"/events?pattern=p*&lastEventId={first}")
    replayed = RawSubscriber(srv, "/events?pattern=p*&replay=all")
    grant = token(subscribe=["priv-x"])
    granted = RawSubscriber(srv, f"/events?pattern=p*&lastEventId={first}&token={grant}")
    enveloped = RawSubscriber(
        srv, f"/events?pattern=p*&lastEventId={first}&token={grant}&envelope=1"
    )
    for sub in (live, resumed, replayed, granted, enveloped):
        sub.read_until(b"\r\n\r\n")
    assert head_cursor(replayed) == newest_public
    srv.publish("priv-x", "story", "secret-2")
    srv.publish("pub", "story", "end")
    assert [e.data for e in read_until_data(live, '"end"')] == ['"end"']
    assert [e.data for e in read_until_data(resumed, '"end"')] == ['"p1"', '"end"']
    assert [e.data for e in read_until_data(replayed, '"end"')] == ['"p0"', '"p1"', '"end"']
    assert [e.data for e in read_until_data(granted, '"end"')] == [
        '"secret-1"',
        '"p1"',
        '"secret-2"',
        '"end"',
    ]
    deadline = time.monotonic() + 10
    while b'"data":"end"' not in enveloped.data:
        assert time.monotonic() < deadline, enveloped.data
        enveloped.sock.settimeout(deadline - time.monotonic())
        enveloped.data += enveloped.sock.recv(65536)
    got = [json.loads(e.data) for e in events(enveloped)]
    assert [(e["channel"], e["event"], e["data"]) for e in got] == [
        ("priv-x", "story", "secret-1"),
        ("pub", "story", "p1"),
        ("priv-x", "story", "secret-2"),
        ("pub", "story", "end"),
    ]
    assert all(e.type == "message" for e in events(enveloped))
    for sub in (live, resumed, replayed, granted, enveloped):
        sub.close()
