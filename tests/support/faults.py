"""
Helpers for the fault tests on real `twistd sse` processes: what the process
holds (/proc), what it says (/metrics), streams read incrementally, clients
that stop reading, and a crowd that connects and leaves in waves. Every wait
has a deadline; every loop is bounded.
"""

from __future__ import annotations

import contextlib
import errno
import http.client
import json
import os
import re
import resource
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from sse_twisted.parser import EventStreamParser, MessageEvent

from .chunks import chunks
from .processes import SSEServer

MiB = 1024 * 1024


def open_fds(pid: int) -> int:
    """How many file descriptors the process holds open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def settled_fds(pid: int, seconds: float = 0.5) -> int:
    """
    The fewest open fds seen over C{seconds}: a baseline that does not count
    the connection of a request whose close the server has not yet seen.
    """
    deadline = time.monotonic() + seconds
    low = open_fds(pid)
    while time.monotonic() < deadline:
        low = min(low, open_fds(pid))
        time.sleep(0.02)
    return low


_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)$")


def metrics(server: SSEServer) -> dict[tuple[str, str], float]:
    """GET /metrics, parsed: (name, labels as written) -> value."""
    status, _, body = server.request("GET", "/metrics")
    assert status == 200, (status, body)
    values: dict[tuple[str, str], float] = {}
    for line in body.decode().splitlines():
        m = _SAMPLE.match(line)
        if m:
            values[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return values


def metric(server: SSEServer, name: str, labels: str = "") -> float:
    """One sample of /metrics: C{metric(s, "sse_events_dropped_total", '{reason="queue_full"}')}."""
    return metrics(server)[(name, labels)]


def subscribers(server: SSEServer) -> int:
    """The server's C{sse_subscribers} gauge."""
    return int(metric(server, "sse_subscribers"))


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft fd limit to C{wanted} (within the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        top = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (top, hard))


def text_of(n: int, size: int, tag: str = "e") -> str:
    """An event's text of C{size} characters that names its number (checked on receipt)."""
    head = f"{tag}{n:07d}:"
    return head + "x" * (size - len(head))


# Reading streams


class StreamDecoder:
    """
    Raw bytes of one HTTP/1.1 response in; its head, then the events of its
    chunked event-stream body out, incrementally (large streams stay linear).
    """

    def __init__(self) -> None:
        self.head: bytes | None = None
        self.ended = False  # the chunked terminator arrived
        self.events: list[MessageEvent] = []
        self.received = 0
        self._buf = bytearray()
        self._parser = EventStreamParser()

    def feed(self, data: bytes) -> None:
        self.received += len(data)
        buf = self._buf
        buf += data
        if self.head is None:
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                return
            self.head = bytes(buf[:end])
            del buf[: end + 4]
        pos = 0
        if not self.ended:
            for chunk in chunks(buf):
                pos = chunk.end
                if not chunk.data:
                    self.ended = True
                    break
                self.events += self._parser.feed(chunk.data)
        del buf[:pos]


class Stream:
    """
    A subscriber on a blocking socket that reads only when told to. With
    C{rcvbuf}, its receive buffer is made small before connecting, so that a
    client that stops reading stalls the server's side quickly.
    """

    def __init__(
        self,
        server: SSEServer,
        path: str,
        headers: dict[str, str] | None = None,
        rcvbuf: int | None = None,
    ) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(10)
        self.sock.connect((server.host, server.port))
        lines = [f"GET {path} HTTP/1.1", f"Host: {server.host}:{server.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.decoder = StreamDecoder()
        #: How the connection ended: None (open), "eof" or "reset".
        self.closed: str | None = None

    @property
    def events(self) -> list[MessageEvent]:
        return self.decoder.events

    def ids(self) -> list[str]:
        return [e.last_event_id for e in self.events if e.type == "message"]

    def read_until(self, check: Callable[[StreamDecoder], bool], timeout: float = 10.0) -> None:
        """Read until C{check(decoder)} holds, the connection ends, or fail at the deadline."""
        deadline = time.monotonic() + timeout
        while not check(self.decoder):
            if self.closed is not None:
                raise ConnectionError(f"stream {self.closed} before the condition held")
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"condition not met; {self.decoder.received} bytes read")
            self._recv(left)

    def read_head(self, timeout: float = 10.0) -> bytes:
        """Read the response head and the stream's opening comment."""
        self.read_until(lambda d: d.head is not None and d.received > len(d.head) + 4, timeout)
        assert self.decoder.head is not None
        return self.decoder.head

    def read_to_id(self, last_id: str, timeout: float = 30.0) -> None:
        """Read until the event with id C{last_id} has arrived."""
        self.read_until(lambda d: bool(d.events) and d.events[-1].last_event_id == last_id, timeout)

    def read_to_end(self, timeout: float = 30.0) -> str:
        """Read until the connection ends: "clean" (chunked terminator), "eof" or "reset"."""
        deadline = time.monotonic() + timeout
        while self.closed is None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"still open after {timeout}s")
            self._recv(left)
        if self.decoder.ended:
            return "clean"
        return self.closed

    def _recv(self, timeout: float) -> None:
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(262144)
        except ConnectionResetError:
            self.closed = "reset"
            return
        if not data:
            self.closed = "eof"
            return
        self.decoder.feed(data)

    def close(self) -> None:
        self.sock.close()


