"""
Fixtures for the Redis tests: real redis-server processes (helpers in
tests/support/redis_server.py), started buses, `twistd sse --redis` nodes.

Without a redis-server binary the tests that need one skip, except under
CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted

from sse_twisted.redis import RedisBus

from ..support.processes import SSEServer, wait
from ..support.redis_server import REDIS_SERVER, Node, RedisServer, global_reactor, ping


@pytest.fixture
def redis_binary() -> str:
    if REDIS_SERVER is None:
        reason = "redis-server not found on PATH: install it (Debian: apt install redis-server)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + "; CI=true, so the Redis tests must run")
        pytest.skip(reason)
    return REDIS_SERVER


@pytest.fixture
def redis_servers(redis_binary: str) -> Iterator[list[RedisServer]]:
    """Servers the test creates (append to it); all killed at the end."""
    servers: list[RedisServer] = []
    yield servers
    for server in servers:
        server.kill()
        shutil.rmtree(server._dir, ignore_errors=True)


@pytest_twisted.async_yield_fixture
async def redis_server(redis_servers: list[RedisServer]) -> AsyncIterator[RedisServer]:
    server = RedisServer()
    redis_servers.append(server)
    await server.start()
    yield server


@pytest_twisted.async_yield_fixture
async def nodes(redis_servers: list[RedisServer]) -> AsyncIterator[Callable[..., Node]]:
    """Make started buses ("nodes"); all stopped at the end, before the servers."""
    made: list[Node] = []

    def make(url: str, **kw: Any) -> Node:
        kw.setdefault("max_backoff", 0.5)
        node = Node(RedisBus(url, **kw))
        node.bus.start()
        made.append(node)
        return node

    yield make
    from twisted.internet.defer import gatherResults

    await gatherResults([n.bus.stop() for n in made]).addTimeout(10, global_reactor())


@pytest.fixture
def redis_log() -> Iterator[list[dict[str, Any]]]:
    """Log events from sse_twisted.redis, captured while the test runs."""
    from twisted.logger import globalLogPublisher

    events: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if str(event.get("log_namespace", "")).startswith("sse_twisted.redis"):
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


@pytest.fixture
def redis(redis_binary: str) -> Iterator[RedisServer]:
    """A redis-server for `twistd sse --redis` nodes; let go on (SIGCONT) before it is killed."""
    server = RedisServer()
    server.spawn()
    wait(lambda: ping(server.port), "redis-server answering")
    yield server
    if server.proc is not None and server.proc.poll() is None:
        os.kill(server.proc.pid, signal.SIGCONT)
    server.kill()


@pytest.fixture
def node() -> Iterator[Callable[..., SSEServer]]:
    """
    Start `twistd sse --redis` nodes (no heartbeat, retry 200 ms) on a
    RedisServer or a URL; each is ready (/health 200) unless C{ready=False}.
    Those still running at the end are killed.
    """
    started: list[SSEServer] = []

    def start(
        redis: RedisServer | str, *args: str, port: int | None = None, ready: bool = True
    ) -> SSEServer:
        url = redis if isinstance(redis, str) else redis.url
        srv = SSEServer("--redis", url, "--heartbeat", "0", "--retry", "200", *args, port=port)
        started.append(srv)
        if ready:
            wait(lambda: srv.request("GET", "/health")[0] == 200, "node ready")
        return srv

    yield start
    for srv in started:
        srv.stop(signal.SIGKILL if srv.proc.poll() is None else signal.SIGTERM)
