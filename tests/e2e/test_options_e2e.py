"""
Each production option of `twistd sse` wired into a real process: metrics,
CORS, subscriber limits, publish rate, JWT (HS256, cookie, RS256, expiry) and
the request-header deadline. The unit tests cover the edges in-process; these
prove the options reach the running server.
"""

from __future__ import annotations

import contextlib
import re
import socket
import time
from collections.abc import Callable
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from sse_twisted.parser import EventStreamParser

from ..support.processes import RawSubscriber, SSEServer

pytestmark = pytest.mark.e2e

ORIGIN = "https://app.example"
#: 32 bytes, the least PyJWT accepts for HS256 without a warning.
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cr"


class Stream(RawSubscriber):
    """A raw-socket subscriber that may connect from another loopback address."""

    def __init__(
        self,
        server: SSEServer,
        path: str = "/events",
        headers: dict[str, str] | None = None,
        source: str | None = None,
    ) -> None:
        self.sock = socket.create_connection(
            (server.host, server.port), timeout=10, source_address=(source, 0) if source else None
        )
        lines = [f"GET {path} HTTP/1.1", f"Host: {server.host}:{server.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.data = b""

    def status(self, timeout: float = 10.0) -> int:
        self.read_until(b"\r\n\r\n", timeout)
        return int(self.data.split(b" ", 2)[1])

    def headers(self) -> dict[str, str]:
        lines = self.head().decode("latin-1").split("\r\n")[1:]
        return {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines)}


def wait_clients(server: SSEServer, n: int, timeout: float = 10.0) -> None:
    """Poll /health until it reports C{n} open streams."""
    deadline = time.monotonic() + timeout
    while True:
        clients = server.request("GET", "/health")[2]["clients"]
        if clients == n:
            return
        assert time.monotonic() < deadline, f"{clients} clients, expected {n}"
        time.sleep(0.02)


def metric(text: str, name: str) -> float:
    m = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert m, f"{name} not in metrics:\n{text}"
    return float(m.group(1))


def test_metrics(start: Callable[..., SSEServer]) -> None:
    """/metrics serves Prometheus text: the open streams, and a publish counter that moves."""
    server = start()
    status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    text = body.decode()
    assert metric(text, "sse_subscribers") == 0.0
    before = metric(text, "sse_events_published_total")
    sub = Stream(server, "/events?channel=m")
    sub.read_until(b": connected")
    server.publish("m", "e", 1)
    server.publish("m", "e", 2)
    sub.read_until(b"data: 2\n\n")
    text = server.request("GET", "/metrics")[2].decode()
    assert "\nsse_subscribers 1.0\n" in text
    assert metric(text, "sse_events_published_total") == before + 2
    assert metric(text, "sse_events_delivered_total") >= 2
    assert 'sse_publish_requests_total{status="200"} 2.0' in text
    assert "process_resident_memory_bytes" in text  # the process collector is wired in
    sub.close()
    wait_clients(server, 0)
    assert "\nsse_subscribers 0.0\n" in server.request("GET", "/metrics")[2].decode()


def test_no_metrics_and_metrics_path(start: Callable[..., SSEServer]) -> None:
    """--no-metrics: /metrics is a JSON 404. --metrics-path /m moves it."""
    off = start("--no-metrics")
    status, _, body = off.request("GET", "/metrics")
    assert status == 404 and body == {"error": "not found"}
    moved = start("--metrics-path", "/m")
    status, _, body = moved.request("GET", "/m")
    assert status == 200 and b"sse_subscribers 0.0" in body
    assert moved.request("GET", "/metrics")[0] == 404


