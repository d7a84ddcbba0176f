"""`twistd sse` as a real process on loopback: streams, publishing, errors, draining."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time

import pytest
import pytest_twisted

from sse_twisted.parser import EventStreamParser

from ..support.processes import TWISTD, RawSubscriber, SSEServer

pytestmark = pytest.mark.e2e


def parse(data: bytes) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in EventStreamParser().feed(data)]


def test_stream_bytes_and_publish(server: SSEServer) -> None:
    """Headers and a first comment at once; a published event arrives as exact bytes."""
    sub = RawSubscriber(server, "/events?channel=news")
    sub.read_until(b": connected\n")
    head = sub.head().decode().lower()
    assert head.startswith("http/1.1 200")
    assert "content-type: text/event-stream; charset=utf-8" in head
    assert "cache-control: no-cache, no-transform" in head
    assert "x-accel-buffering: no" in head
    assert "\r\nconnection:" not in head
    answer = server.publish("news", "story", {"title": "héllo", "n": 1})
    assert answer["clients"] == 1
    frame = f'id: {answer["id"]}\nevent: story\ndata: {{"title":"héllo","n":1}}\n\n'.encode()
    sub.read_until(frame)
    assert sub.body() == b": connected\nretry: 2000\n\n" + frame
    sub.close()


def test_channel_filters_and_text(server: SSEServer) -> None:
    """Channel filters hold across real connections; text events keep their lines."""
    a = RawSubscriber(server, "/events?channel=a")
    ab = RawSubscriber(server, "/events?channel=a&channel=b")
    every = RawSubscriber(server, "/events")
    for s in (a, ab, every):
        s.read_until(b": connected")
    server.publish("b", "e", 1)
    server.publish("a", None, text="line one\r\nline two")
    last = server.publish("c", "e", 3)["id"]
    every.read_until(last.encode())
    ab.read_until(b"line two")
    a.read_until(b"line two")
    assert [d for _, d, _ in parse(a.body())] == ["line one\nline two"]
    assert [d for _, d, _ in parse(ab.body())] == ["1", "line one\nline two"]
    every.read_until(b"data: 3\n\n")
    assert [(t, d) for t, d, _ in parse(every.body())] == [
        ("e", "1"),
        ("message", "line one\nline two"),
        ("e", "3"),
    ]


def test_bad_input_leaves_server_and_streams_alone(server: SSEServer) -> None:
    """Bad publishes get 4xx JSON errors; the stream of a subscriber stays clean; server lives."""
    sub = RawSubscriber(server, "/events")
    sub.read_until(b": connected")
    cases = [
        ({"channel": "c", "event": "x\nid: 666", "data": 1}, None, 400),
        (None, b"{not json", 400),
        ({"channel": "", "data": 1}, None, 400),
        ([{"channel": "c", "data": 1}, {"channel": "c\r", "data": 2}], None, 400),
    ]
    for body, raw, status in cases:
        got, _, answer = server.request("POST", "/publish", body, raw=raw)
        assert got == status and "error" in answer
    got, _, answer = server.request(
        "POST", "/publish", {"channel": "c", "data": 1}, headers={"Content-Type": "text/plain"}
    )
    assert got == 415
    got, headers, answer = server.request("GET", "/publish")
    assert got == 405 and headers["allow"] == "POST"
    got, _, _ = server.request("POST", "/publish", raw=b"x" * (1024 * 1024 + 10))
    assert got == 413
    last = server.publish("c", "ok", 1)["id"]
    sub.read_until(last.encode() + b"\nevent: ok\ndata: 1\n\n")
    assert parse(sub.body()) == [("ok", "1", last)]
    status, _, health = server.request("GET", "/health")
    assert status == 200 and health == {"status": "ok", "clients": 1}


def test_drain_on_sigterm() -> None:
    """SIGTERM: port closed first, streams get queued events + retry and end, clean exit."""
    srv = SSEServer("--heartbeat", "0", "--drain-timeout", "5")
    try:
        sub = RawSubscriber(srv, "/events")
        sub.read_until(b": connected")
        ids = [srv.publish("c", "e", n)["id"] for n in range(3)]
        sub.read_until(ids[-1].encode())
        srv.proc.send_signal(signal.SIGTERM)
        data = sub.read_to_close(timeout=10)
        assert data.endswith(b"0\r\n\r\n")
        body = sub.body()
        parser = EventStreamParser()
        assert [e.data for e in parser.feed(body)] == ["0", "1", "2"]
        assert parser.retry is not None and 2000 <= parser.retry <= 4000
        code = srv.proc.wait(15)
        assert code == -signal.SIGTERM  # twistd re-raises the signal after a clean stop
        log = srv.drain_output()
        assert "Traceback" not in log and "Unhandled" not in log
        assert "drained and stopped" in log
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", srv.port), timeout=2)
    finally:
        srv.stop(signal.SIGKILL)


def test_drain_refuses_new_connections_while_a_stalled_client_holds_on() -> None:
    """While a client that stopped reading holds the drain, the port already refuses."""
    srv = SSEServer("--heartbeat", "0", "--drain-timeout", "3", "--queue-size", "4")
    try:
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", srv.port))
        stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        deadline = time.monotonic() + 10
        while srv.request("GET", "/health")[2]["clients"] < 1:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        big = "x" * 65536
        for _ in range(40):  # fill the kernel buffers and the queue; never read
            srv.publish("c", "big", text=big)
        started = time.monotonic()
        srv.proc.send_signal(signal.SIGTERM)
        refused = False
        while time.monotonic() - started < 2.5 and srv.proc.poll() is None:
            try:
                socket.create_connection(("127.0.0.1", srv.port), timeout=1).close()
            except ConnectionRefusedError:
                refused = True
                break
            time.sleep(0.02)
        assert refused
        assert srv.proc.poll() is None  # still draining the stalled client
        assert srv.proc.wait(10) == -signal.SIGTERM
        assert time.monotonic() - started >= 2.5  # it waited for the deadline
        log = srv.drain_output()
        assert "aborted" in log and "Traceback" not in log
        stalled.close()
    finally:
        srv.stop(signal.SIGKILL)


def test_publish_token_from_environment() -> None:
    """SSE_PUBLISH_TOKEN requires the bearer token, even from loopback."""
    srv = SSEServer(env={"SSE_PUBLISH_TOKEN": "t0ken"})
    try:
        assert srv.request("POST", "/publish", {"channel": "c", "data": 1})[0] == 401
        status, _, answer = srv.request(
            "POST",
            "/publish",
            {"channel": "c", "data": 1},
            headers={"Authorization": "Bearer t0ken"},
        )
        assert status == 200 and answer["clients"] == 0
    finally:
        srv.stop()


def test_unix_socket_endpoint(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """--port takes any endpoint description, e.g. a UNIX socket."""
    path = tmp_path / "sse.sock"
    proc = subprocess.Popen(
        [TWISTD, "-n", "--pidfile=", "sse", "--port", f"unix:{path}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 15
        while not path.exists():
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(10)
        s.connect(str(path))
        body = b'{"channel":"c","data":1}'
        s.sendall(
            b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        reply = b""
        while b'"clients":0}' not in reply:
            chunk = s.recv(4096)
            assert chunk
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200")
        s.close()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_help_and_bad_options() -> None:
    """`twistd sse --help` lists the options; a bad option exits non-zero with a message."""
    out = subprocess.run([TWISTD, "sse", "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0
    for option in (
        "--port",
        "--path",
        "--publish-path",
        "--publish-token",
        "--max-body",
        "--queue-size",
        "--overflow",
        "--heartbeat",
        "--drain-timeout",
        "--history",
    ):
        assert option in out.stdout
    bad = subprocess.run(
        [TWISTD, "-n", "--pidfile=", "sse", "--overflow", "explode"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "--overflow must be one of" in bad.stdout + bad.stderr


@pytest_twisted.ensureDeferred
async def test_treq_subscriber(server: SSEServer) -> None:
    """A treq client streams events from the real server (our own EventSource client)."""
    from twisted.internet import reactor

    from sse_twisted.client import EventSource

    got: list[str] = []
    source = EventSource(f"{server.base}/events", channels=["t"], reactor=reactor)
    iterator = source.__aiter__()  # starts it, and queues events for the iterator
    deadline = time.monotonic() + 10

    async def wait_for(predicate):  # type: ignore[no-untyped-def]
        from twisted.internet.task import deferLater

        while not predicate():
            assert time.monotonic() < deadline, "timed out"
            await deferLater(reactor, 0.02, lambda: None)

    await wait_for(lambda: source.ready_state == 1)
    # The publish runs in a thread: the blocking HTTP call must not stall the reactor.
    from twisted.internet.threads import deferToThread

    await deferToThread(server.publish, "t", "e", {"k": "v"})
    event = await iterator.__anext__().addTimeout(10, reactor)
    got.append(event.data)
    assert json.loads(got[0]) == {"k": "v"}
    await source.close()
