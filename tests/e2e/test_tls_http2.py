"""
`twistd sse --port ssl:...` on loopback with a certificate made here: HTTP/1.1
over TLS, HTTP/2 through ALPN (twisted[http2]) with several streams on one
connection, publishing over HTTP/2, and draining HTTP/2 streams on SIGTERM.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import shutil
import signal
import socket
import ssl
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from sse_twisted.parser import EventStreamParser

from ..support.chunks import chunk_data
from ..support.processes import TWISTD, Process
from ..support.tls import self_signed

pytestmark = pytest.mark.e2e

T = TypeVar("T")
_LISTENING = re.compile(r"listening on .*port=(\d+)")


def _events(data: bytes) -> list[tuple[str, str, str]]:
    return [(e.type, e.data, e.last_event_id) for e in EventStreamParser().feed(data)]


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""
    return self_signed(tmp_path_factory.mktemp("tls"))


class TLSServer(Process):
    """`twistd -n sse` on a TLS endpoint on a free loopback port."""

    def __init__(self, key: Path, cert: Path, *args: str) -> None:
        where = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
        super().__init__(
            [TWISTD, "-n", "--pidfile=", "sse", "--port", where, *args],
            env={"PYTHONUNBUFFERED": "1"},
        )
        try:
            self.port = int(self.read_until(_LISTENING).group(1))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.cert = cert
        self.base = f"https://127.0.0.1:{self.port}"

    def context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.cert))
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx


@pytest.fixture
def tls_server(cert_files: tuple[Path, Path]) -> Iterator[TLSServer]:
    srv = TLSServer(*cert_files, "--heartbeat", "0")
    yield srv
    srv.stop(signal.SIGKILL)


def _run(coro: Awaitable[T], timeout: float = 20.0) -> T:
    """Run one async scenario to completion, bounded in time."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


async def _read_until(chunks: Any, got: bytearray, needle: bytes, timeout: float = 10.0) -> None:
    """Read raw body chunks into C{got} until C{needle} is in it."""
    deadline = time.monotonic() + timeout
    while needle not in got:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{needle!r} not received; got {bytes(got)!r}")
        got += await asyncio.wait_for(chunks.__anext__(), left)


