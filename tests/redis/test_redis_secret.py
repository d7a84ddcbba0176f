"""
A Redis password kept out of argv (issue 16): `--redis` from $SSE_REDIS_URL
on a real process and a real redis-server that requires the password.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from ..support.processes import RawSubscriber, SSEServer, wait
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

PASSWORD = "s3cr3t-pw"


def resp(*words: str) -> bytes:
    return b"".join(
        [f"*{len(words)}\r\n".encode()] + [f"${len(w.encode())}\r\n{w}\r\n".encode() for w in words]
    )


def test_redis_url_from_the_environment(redis: RedisServer) -> None:
    """
    $SSE_REDIS_URL with a password: the node connects and relays, the
    password is in neither its command line (/proc/PID/cmdline) nor its log,
    and no argv warning is logged.
    """
    with socket.create_connection(("127.0.0.1", redis.port), timeout=10) as s:
        s.sendall(resp("CONFIG", "SET", "requirepass", PASSWORD))
        assert s.recv(100) == b"+OK\r\n"
    url = f"redis://:{PASSWORD}@127.0.0.1:{redis.port}/0"
    server = SSEServer("--heartbeat", "0", env={"SSE_REDIS_URL": url})
    try:
        wait(lambda: server.request("GET", "/health")[0] == 200, "node connected to Redis")
        assert PASSWORD.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
        sub = RawSubscriber(server, "/events?channel=c")
        sub.read_until(b"retry:")
        server.publish("c", None, 42)
        sub.read_until(b"data: 42")
        sub.close()
    finally:
        server.stop()
    output = server.drain_output()
    assert f"127.0.0.1:{redis.port}" in output  # it said where it connected
    assert PASSWORD not in output
    assert "command line can be read" not in output