def assert_no_silent_gap(events: Iterable[MessageEvent], published: list[str]) -> list[str]:
    """
    The contract, as one client sees it: the events it got are published
    events in publish order, each once, and wherever it skipped some it was
    told (C{sse.dropped} or C{sse.reset}) first. Returns the ids it got.
    """
    index = {event_id: n for n, event_id in enumerate(published)}
    got: list[str] = []
    expected: int | None = None
    for event in events:
        if event.type in ("sse.dropped", "sse.reset"):
            expected = None  # told: the next one may be anywhere later
            continue
        if event.type != "message":
            continue
        n = index.get(event.last_event_id)
        assert n is not None, f"an event never published: {event.last_event_id!r}"
        if expected is not None:
            assert n == expected, (
                f"silent gap or disorder: got #{n} ({event.last_event_id}), expected #{expected}"
            )
        elif got:
            assert n > index[got[-1]], f"out of order after a notice: {event.last_event_id}"
        got.append(event.last_event_id)
        expected = n + 1
    return got


# Publishing


class Publisher:
    """A keep-alive HTTP connection that POSTs to /publish; each answer must be 200."""

    def __init__(self, server: SSEServer) -> None:
        self.conn = http.client.HTTPConnection(server.host, server.port, timeout=15)

    def publish(self, items: list[dict[str, Any]]) -> list[str]:
        """Publish C{items} as one batch; return their ids."""
        body = json.dumps(items).encode()
        self.conn.request(
            "POST", "/publish", body=body, headers={"Content-Type": "application/json"}
        )
        resp = self.conn.getresponse()
        answer = json.loads(resp.read())
        assert resp.status == 200, (resp.status, answer)
        return [a["id"] for a in answer]

    def close(self) -> None:
        self.conn.close()


class BackgroundPublisher(threading.Thread):
    """
    Publishes small events to a channel, paced at about C{rate} per second,
    until stopped or C{limit} seconds have passed; every answer must be 200.
    """

    def __init__(
        self, server: SSEServer, channel: str, *, rate: float, size: int, limit: float
    ) -> None:
        super().__init__(daemon=True)
        self.server = server
        self.channel = channel
        self.rate = rate
        self.size = size
        self.limit = limit
        self.published = 0
        self.error: BaseException | None = None
        self._halt = threading.Event()

    def run(self) -> None:
        publisher = Publisher(self.server)
        start = time.monotonic()
        try:
            while not self._halt.is_set() and time.monotonic() - start < self.limit:
                item = {"channel": self.channel, "text": text_of(self.published, self.size)}
                publisher.publish([item])
                self.published += 1
                # Pacing a load generator, not waiting for anything.
                self._halt.wait(max(0.0, start + self.published / self.rate - time.monotonic()))
        except BaseException as e:
            self.error = e
        finally:
            publisher.close()

    def finish(self) -> int:
        """Stop, and return how many were published (raise what went wrong)."""
        self._halt.set()
        self.join(20)
        assert not self.is_alive(), "the publisher did not stop"
        if self.error is not None:
            raise self.error
        return self.published


# A crowd that comes and goes