def test_cors(start: Callable[..., SSEServer]) -> None:
    """
    --cors-origin: the stream and publish answer that origin (with
    credentials) and no other; a publish preflight gets 204 and the methods.
    """
    server = start("--cors-origin", ORIGIN)
    sub = Stream(server, "/events?channel=c", {"Origin": ORIGIN})
    sub.read_until(b": connected")
    h = sub.headers()
    assert h["access-control-allow-origin"] == ORIGIN
    assert h["access-control-allow-credentials"] == "true"
    assert "origin" in h["vary"].lower()
    other = Stream(server, "/events?channel=c", {"Origin": "https://evil.example"})
    other.read_until(b": connected")
    assert "access-control-allow-origin" not in other.headers()

    status, headers, _ = server.request(
        "OPTIONS",
        "/publish",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, authorization",
        },
    )
    assert status == 204
    assert headers["access-control-allow-origin"] == ORIGIN
    assert "POST" in headers["access-control-allow-methods"]
    assert "content-type" in headers["access-control-allow-headers"].lower()
    status, headers, answer = server.request(
        "POST", "/publish", {"channel": "c", "data": 1}, headers={"Origin": ORIGIN}
    )
    assert status == 200 and headers["access-control-allow-origin"] == ORIGIN
    sub.read_until(answer["id"].encode())
    status, headers, _ = server.request(
        "OPTIONS", "/publish", headers={"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in headers


def test_max_clients(start: Callable[..., SSEServer]) -> None:
    """
    --max-clients 1: a second subscriber gets 200, a comment saying why, a
    retry hint and the end of the stream; once the first leaves, it gets in.
    """
    server = start("--max-clients", "1", "--retry", "1000")
    first = Stream(server, "/events")
    first.read_until(b": connected")
    second = Stream(server, "/events")
    # The response ends (the connection stays open for keep-alive).
    second.read_until(b"\r\n0\r\n\r\n")
    assert second.status() == 200
    assert second.headers()["content-type"].startswith("text/event-stream")
    body = second.body()
    assert body.startswith(b": server full") and b"--max-clients" in body
    parser = EventStreamParser()
    assert parser.feed(body) == []
    assert parser.retry is not None and 1000 <= parser.retry <= 2000
    first.close()
    wait_clients(server, 0)
    third = Stream(server, "/events")
    third.read_until(b": connected")
    answer = server.publish("x", "e", 1)
    assert answer["clients"] == 1
    third.read_until(answer["id"].encode())


def test_max_clients_per_ip(start: Callable[..., SSEServer]) -> None:
    """--max-clients-per-ip 1 counts per address: 127.0.0.1 is full, 127.0.0.2 still gets in."""
    server = start("--max-clients-per-ip", "1")
    first = Stream(server, "/events")
    first.read_until(b": connected")
    again = Stream(server, "/events")
    again.read_until(b"\r\n0\r\n\r\n")
    assert again.status() == 200 and b"too many streams from your address" in again.body()
    elsewhere = Stream(server, "/events", source="127.0.0.2")
    elsewhere.read_until(b": connected")
    assert server.publish("x", "e", 1)["clients"] == 2


def test_max_channels(start: Callable[..., SSEServer]) -> None:
    """--max-channels 2: three channels get a JSON 400, two stream."""
    server = start("--max-channels", "2")
    status, _, body = server.request("GET", "/events?channel=a&channel=b&channel=c")
    assert status == 400 and "--max-channels" in body["error"]
    ok = Stream(server, "/events?channel=a&channel=b")
    ok.read_until(b": connected")


def test_publish_rate(start: Callable[..., SSEServer]) -> None:
    """--publish-rate 2 --publish-burst 2: the third quick publish gets 429 with Retry-After."""
    server = start("--publish-rate", "2", "--publish-burst", "2")
    statuses = []
    for n in range(3):
        status, headers, body = server.request("POST", "/publish", {"channel": "r", "data": n})
        statuses.append(status)
    assert statuses == [200, 200, 429]
    assert int(headers["retry-after"]) >= 1
    assert "too many publish requests" in body["error"]
    deadline = time.monotonic() + 5  # a token comes back after 0.5 s
    while server.request("POST", "/publish", {"channel": "r", "data": 9})[0] == 429:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    text = server.request("GET", "/metrics")[2].decode()
    assert 'sse_publish_requests_total{status="429"}' in text


def _token(key: object, algorithm: str = "HS256", **claims: object) -> str:
    """A JWT with these claims; an hour's exp unless given (tokens without exp are refused)."""
    claims.setdefault("exp", int(time.time()) + 3600)
    return jwt.encode(dict(claims), key, algorithm=algorithm)  # type: ignore[arg-type]


def test_jwt_private_channels(start: Callable[..., SSEServer]) -> None:
    """
    --jwt-secret with --private-channel 'orders.*': no token is 401, a token
    for other channels 403, a badly signed one 401; a good ?token= streams;
    an anonymous all-channels stream never sees private events.
    """
    server = start("--jwt-secret", SECRET, "--private-channel", "orders.*")
    status, headers, body = server.request("GET", "/events?channel=orders.1")
    assert status == 401 and "private" in body["error"]
    assert headers["www-authenticate"].startswith("Bearer")
    narrow = _token(SECRET, sse={"subscribe": ["news"]})
    status, _, body = server.request("GET", f"/events?channel=orders.1&token={narrow}")
    assert status == 403 and "error" in body
    forged = _token("wrong-" + SECRET, sse={"subscribe": ["orders.*"]})
    status, _, body = server.request("GET", f"/events?channel=orders.1&token={forged}")
    assert status == 401 and "invalid token" in body["error"]
    good = _token(SECRET, sse={"subscribe": ["orders.*"]})
    sub = Stream(server, f"/events?channel=orders.1&token={good}")
    sub.read_until(b": connected")
    bearer = Stream(server, "/events?channel=orders.2", {"Authorization": f"Bearer {good}"})
    bearer.read_until(b": connected")
    public = Stream(server, "/events")  # every channel, anonymously
    public.read_until(b": connected")
    secret = server.publish("orders.1", "o", {"total": 3})
    assert secret["clients"] == 1
    news = server.publish("news", "n", 1)
    sub.read_until(secret["id"].encode())
    public.read_until(news["id"].encode())
    assert b"orders" not in public.data and secret["id"].encode() not in public.data


def test_jwt_expiry_closes_stream(start: Callable[..., SSEServer]) -> None:
    """A token's exp ends its stream at that moment, while it is open; expired: 401."""
    server = start("--jwt-secret", SECRET, "--private-channel", "orders.*")
    exp = int(time.time()) + 2
    token = _token(SECRET, sse={"subscribe": ["orders.*"]}, exp=exp)
    sub = Stream(server, f"/events?channel=orders.x&token={token}")
    sub.read_until(b": connected")
    sub.read_to_close(timeout=6)
    closed_at = time.time()
    assert exp - 0.5 <= closed_at <= exp + 2.5
    expired = _token(SECRET, sse={"subscribe": ["orders.*"]}, exp=int(time.time()) - 5)
    status, _, body = server.request("GET", f"/events?channel=orders.x&token={expired}")
    assert status == 401 and "expired" in body["error"].lower()


def test_jwt_cookie(start: Callable[..., SSEServer]) -> None:
    """--jwt-cookie: the token may come from that cookie (what a same-site EventSource sends)."""
    server = start("--jwt-secret", SECRET, "--private-channel", "orders.*", "--jwt-cookie", "sse")
    token = _token(SECRET, sse={"subscribe": ["orders.*"]})
    sub = Stream(server, "/events?channel=orders.1", {"Cookie": f"other=1; sse={token}"})
    assert sub.status() == 200
    sub.read_until(b": connected")
    status, _, _ = server.request(
        "GET", "/events?channel=orders.1", headers={"Cookie": f"nope={token}"}
    )
    assert status == 401


def test_jwt_public_key_rs256(start: Callable[..., SSEServer], tmp_path: Path) -> None:
    """
    --jwt-public-key: an RS256 token signed by the private key streams; an
    HS256 token "signed" with the public key (algorithm confusion) is refused.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    path = tmp_path / "public.pem"
    path.write_bytes(public_pem)
    server = start("--jwt-public-key", str(path), "--private-channel", "orders.*")
    good = _token(key, "RS256", sse={"subscribe": ["orders.*"]})
    sub = Stream(server, f"/events?channel=orders.1&token={good}")
    sub.read_until(b": connected")
    answer = server.publish("orders.1", "o", 1)
    sub.read_until(answer["id"].encode())
    # PyJWT refuses to HMAC-sign with a PEM key, so build the confused token by hand.
    import base64
    import hashlib
    import hmac
    import json

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sse": {"subscribe": ["orders.*"]}}).encode())
    sig = b64(hmac.new(public_pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    status, _, answer = server.request("GET", f"/events?channel=orders.1&token={head}.{body}.{sig}")
    assert status == 401 and "invalid token" in answer["error"]


def test_header_timeout(start: Callable[..., SSEServer]) -> None:
    """
    --header-timeout 1: a client trickling its headers (a byte every 0.3 s)
    gets 408 and is closed after about 1 s; an open stream outlives that.
    """
    server = start("--header-timeout", "1")
    stream = Stream(server, "/events")
    stream.read_until(b": connected")
    slow = socket.create_connection((server.host, server.port), timeout=10)
    started = time.monotonic()
    request = b"GET /events HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 40
    reply = b""
    slow.settimeout(0.3)
    for byte in request:  # bounded: 60 bytes, about 18 s at most
        try:
            slow.sendall(bytes([byte]))
        except (BrokenPipeError, ConnectionResetError):
            break
        try:
            chunk = slow.recv(4096)
        except TimeoutError:
            continue
        except ConnectionResetError:
            break
        reply += chunk
        if not chunk:
            break
        assert time.monotonic() - started < 5
    elapsed = time.monotonic() - started
    slow.settimeout(5)
    try:
        while chunk := slow.recv(4096):
            reply += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    slow.close()
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert reply.endswith(b'{"error":"request headers took too long"}')
    assert 0.8 <= elapsed <= 2.5, elapsed
    # The stream opened before is still served, well past the deadline.
    time.sleep(max(0.0, 1.5 - (time.monotonic() - started)))  # past 1.5 s in all
    answer = server.publish("x", "e", "still here")
    stream.read_until(answer["id"].encode())


def test_idle_keep_alive_is_closed_without_a_408(start: Callable[..., SSEServer]) -> None:
    """An idle keep-alive connection past --header-timeout is closed quietly."""
    server = start("--header-timeout", "1")
    sock = socket.create_connection((server.host, server.port), timeout=10)
    try:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        reply = b""
        deadline = time.monotonic() + 10
        while not reply.endswith(b"}"):
            assert time.monotonic() < deadline
            chunk = sock.recv(4096)
            assert chunk
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 200 ")
        after = b""
        sock.settimeout(5)
        with contextlib.suppress(ConnectionResetError):
            while chunk := sock.recv(4096):  # until the server closes (about 1 s)
                after += chunk
        assert after == b"", after
    finally:
        sock.close()
