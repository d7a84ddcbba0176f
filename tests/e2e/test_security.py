"""
Regression tests of issue 10's HTTP-layer findings, each against a real
`twistd sse` process on loopback: bodies refused from their headers, the
whole-request deadline, rate limits per verified identity, one id limit and
no 4xx for Last-Event-ID, encodable errors, JWT expiry rules, loopback Host
and CORS for publishing, the default channel cap, and redacted access logs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ..support.processes import RawSubscriber, SSEServer, rss

pytestmark = pytest.mark.e2e

#: 32 bytes, the least PyJWT accepts for HS256 without a warning.
SECRET = "s3cret-s3cret-s3cret-s3cret-s3cr"
Answer = tuple[int, dict[str, str], Any]


def connect(server: SSEServer) -> socket.socket:
    return socket.create_connection((server.host, server.port), timeout=10)


def read_answer(sock: socket.socket, timeout: float = 5.0) -> Answer:
    """One response with a Content-Length body, read within C{timeout} seconds."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _length(data):
        left = deadline - time.monotonic()
        assert left > 0, f"no whole answer in {timeout}s; got {data!r}"
        sock.settimeout(left)
        chunk = sock.recv(65536)
        assert chunk, f"closed before a whole answer; got {data!r}"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    value: Any = body
    if headers.get("content-type", "").startswith("application/json"):
        value = json.loads(body.decode("utf-8"))
    return int(lines[0].split(" ", 2)[1]), headers, value


def _length(data: bytes) -> int:
    for line in data.partition(b"\r\n\r\n")[0].split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0


def head(server: SSEServer, method: str, path: str, **headers: str) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{k.replace('_', '-')}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def refused_before_body(server: SSEServer, data: bytes) -> Answer:
    """Send only a request's head: its answer must come without a body byte sent."""
    with connect(server) as sock:
        sock.sendall(data)
        return read_answer(sock)