_LINGER_RESET = struct.pack("ii", 1, 0)


@dataclass
class Member:
    sock: socket.socket
    reset: bool  # leaves with a TCP reset, else with a FIN
    path: str
    data: bytearray = field(default_factory=bytearray)
    state: str = "connecting"  # -> "reading-head" -> "open" -> "leaving" -> "gone"


@dataclass
class Crowd:
    """
    Subscribers opened in waves on non-blocking sockets and driven by one
    selector: each wave connects, sends its request and reads its head and
    opening comment; a wave then leaves, half of it with a TCP reset
    (SO_LINGER 0, then close) and half with a normal close (shutdown, read
    to the server's end of the connection, close).
    """

    server: SSEServer
    paths: list[str]
    rcvbuf_every: int = 10  # every n-th member gets a small receive buffer
    connect_batch: int = 40
    joined: int = 0
    resets: int = 0
    fins: int = 0
    peak: int = 0  # most streams open at once
    holding: int = 0
    selector: selectors.DefaultSelector = field(default_factory=selectors.DefaultSelector)

    def open_wave(self, size: int, timeout: float) -> list[Member]:
        """Connect C{size} subscribers; return once every one's stream has opened."""
        wave: list[Member] = []
        for _ in range(size):
            if len(wave) % self.connect_batch == 0 and wave:
                # Twisted listens with a backlog of 50: more SYNs at once are
                # dropped and retried a second later.
                self._run(lambda: all(m.state == "open" for m in wave), timeout, "a batch")
            n = self.joined
            self.joined += 1
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            if n % self.rcvbuf_every == 0:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            err = sock.connect_ex((self.server.host, self.server.port))
            assert err in (0, errno.EINPROGRESS), os.strerror(err)
            member = Member(sock, reset=n % 2 == 0, path=self.paths[n % len(self.paths)])
            self.selector.register(sock, selectors.EVENT_WRITE, member)
            wave.append(member)
        self._run(lambda: all(m.state == "open" for m in wave), timeout, "a wave to open")
        return wave

    def leave(self, wave: list[Member], timeout: float) -> None:
        """The wave leaves: resets at once; normal closes wait for the server's FIN."""
        self.holding -= len(wave)
        for member in wave:
            if member.reset:
                member.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
                self._gone(member)
                self.resets += 1
            else:
                member.state = "leaving"
                member.sock.shutdown(socket.SHUT_WR)
                self.selector.register(member.sock, selectors.EVENT_READ, member)
                self.fins += 1
        self._run(lambda: all(m.state == "gone" for m in wave), timeout, "a wave to leave")

    def pump(self, seconds: float) -> None:
        """Serve the sockets for C{seconds} (paces a wave without a bare sleep)."""
        deadline = time.monotonic() + seconds
        self._run(lambda: time.monotonic() >= deadline, seconds + 1, "pacing")

    def _run(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"not within {timeout}s: {what}")
            for key, events in self.selector.select(min(left, 0.05)):
                self._ready(key.data, events)

    def _ready(self, member: Member, events: int) -> None:
        sock = member.sock
        if member.state == "connecting":
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            assert err == 0, f"connect failed: {os.strerror(err)}"
            request = (
                f"GET {member.path} HTTP/1.1\r\nHost: {self.server.host}:{self.server.port}\r\n\r\n"
            ).encode()
            assert sock.send(request) == len(request)
            member.state = "reading-head"
            self.selector.modify(sock, selectors.EVENT_READ, member)
            return
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except ConnectionResetError:
            data = b""
        if member.state == "reading-head":
            assert data, f"closed before its stream opened: {bytes(member.data)!r}"
            member.data += data
            if b"retry:" in member.data:
                assert member.data.startswith(b"HTTP/1.1 200 "), bytes(member.data[:200])
                member.state = "open"
                member.data = bytearray()  # read no more: it may fill up and stall
                self.selector.unregister(sock)
                self.holding += 1
                self.peak = max(self.peak, self.holding)
        elif member.state == "leaving" and not data:
            self._gone(member)

    def _gone(self, member: Member) -> None:
        with contextlib.suppress(KeyError):
            self.selector.unregister(member.sock)
        member.sock.close()
        member.state = "gone"