async def _read_to_end(chunks: Any, got: bytearray, timeout: float) -> BaseException | None:
    """Read until the stream ends; return the error that ended it, if any."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"stream still open; got {bytes(got)!r}")
        try:
            got += await asyncio.wait_for(chunks.__anext__(), left)
        except StopAsyncIteration:
            return None
        except httpx.HTTPError as e:
            return e


def test_http11_over_tls(tls_server: TLSServer) -> None:
    """
    A client that offers only http/1.1 gets HTTP/1.1 over TLS: a chunked
    event stream that carries a published event, then on SIGTERM a retry
    hint and the end of the response.
    """
    ctx = tls_server.context(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", tls_server.port), timeout=10)
    with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
        assert sock.selected_alpn_protocol() == "http/1.1"
        sock.sendall(b"GET /events?channel=a HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""

        def read_until(needle: bytes) -> None:
            nonlocal data
            deadline = time.monotonic() + 10
            while needle not in data:
                left = deadline - time.monotonic()
                assert left > 0, f"{needle!r} not received; got {data!r}"
                sock.settimeout(left)
                chunk = sock.recv(65536)
                assert chunk, f"closed before {needle!r}; got {data!r}"
                data += chunk

        read_until(b": connected\n")
        assert data.startswith(b"HTTP/1.1 200 ")
        assert b"transfer-encoding: chunked" in data.lower()

        with httpx.Client(http2=False, verify=tls_server.context(), timeout=10) as client:
            answer = client.post(
                f"{tls_server.base}/publish", json={"channel": "a", "event": "e", "data": [1]}
            )
        assert answer.status_code == 200 and answer.http_version == "HTTP/1.1"
        event_id = answer.json()["id"]
        read_until(event_id.encode() + b"\nevent: e\ndata: [1]\n\n")

        tls_server.proc.send_signal(signal.SIGTERM)
        read_until(b"0\r\n\r\n")  # the end of the chunked response
    body = chunk_data(data.partition(b"\r\n\r\n")[2])
    parser = EventStreamParser()
    assert [(e.type, e.data, e.last_event_id) for e in parser.feed(body)] == [
        ("e", "[1]", event_id)
    ]
    assert body.endswith(b"\n\n") and parser.retry is not None and parser.retry >= 2000
    assert tls_server.proc.wait(10) == -signal.SIGTERM
    log = tls_server.drain_output()
    assert "Traceback" not in log and "still open at drain deadline" not in log


def test_h2_two_streams_and_publish_on_one_connection(tls_server: TLSServer) -> None:
    """
    httpx with http2=True negotiates HTTP/2 through ALPN: two event streams
    and the publish requests share one TLS connection (distinct stream ids),
    each stream gets exactly the events of its channel, flushed as published.
    """

    async def scenario() -> None:
        async with httpx.AsyncClient(http2=True, verify=tls_server.context(), timeout=10) as client:
            events = f"{tls_server.base}/events"
            async with (
                client.stream("GET", events, params={"channel": "a"}) as ra,
                client.stream("GET", events, params={"channel": "b"}) as rb,
            ):
                assert ra.status_code == rb.status_code == 200
                assert ra.http_version == rb.http_version == "HTTP/2"
                assert ra.headers["content-type"] == "text/event-stream; charset=utf-8"
                assert "connection" not in ra.headers  # forbidden in HTTP/2
                net = ra.extensions["network_stream"]
                assert rb.extensions["network_stream"] is net  # one connection
                assert ra.extensions["stream_id"] != rb.extensions["stream_id"]
                got_a, got_b = bytearray(), bytearray()
                chunks_a, chunks_b = ra.aiter_raw(), rb.aiter_raw()
                await _read_until(chunks_a, got_a, b"retry: 2000\n\n")
                await _read_until(chunks_b, got_b, b"retry: 2000\n\n")

                sent: dict[str, list[str]] = {"a": [], "b": []}
                for n, channel in enumerate(["a", "b", "a", "b", "a"]):
                    reply = await client.post(
                        f"{tls_server.base}/publish",
                        json={"channel": channel, "event": "n", "data": n},
                    )
                    assert reply.status_code == 200 and reply.http_version == "HTTP/2"
                    assert reply.extensions["network_stream"] is net
                    assert reply.json()["clients"] == 1
                    sent[channel].append(reply.json()["id"])
                    # Flushed at once: each event arrives before the next publish.
                    got = got_a if channel == "a" else got_b
                    chunks = chunks_a if channel == "a" else chunks_b
                    await _read_until(chunks, got, sent[channel][-1].encode() + b"\n")
                await _read_until(chunks_a, got_a, b"data: 4\n\n")
                await _read_until(chunks_b, got_b, b"data: 3\n\n")
                assert _events(bytes(got_a)) == [
                    ("n", str(n), i) for n, i in zip([0, 2, 4], sent["a"], strict=True)
                ]
                assert _events(bytes(got_b)) == [
                    ("n", str(n), i) for n, i in zip([1, 3], sent["b"], strict=True)
                ]
                health = await client.get(f"{tls_server.base}/health")
                assert health.json() == {"status": "ok", "clients": 2}

    _run(scenario())


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_http2_stream(tls_server: TLSServer) -> None:
    """curl --http2 --cacert negotiates HTTP/2 and prints a published event."""
    curl = Process(
        [
            "curl",
            "-sS",
            "-N",
            "-v",
            "--http2",
            "--max-time",
            "20",
            "--cacert",
            str(tls_server.cert),
            f"{tls_server.base}/events?channel=c",
        ]
    )
    try:
        curl.read_until(r"^< HTTP/2 200", timeout=10)
        curl.read_until(r"^retry: 2000$", timeout=10)
        with httpx.Client(http2=True, verify=tls_server.context(), timeout=10) as client:
            reply = client.post(
                f"{tls_server.base}/publish", json={"channel": "c", "text": "héllo\nworld"}
            )
        assert reply.http_version == "HTTP/2" and reply.json()["clients"] == 1
        curl.read_until(r"^data: world$", timeout=10)
        out = curl.output()
        assert "ALPN: server accepted h2" in out
        assert f"id: {reply.json()['id']}\ndata: héllo\ndata: world" in out
    finally:
        curl.stop()


def _open_h2_stream_then_sigterm(tls_server: TLSServer) -> tuple[bytes, BaseException | None]:
    """
    Open an HTTP/2 stream, get one event, SIGTERM the server, read until the
    stream ends: (the bytes read after the event, the error that ended it).
    """

    async def scenario() -> tuple[bytes, BaseException | None]:
        async with (
            httpx.AsyncClient(http2=True, verify=tls_server.context(), timeout=10) as client,
            client.stream("GET", f"{tls_server.base}/events") as response,
        ):
            assert response.http_version == "HTTP/2"
            chunks = response.aiter_raw()
            got = bytearray()
            await _read_until(chunks, got, b"retry: 2000\n\n")
            reply = await client.post(
                f"{tls_server.base}/publish", json={"channel": "d", "data": {"k": 1}}
            )
            frame = f'id: {reply.json()["id"]}\ndata: {{"k":1}}\n\n'.encode()
            await _read_until(chunks, got, frame)
            assert got.endswith(frame)
            before = len(got)
            tls_server.proc.send_signal(signal.SIGTERM)
            error = await _read_to_end(chunks, got, timeout=8)
            return bytes(got[before:]), error

    return _run(scenario())


def test_h2_sigterm_with_open_stream_exits_promptly(tls_server: TLSServer) -> None:
    """
    SIGTERM with an open HTTP/2 stream: the stream ends (one way or another)
    within seconds, twistd exits with -SIGTERM, nothing is logged as a
    traceback, and the drain does not wait for its deadline.
    """
    started = time.monotonic()
    _open_h2_stream_then_sigterm(tls_server)
    assert tls_server.proc.wait(10) == -signal.SIGTERM
    assert time.monotonic() - started < 4.5  # well before the 5 s drain deadline
    log = tls_server.drain_output()
    assert "drained and stopped" in log
    assert "Traceback" not in log and "Unhandled" not in log
    assert "still open at drain deadline" not in log


def test_h2_drain_ends_stream_cleanly_with_retry(tls_server: TLSServer) -> None:
    """
    SIGTERM with an open HTTP/2 stream: as over HTTP/1.1, the stream gets a
    jittered `retry:` and a clean END_STREAM (no connection error).
    """
    tail, error = _open_h2_stream_then_sigterm(tls_server)
    assert error is None, f"stream ended with {error!r} after {tail!r}"
    parser = EventStreamParser()
    parser.feed(tail)
    assert parser.retry is not None and 2000 <= parser.retry <= 4000
    assert tls_server.proc.wait(10) == -signal.SIGTERM


def test_http11_publish_json_over_tls(tls_server: TLSServer) -> None:
    """http.client over TLS (no ALPN at all) publishes; errors are JSON 4xx as over TCP."""
    conn = http.client.HTTPSConnection("127.0.0.1", tls_server.port, context=tls_server.context())
    try:
        conn.request(
            "POST",
            "/publish",
            body=json.dumps({"channel": "x\n", "data": 1}),
            headers={"Content-Type": "application/json"},
        )
        reply = conn.getresponse()
        assert reply.status == 400 and "error" in json.loads(reply.read())
    finally:
        conn.close()