def _spooled_files(pid: int) -> list[str]:
    """Deleted temporary files the process holds open (twisted.web's body spool)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if "(deleted)" in target:
            out.append(target)
    return out


# 4. Bodies refused from their headers


def test_bodies_on_bodyless_paths_refused_from_headers(start: Callable[..., SSEServer]) -> None:
    """
    POST /health announcing 200 MB and GET /events with a chunked body get a
    JSON 413 before any body byte; the 30 MB then sent anyway is dropped: no
    spool file, RSS up by under 10 MiB.
    """
    server = start()
    before = rss(server.pid)
    with connect(server) as sock:
        sock.sendall(head(server, "POST", "/health", Content_Length="209715200"))
        status, headers, body = read_answer(sock)
        assert status == 413 and body == {"error": "this request takes no body"}
        assert headers["connection"] == "close"
        sent = 0
        deadline = time.monotonic() + 10
        try:  # bounded: 30 MB or 10 s, until the server stops listening
            while sent < 30 << 20 and time.monotonic() < deadline:
                sock.sendall(b"\0" * 65536)
                sent += 65536
                assert not _spooled_files(server.pid)
        except (BrokenPipeError, ConnectionResetError):
            pass
    status, _, body = refused_before_body(
        server, head(server, "GET", "/events", Transfer_Encoding="chunked")
    )
    assert status == 413 and "error" in body
    assert rss(server.pid) - before < 10 << 20
    assert server.request("GET", "/health")[0] == 200


def test_publish_judged_before_its_body(start: Callable[..., SSEServer]) -> None:
    """
    /publish with --publish-token: 50 MB without the token is 401 and with
    it 413, both before the body; a chunked body is cut with 413 once past
    --max-body, and nothing is published.
    """
    server = start("--publish-token", "tok", "--max-body", "65536")
    sub = RawSubscriber(server, "/events")
    sub.read_until(b"retry: ")
    big = {"Content_Type": "application/json", "Content_Length": str(50 << 20)}
    status, headers, body = refused_before_body(server, head(server, "POST", "/publish", **big))
    assert status == 401 and headers["www-authenticate"].startswith("Bearer")
    status, _, body = refused_before_body(
        server, head(server, "POST", "/publish", Authorization="Bearer tok", **big)
    )
    assert status == 413 and body == {"error": "body larger than 65536 bytes"}
    with connect(server) as sock:
        sock.sendall(
            head(
                server,
                "POST",
                "/publish",
                Authorization="Bearer tok",
                Content_Type="application/json",
                Transfer_Encoding="chunked",
            )
            + b"4000\r\n"
            + _PREFIX
            + b"a" * (0x4000 - len(_PREFIX))
            + b"\r\n"
        )
        sent = 0x4000
        sock.settimeout(0.05)
        answer = b""
        while not answer and sent < 1 << 20:  # bounded: 1 MiB at most
            try:
                sock.sendall(b"4000\r\n" + b"a" * 0x4000 + b"\r\n")
                sent += 0x4000
                answer = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
        status, _, body = read_answer(sock)
    assert status == 413 and body == {"error": "body larger than 65536 bytes"}
    assert sent <= 65536 + 3 * 0x4000, sent
    ok = server.request(
        "POST", "/publish", {"channel": "c", "data": 1}, {"Authorization": "Bearer tok"}
    )
    sub.read_until(ok[2]["id"].encode())
    assert b'"aaaa' not in sub.data


_PREFIX = b'{"channel":"c","text":"'


def test_trickled_body_meets_the_request_deadline(start: Callable[..., SSEServer]) -> None:
    """--header-timeout 2: a publish body trickled a byte every 1.5 s gets 408 at about 2 s."""
    server = start("--header-timeout", "2")
    with connect(server) as sock:
        started = time.monotonic()
        sock.sendall(
            head(server, "POST", "/publish", Content_Type="application/json", Content_Length="50")
        )
        sock.settimeout(1.5)
        reply = b""
        for byte in b'{"channel":"c","data":1}':  # bounded: 24 bytes
            try:
                sock.sendall(bytes([byte]))
                reply += sock.recv(65536)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                break
            if reply:
                break
        elapsed = time.monotonic() - started
    assert reply.startswith(b"HTTP/1.1 408 "), reply
    assert reply.endswith(b'{"error":"request body took too long"}')
    assert 1.8 <= elapsed <= 3.5, elapsed


def test_pipelined_refusals_keep_the_connection(start: Callable[..., SSEServer]) -> None:
    """A small refused body is read and dropped: the next pipelined request is answered."""
    server = start()
    body = b'{"channel":"c","data":1}'
    with connect(server) as sock:
        sock.sendall(
            head(server, "POST", "/health", Content_Length=str(len(body)))
            + body
            + head(server, "GET", "/health")
        )
        reply = b""
        deadline = time.monotonic() + 5
        while reply.count(b"HTTP/1.1 ") < 2 or not reply.endswith(b"}"):
            assert time.monotonic() < deadline, reply
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = sock.recv(65536)
            assert chunk, reply
            reply += chunk
    first, second = reply.split(b"HTTP/1.1 ")[1:]
    assert first.startswith(b"413 ") and b"Connection: close" not in first
    assert second.startswith(b"200 ") and second.endswith(b'"clients":0}')


# 5. Rate limit per verified identity


def test_rate_limit_keyed_on_identity(start: Callable[..., SSEServer]) -> None:
    """
    --publish-rate 1 without a token: varied garbage Authorization headers
    from loopback all count against one bucket (1 of 6 accepted).
    """
    server = start("--publish-rate", "1")
    statuses = []
    for auth in ["X 1", "X 2", "X  3", "Basic Zm9vOmJhcg==", "Y", "X " + "n" * 100]:
        status, _, _ = server.request(
            "POST", "/publish", {"channel": "c", "data": 1}, {"Authorization": auth}
        )
        statuses.append(status)
    assert statuses == [200, 429, 429, 429, 429, 429]


# 6. Ids


def test_one_id_limit_and_no_4xx_for_last_event_id(start: Callable[..., SSEServer]) -> None:
    """
    A published id over 1,024 bytes is a 400; any unusable Last-Event-ID (too
    long, not UTF-8, in the header or the query) opens a 200 stream with
    sse.reset.
    """
    server = start()
    status, _, body = server.request(
        "POST", "/publish", {"channel": "c", "id": "i" * 1025, "data": 1}
    )
    assert status == 400 and "Last-Event-ID" in body["error"]
    assert server.publish("c", id="i" * 1024, data=1)["id"] == "i" * 1024
    for path, headers in [
        ("/events", {"Last-Event-ID": "x" * 2000}),
        ("/events", {"Last-Event-ID": "\xff\xfe".encode().decode("latin-1")}),
        ("/events?lastEventId=" + "y" * 2000, {}),
        ("/events?lastEventId=%ff%c3", {}),
    ]:
        sub = RawSubscriber(server, path, headers)
        try:
            sub.read_until(b"event: sse.reset\n")
            assert sub.head().startswith(b"HTTP/1.1 200 ")
        finally:
            sub.close()


# 8. Encodable errors


def test_surrogate_field_name_is_a_400(start: Callable[..., SSEServer]) -> None:
    """A lone surrogate in an unknown field's name: JSON 400 (valid UTF-8), no traceback."""
    server = start()
    for raw in [
        b'{"channel":"c","data":1,"\\ud800":1}',
        b'{"channel":"\\udfff","data":1}',
        b'[{"channel":"c","data":1},{"channel":"c","data":1,"x\\udc80":2}]',
    ]:
        status, _, body = server.request("POST", "/publish", raw=raw)
        assert status == 400 and isinstance(body["error"], str), body
    assert "Traceback" not in server.output()


