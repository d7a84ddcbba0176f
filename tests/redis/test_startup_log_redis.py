"""
`twistd sse --redis` with a password, on a real redis-server that requires
it: the password is in no log line (the options line shows the URL with
REDACTED), the Redis connections log no "Starting factory" lines, and the
publish latency histogram counts the publishes answered through Redis.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ..support.processes import SSEServer, wait
from ..support.redis_server import RedisServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

PASSWORD = "redis-password-0123456789abcdef"


def answers(port: int) -> bool:
    """Whether a Redis server on C{port} answers (a password-protected one says NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


@pytest.fixture
def locked_redis(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server that requires C{PASSWORD}; killed at the end."""
    server = RedisServer()
    server.spawn("--requirepass", PASSWORD)
    try:
        wait(lambda: answers(server.port), "redis-server answering")
        yield server
    finally:
        server.kill()
        shutil.rmtree(server._dir, ignore_errors=True)


def test_redis_password_is_redacted_and_factories_quiet(locked_redis: RedisServer) -> None:
    """
    A node logged in with a password publishes through Redis; its log holds
    the URL with the password REDACTED and never the password, and no
    factory start or stop line; each publish answered is timed.
    """
    url = f"redis://:{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    server = SSEServer("--redis", url, "--heartbeat", "0", "--retry", "200")
    try:
        options = server.read_until(r"^\s+options: ").string
        wait(lambda: server.request("GET", "/health")[0] == 200, "node ready (logged in)")
        for n in range(2):
            server.publish("c", "e", n)
        _, _, body = server.request("GET", "/metrics")
    finally:
        assert server.stop(signal.SIGTERM) == -signal.SIGTERM
        output = server.drain_output()
    assert f"--redis=redis://:REDACTED@127.0.0.1:{locked_redis.port}/0" in options
    assert PASSWORD not in output
    assert not re.search(r"(Starting|Stopping) factory", output), output
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert values[("sse_publish_duration_seconds_count", ())] == 2
    assert values[("sse_relay_up", ())] == 1
