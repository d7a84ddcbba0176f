"""
Faults on real processes: `twistd sse --redis` nodes and a real redis-server,
loopback only, every loop bounded in count and time.

Each test states what it guarantees and checks it against the stream itself
(XRANGE is the ground truth of what was stored), not against a count.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from sse_twisted.parser import EventStreamParser, MessageEvent

from ..support.processes import RawSubscriber, SSEServer, wait
from ..support.redis_server import RedisServer, ping

pytestmark = [pytest.mark.e2e, pytest.mark.redis]


# Helpers


def resp(port: int, *args: str | int, timeout: float = 5.0) -> Any:
    """One Redis command on a raw socket (thread-safe, no reactor); a tiny RESP reader."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        parts = [str(a).encode() for a in args]
        s.sendall(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
        f = s.makefile("rb")

        def read() -> Any:
            line = f.readline().rstrip(b"\r\n")
            kind, rest = line[:1], line[1:]
            if kind == b"+":
                return rest.decode()
            if kind == b"-":
                raise RuntimeError(rest.decode())
            if kind == b":":
                return int(rest)
            if kind == b"$":
                n = int(rest)
                if n < 0:
                    return None
                data = f.read(n + 2)[:-2]
                return data.decode()
            if kind == b"*":
                n = int(rest)
                return None if n < 0 else [read() for _ in range(n)]
            raise RuntimeError(f"bad RESP line {line!r}")

        return read()


def stream_ids(redis: RedisServer, channel: str | None = None) -> list[str]:
    """The ids in the stream (of one channel), oldest first."""
    entries = resp(redis.port, "XRANGE", "sse:events", "-", "+")
    out = []
    for entry_id, fields in entries:
        values = dict(zip(fields[::2], fields[1::2], strict=True))
        if channel is None or values["channel"] == channel:
            out.append(entry_id)
    return out


def parsed(sub: RawSubscriber) -> list[MessageEvent]:
    return list(EventStreamParser().feed(sub.body()))


def read_events_until(
    sub: RawSubscriber, stop: Callable[[list[MessageEvent]], bool], timeout: float = 15.0
) -> list[MessageEvent]:
    """Read until C{stop(events so far)}; fail after C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = parsed(sub)
        if stop(got):
            return got
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"stream did not get there; got {[(e.type, e.data) for e in got]}")
        sub.sock.settimeout(left)
        try:
            chunk = sub.sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            chunk = b""
        if not chunk:
            raise ConnectionError(f"stream closed; got {[(e.type, e.data) for e in got]}")
        sub.data += chunk


def has_id(event_id: str) -> Callable[[list[MessageEvent]], bool]:
    return lambda got: any(e.last_event_id == event_id and e.type != "sse.reset" for e in got)


def ids_of(events: list[MessageEvent]) -> list[str]:
    """The ids of the data events, in order (no comments, no signals)."""
    return [e.last_event_id for e in events if not e.type.startswith("sse.")]


def read_what_is_there(sub: RawSubscriber, timeout: float = 5.0) -> None:
    """Read until the peer closes (or resets) the connection."""
    with contextlib.suppress(OSError):
        sub.read_to_close(timeout)


def metrics(server: SSEServer) -> dict[str, float]:
    status, _, body = server.request("GET", "/metrics")
    assert status == 200
    out: dict[str, float] = {}
    for line in body.decode().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def redis_lines(server: SSEServer) -> list[str]:
    """The node's log lines from the Redis bus."""
    return [line for line in server.lines if "[sse_twisted.redis." in line]


# 1. Log words and behaviour agree


def test_outages_log_one_warning_and_one_info_each(
    redis_binary: str, node: Callable[..., SSEServer]
) -> None:
    """
    Redis unreachable at start, then up, then killed, then back: the node
    logs exactly one warning per outage and one info line when Redis is
    back, nothing per retry (at any level), and /metrics counts the outages
    and the attempts; /health is 503 exactly while the link is down.
    """
    server = RedisServer()  # not started yet
    a = node(server.url, ready=False)
    try:
        a.read_until(r"RedisBus#warn\] Redis at .* is unreachable", timeout=10)
        wait(lambda: metrics(a)["sse_relay_connect_attempts_total"] >= 6, "6 attempts", 15)
        assert a.request("GET", "/health")[0] == 503
        assert metrics(a)["sse_relay_up"] == 0
        server.spawn()
        wait(lambda: a.request("GET", "/health")[0] == 200, "ready once Redis is up", 15)
        first_back = a.read_until(r"RedisBus#info\] Back on Redis at .* after ([\d.]+)s away")
        attempts_at_start = metrics(a)["sse_relay_connect_attempts_total"]
        server.kill()
        wait(lambda: a.request("GET", "/health")[0] == 503, "503 once Redis is gone", 15)
        wait(
            lambda: metrics(a)["sse_relay_connect_attempts_total"] >= attempts_at_start + 5,
            "5 more attempts",
            15,
        )
        server.spawn()
        wait(lambda: a.request("GET", "/health")[0] == 200, "ready once Redis is back", 15)
        a.read_until(r"RedisBus#info\] Back on Redis at .* after [\d.]+s away.*restarted")
        m = metrics(a)
        lines = redis_lines(a)
    finally:
        server.kill()
    warns = [line for line in lines if "#warn]" in line]
    infos = [line for line in lines if "#info]" in line]
    assert len(warns) == 2, lines
    assert "is unreachable" in warns[0] and "Lost Redis" in warns[1]
    assert len(infos) == 2, lines
    assert all("Back on Redis" in line for line in infos)
    assert len(lines) == 4, lines  # nothing per retry, at debug level either
    assert float(first_back.group(1)) > 1
    assert m["sse_relay_outages_total"] == 2
    assert m["sse_relay_connect_attempts_total"] >= 13
    assert m["sse_relay_up"] == 1
    assert m["sse_relay_gaps_total"] == 0


# 2. Redis hangs


def test_redis_hang_default_timeout_publishes_wait_and_succeed(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    Redis stopped (SIGSTOP) for 3 s with the default 5 s Redis timeout: a
    publish made during the hang waits and is answered 200 once Redis is
    back, its event reaches the open stream (which stays open), nothing is
    lost and no sse.reset is sent.
    """
    a = node(redis.url)
    sub = RawSubscriber(a, "/events?channel=h")
    sub.read_until(b": connected")
    before = a.publish("h", "e", 0)["id"]
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    results: list[tuple[int, Any, float]] = []

    def publish(n: int) -> None:
        t = time.monotonic()
        status, _, body = a.request("POST", "/publish", {"channel": "h", "data": n})
        results.append((status, body, time.monotonic() - t))

    threads = [threading.Thread(target=publish, args=(n,)) for n in (1, 2)]
    try:
        for t in threads:
            t.start()
            time.sleep(0.5)  # two publishes at different points of the hang
        time.sleep(2.0)
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)
    for t in threads:
        t.join(15)
    assert [s for s, _, _ in results] == [200, 200], results
    after = a.publish("h", "e", 3)["id"]
    got = read_events_until(sub, has_id(after))
    acked = [before, *sorted(b["id"] for _, b, _ in results), after]
    assert ids_of(got) == sorted(acked, key=lambda i: tuple(map(int, i.split("-"))))
    assert not [e for e in got if e.type == "sse.reset"]
    assert metrics(a)["sse_relay_outages_total"] == 0


def hang(redis: RedisServer, seconds: float, during: Callable[[float], bool]) -> None:
    """SIGSTOP redis-server, call C{during(elapsed)} until it is false or time is up, SIGCONT."""
    assert redis.proc is not None
    os.kill(redis.proc.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        for _ in range(100):
            elapsed = time.monotonic() - stopped
            if elapsed >= seconds or not during(elapsed):
                break
            time.sleep(0.05)
        time.sleep(max(0.0, seconds - (time.monotonic() - stopped)))
    finally:
        os.kill(redis.proc.pid, signal.SIGCONT)


def test_redis_hang_with_redis_timeout(redis: RedisServer, node: Callable[..., SSEServer]) -> None:
    """
    Redis stopped (SIGSTOP) for 3 s with --redis-timeout 1, twice.
    Without any publish, /health turns 503 "unavailable" within ping
    interval + timeout (about 2 s): the node notices a hung Redis by itself.
    With publishes, every one is answered 503 within the timeout (plus a
    margin) or 200. Once Redis is back (SIGCONT) health is 200 again, and
    every event answered 200 reaches the stream, which stayed open, with no
    duplicate and no sse.reset.
    """
    a = node(redis.url, "--redis-timeout", "1")
    sub = RawSubscriber(a, "/events?channel=h")
    sub.read_until(b": connected")
    acked = [a.publish("h", "e", 0)["id"]]
    # Delivered: the node's reader now waits in XREAD BLOCK (5 s + timeout).
    read_events_until(sub, has_id(acked[0]))

    # Phase 1: nobody publishes, nothing is read: the node must tell by itself.
    health: list[tuple[float, int, Any]] = []

    def poll_health(elapsed: float) -> bool:
        code, _, state = a.request("GET", "/health")
        health.append((elapsed, code, state))
        return True

    hang(redis, 3.0, poll_health)
    first_503 = next((t for t, code, _ in health if code == 503), None)
    assert first_503 is not None and first_503 < 2.0 + 0.5, health
    assert {"status": "unavailable", "reason": "relay (Redis) not connected"} in [
        state for _, code, state in health if code == 503
    ]
    resumed = time.monotonic()
    wait(lambda: a.request("GET", "/health")[0] == 200, "health 200 after SIGCONT", 15)
    back_after = time.monotonic() - resumed

    # Phase 2: publishes during the hang.
    answers: list[tuple[int, float]] = []

    def publish(elapsed: float) -> bool:
        t = time.monotonic()
        status, _, body = a.request("POST", "/publish", {"channel": "h", "data": len(answers)})
        answers.append((status, time.monotonic() - t))
        if status == 200:
            acked.append(body["id"])
        else:
            assert status == 503 and "error" in body, (status, body)
        return len(answers) < 30

    hang(redis, 3.0, publish)
    wait(lambda: a.request("GET", "/health")[0] == 200, "health 200 after SIGCONT", 15)
    acked.append(a.publish("h", "e", 99)["id"])
    got = read_events_until(sub, has_id(acked[-1]))
    # Every event answered 200 arrived, once, in order; 503 ones may or may
    # not have been stored (the reply was lost), so they may appear too.
    delivered = ids_of(got)
    assert len(delivered) == len(set(delivered))
    assert [i for i in delivered if i in acked] == acked
    assert not [e for e in got if e.type == "sse.reset"]
    assert all(elapsed < 1.0 + 0.5 for status, elapsed in answers if status == 503), answers
    assert back_after < 5, back_after
    assert metrics(a)["sse_relay_outages_total"] == 2
    print(
        f"hang: health 503 {first_503:.2f}s into it with no publish, 200 again"
        f" {back_after:.2f}s after SIGCONT; publishes during it:"
        f" {len([s for s, _ in answers if s == 200])} answered 200,"
        f" {len([s for s, _ in answers if s == 503])} 503 (slowest"
        f" {max(e for _, e in answers):.2f}s)"
    )


# 3. A node killed with SIGKILL


def test_node_killed_while_publishing_through_both(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    Two nodes, subscribers on both, publishes through both; node A is
    SIGKILLed mid-way. Every event answered 200 (by either node) reaches
    B's subscribers, once, in stream order; A's subscribers reconnect to B
    with their Last-Event-ID and get every event after it: together no
    gap, no duplicate, no sse.reset.
    """
    a, b = node(redis.url), node(redis.url)
    on_a = [RawSubscriber(a, "/events?channel=k") for _ in range(3)]
    on_b = [RawSubscriber(b, "/events?channel=k") for _ in range(3)]
    for s in on_a + on_b:
        s.read_until(b": connected")
    acked: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer(target: SSEServer, tag: str) -> None:
        for n in range(300):
            if stop.is_set():
                return
            try:
                status, _, body = target.request(
                    "POST", "/publish", {"channel": "k", "data": f"{tag}{n}"}
                )
            except OSError:
                continue  # A is gone: refused, or reset mid-request
            if status == 200:
                with lock:
                    acked.append(body["id"])

    threads = [
        threading.Thread(target=hammer, args=(a, "a")),
        threading.Thread(target=hammer, args=(b, "b")),
    ]
    for t in threads:
        t.start()
    wait(lambda: len(acked) >= 60, "60 acknowledged publishes", 20)
    a.proc.kill()  # SIGKILL, mid-publish
    a.proc.wait(10)
    with lock:
        at_kill = len(acked)
    wait(lambda: len(acked) >= at_kill + 60, "60 more publishes through B", 20)
    stop.set()
    for t in threads:
        t.join(20)
    sentinel = b.publish("k", "e", "end")["id"]
    truth = stream_ids(redis, "k")
    assert truth[-1] == sentinel
    assert set(acked) <= set(truth)
    for s in on_b:
        got = read_events_until(s, has_id(sentinel))
        assert ids_of(got) == truth
        assert not [e for e in got if e.type.startswith("sse.")]
    for s in on_a:
        read_what_is_there(s)
        before = parsed(s)
        last = before[-1].last_event_id
        assert last in truth
        again = RawSubscriber(b, "/events?channel=k", headers={"Last-Event-ID": last})
        after = read_events_until(again, has_id(sentinel))
        assert not [e for e in after if e.type.startswith("sse.")]
        assert ids_of(before) + ids_of(after) == truth
        again.close()
    print(f"kill: {len(acked)} acknowledged, {at_kill} before the kill, {len(truth)} stored")


# 4. Redis restarted with appendonly


def test_redis_restarted_with_appendonly_no_reset(
    redis_binary: str, node: Callable[..., SSEServer]
) -> None:
    """
    Redis with appendonly (fsync always) SIGKILLed and restarted on the same
    port and directory: the open stream stays open and gets what follows,
    and clients resuming (on this node and on a node started afterwards)
    get the events they missed with no sse.reset; the node counts one
    outage and no gap.
    """
    persist = ("--appendonly", "yes", "--appendfsync", "always")
    server = RedisServer()
    server.spawn(*persist)
    try:
        wait(lambda: ping(server.port), "redis-server answering")
        assert resp(server.port, "CONFIG", "GET", "appendonly") == ["appendonly", "yes"]
        a = node(server.url)
        sub = RawSubscriber(a, "/events?channel=p")
        sub.read_until(b": connected")
        first = [a.publish("p", "e", n)["id"] for n in range(5)]
        read_events_until(sub, has_id(first[-1]))
        server.kill()
        wait(lambda: a.request("GET", "/health")[0] == 503, "503 without Redis")
        server.spawn(*persist)
        wait(lambda: a.request("GET", "/health")[0] == 200, "ready once Redis is back", 20)
        assert stream_ids(server, "p") == first
        second = [a.publish("p", "e", n)["id"] for n in range(5, 10)]
        got = read_events_until(sub, has_id(second[-1]))
        assert ids_of(got) == first + second
        assert not [e for e in got if e.type.startswith("sse.")]
        b = node(server.url)
        for where in (a, b):
            resumed = RawSubscriber(where, "/events?channel=p", headers={"Last-Event-ID": first[1]})
            again = read_events_until(resumed, has_id(second[-1]))
            assert not [e for e in again if e.type.startswith("sse.")]
            assert ids_of(again) == first[2:] + second
            resumed.close()
        m = metrics(a)
        assert m["sse_relay_outages_total"] == 1
        assert m["sse_relay_gaps_total"] == 0
        assert m["sse_relay_history_resets_total"] == 0
    finally:
        server.kill()


# 5. The link to Redis cut mid-reply


class CuttingProxy:
    """
    Forwards 127.0.0.1:<port> to a Redis port, in threads. Once armed, it
    forwards only C{after} more bytes from Redis to the node, then resets
    every connection (RST): a reply cut in the middle. New connections are
    forwarded untouched afterwards.
    """

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        self.lock = threading.Lock()
        self.sockets: set[socket.socket] = set()
        self.budget: int | None = None
        self.cuts: list[float] = []
        self.connections = 0
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, after: int) -> None:
        with self.lock:
            self.budget = after

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            with self.lock:
                self.connections += 1
                self.sockets |= {client, server}
            threading.Thread(target=self._pump, args=(client, server, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_redis: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                cut = False
                if from_redis:
                    with self.lock:
                        if self.budget is not None:
                            if len(data) >= self.budget:
                                data, cut = data[: self.budget], True
                                self.budget = None
                            else:
                                self.budget -= len(data)
                if data:
                    dst.sendall(data)
                if cut:
                    self.cuts.append(time.monotonic())
                    self.reset_all()
                    return
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def reset_all(self) -> None:
        with self.lock:
            sockets, self.sockets = self.sockets, set()
        for s in sockets:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.closed = True
        self.listener.close()
        self.reset_all()


def test_link_cut_mid_xread_reply(redis: RedisServer, node: Callable[..., SSEServer]) -> None:
    """
    A proxy between node A and Redis forwards half of a large XREAD answer
    (200 events of 1 KiB, published through node B) and then resets the
    connection: A reconnects, reads on from the last entry it delivered,
    and its subscriber gets every event once, in order, with no sse.reset.
    """
    proxy = CuttingProxy(redis.port)
    try:
        a = node(f"redis://127.0.0.1:{proxy.port}/0")
        b = node(redis.url)
        sub = RawSubscriber(a, "/events?channel=c")
        sub.read_until(b": connected")
        warm = a.publish("c", "e", "warm")["id"]
        read_events_until(sub, has_id(warm))
        connections = proxy.connections
        proxy.arm(after=100_000)  # the answer is about 220 KB: cut inside it
        status, _, answer = b.request(
            "POST",
            "/publish",
            [{"channel": "c", "data": f"{n:04d}" + "x" * 1024} for n in range(200)],
        )
        assert status == 200, answer
        batch = [item["id"] for item in answer]
        wait(lambda: bool(proxy.cuts), "the proxy to cut the answer", 10)
        got = read_events_until(sub, has_id(batch[-1]), timeout=20)
        reconnected = time.monotonic() - proxy.cuts[0]
        after = b.publish("c", "e", "after")["id"]
        got = read_events_until(sub, has_id(after))
        assert ids_of(got) == [warm, *batch, after]
        assert [e.data[1:5] for e in got if e.last_event_id in batch] == [
            f"{n:04d}" for n in range(200)
        ]
        assert not [e for e in got if e.type.startswith("sse.")]
        assert proxy.connections >= connections + 2  # both links were made again
        m = metrics(a)
        assert m["sse_relay_outages_total"] == 1
        assert m["sse_relay_gaps_total"] == 0
        assert any(re.search(r"Lost Redis at .*", line) for line in redis_lines(a))
        print(f"cut mid-XREAD: all 200 delivered {reconnected:.2f}s after the cut")
    finally:
        proxy.close()


# 6. Issue 10 item 3: batches over the history, and gaps


def test_batch_larger_than_history_is_refused(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    With --redis --history 10, a batch of 11 is a 413 with an error that
    says why and what to do, and nothing is published; a batch of 10 is 200
    and every event reaches the subscriber.
    """
    a = node(redis.url, "--history", "10")
    sub = RawSubscriber(a, "/events?channel=b")
    sub.read_until(b": connected")
    status, _, answer = a.request(
        "POST", "/publish", [{"channel": "b", "data": n} for n in range(11)]
    )
    assert status == 413, answer
    assert "more than the history holds" in answer["error"]
    assert "at most 10" in answer["error"]
    assert stream_ids(redis) == []
    status, _, answer = a.request(
        "POST", "/publish", [{"channel": "b", "data": n} for n in range(10)]
    )
    assert status == 200, answer
    ids = [item["id"] for item in answer]
    got = read_events_until(sub, has_id(ids[-1]))
    assert ids_of(got) == ids
    assert [e.data for e in got] == [str(n) for n in range(10)]


def test_stream_trimmed_past_the_reader_tells_open_streams(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    When the stream is trimmed past what the node read (a burst larger than
    the stream holds, written by another client at once), every open stream
    gets sse.reset naming the last id before the gap, then what the stream
    still holds, in order; /metrics counts the gap.
    """
    resp(redis.port, "CONFIG", "SET", "stream-node-max-entries", "5")
    a = node(redis.url, "--history", "10")
    subs = [RawSubscriber(a, f"/events?channel={ch}") for ch in ("news", "other")]
    for s in subs:
        s.read_until(b": connected")
    before = a.publish("news", "e", "before")["id"]
    # The node has read it (its subscriber has it) before the burst trims it away.
    read_events_until(subs[0], has_id(before))
    script = (
        "for i = 1, 40 do redis.call('XADD', KEYS[1], 'MAXLEN', '~', 10, '*',"
        " 'channel', 'news', 'data', i) end"
    )
    resp(redis.port, "EVAL", script, 1, "sse:events")
    survivors = stream_ids(redis, "news")
    got = read_events_until(subs[0], has_id(survivors[-1]))
    reset = [e for e in got if e.type == "sse.reset"]
    assert len(reset) == 1
    assert f'"lastEventId":"{before}"' in reset[0].data
    assert '"reason":"stream-trimmed"' in reset[0].data
    assert ids_of(got) == [before, *survivors]
    assert got.index(reset[0]) == 1  # told before anything after the gap
    read_events_until(subs[1], lambda g: any(e.type == "sse.reset" for e in g))
    assert metrics(a)["sse_relay_gaps_total"] == 1


# Issue 10 item 1 across nodes


def test_no_node_replays_private_events_to_anonymous_subscribers(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    Private events published through one node are never replayed by another
    to an anonymous subscriber resuming with a public id, nor sent live to
    an anonymous subscriber of every channel.
    """
    private = ("--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cr", "--private-channel", "priv*")
    a = node(redis.url, *private)
    b = node(redis.url, *private)
    live = RawSubscriber(b, "/events")
    live.read_until(b": connected")
    first = a.publish("pub", "e", "p0")["id"]
    a.publish("priv-x", "e", "secret-1")
    a.publish("pub", "e", "p1")
    a.publish("priv-x", "e", "secret-2")
    last = a.publish("pub", "e", "end")["id"]
    resumed = RawSubscriber(b, f"/events?lastEventId={first}")
    for sub in (live, resumed):
        got = read_events_until(sub, has_id(last))
        assert not any("secret" in e.data for e in got)
    assert [e.data for e in parsed(resumed) if e.type == "e"] == ['"p1"', '"end"']