# 9. JWT expiry


def _token(**claims: Any) -> str:
    return jwt.encode({"sse": {"subscribe": ["p*"]}, **claims}, SECRET, algorithm="HS256")


def test_jwt_exp_rules(start: Callable[..., SSEServer]) -> None:
    """
    No exp: 401 "token has no exp"; exp a string or 10**400: 401 (never a
    500); with --jwt-allow-no-exp a token without exp streams.
    """
    server = start("--jwt-secret", SECRET, "--private-channel", "p*")
    status, _, body = server.request("GET", f"/events?channel=p1&token={_token()}")
    assert status == 401 and "token has no exp" in body["error"]
    for exp in [str(int(time.time()) + 60), 10**400]:
        status, _, body = server.request("GET", f"/events?channel=p1&token={_token(exp=exp)}")
        assert status == 401 and body["error"].startswith("invalid token"), body
    lax = start("--jwt-secret", SECRET, "--private-channel", "p*", "--jwt-allow-no-exp")
    sub = RawSubscriber(lax, f"/events?channel=p1&token={_token()}")
    try:
        sub.read_until(b"retry: ")
        assert sub.head().startswith(b"HTTP/1.1 200 ")
    finally:
        sub.close()


# 10. Loopback trust and DNS rebinding


def test_tokenless_publish_needs_loopback_host(start: Callable[..., SSEServer]) -> None:
    """Without a token, Host: attacker.example is 403 (nothing published); localhost:port is 200."""
    server = start()
    for host, status in [
        ("attacker.example", 403),
        (f"attacker.example:{server.port}", 403),
        (f"localhost:{server.port}", 200),
        (f"[::1]:{server.port}", 200),
    ]:
        got, _, body = server.request(
            "POST", "/publish", {"channel": "c", "data": 1}, {"Host": host}
        )
        assert got == status, (host, body)


def test_cors_wildcard_and_publishing(start: Callable[..., SSEServer]) -> None:
    """--cors-origin '*' opens publishing to other origins only when a token is required."""
    preflight = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
    open_server = start("--cors-origin", "*")
    _, headers, _ = open_server.request("OPTIONS", "/publish", headers=preflight)
    assert "access-control-allow-origin" not in headers
    _, headers, _ = open_server.request(
        "POST", "/publish", {"channel": "c", "data": 1}, {"Origin": "https://evil.example"}
    )
    assert "access-control-allow-origin" not in headers
    guarded = start("--cors-origin", "*", "--publish-token", "tok")
    status, headers, _ = guarded.request("OPTIONS", "/publish", headers=preflight)
    assert status == 204 and headers["access-control-allow-origin"] == "*"


# 11. A channel cap by default


def test_default_max_channels(start: Callable[..., SSEServer]) -> None:
    """By default a subscription may name 64 channels; 65 is a JSON 400 naming the option."""
    server = start()
    query = "&".join(f"channel=c{n}" for n in range(64))
    sub = RawSubscriber(server, "/events?" + query)
    try:
        sub.read_until(b"retry: ")
        assert sub.head().startswith(b"HTTP/1.1 200 ")
    finally:
        sub.close()
    status, _, body = server.request("GET", "/events?" + query + "&channel=c64")
    assert status == 400 and "--max-channels" in body["error"]


# 12. Tokens never in access logs


def test_access_log_redacts_tokens(start: Callable[..., SSEServer]) -> None:
    """--access-log writes token=REDACTED for a valid ?token=, never the token."""
    server = start("--jwt-secret", SECRET, "--access-log")
    token = _token(exp=int(time.time()) + 60)
    assert server.request("GET", f"/health?token={token}")[0] == 200
    server.read_until(r"GET /health\?token=REDACTED HTTP/1.1")
    assert token not in server.output()
