"""
Real redis-server processes for the Redis tests, and helpers to wait on them.

Each server binds 127.0.0.1 on a free port with persistence off and is
stopped by its PID when the test ends. Without a redis-server binary the
tests that need one skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted

from sse_twisted.event import Event
from sse_twisted.redis import RedisBus

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def pause(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(_reactor(), seconds)


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll C{predicate} every 20 ms until it holds; fail after C{timeout} s."""
    deadline = _reactor().seconds() + timeout
    while not predicate():
        if _reactor().seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pause(0.02)


async def redis_command(port: int, *args: Any, password: str | None = None, db: int = 0) -> Any:
    """Run one command on a fresh connection (through an endpoint) and close it."""
    import txredisapi
    from twisted.internet.endpoints import TCP4ClientEndpoint
    from twisted.internet.protocol import Factory

    factory = Factory.forProtocol(lambda: txredisapi.RedisProtocol(convertNumbers=False))
    endpoint = TCP4ClientEndpoint(_reactor(), "127.0.0.1", port, timeout=5)
    proto = await endpoint.connect(factory).addTimeout(5, _reactor())
    try:
        if password is not None:
            await proto.execute_command("AUTH", password).addTimeout(5, _reactor())
        if db:
            await proto.execute_command("SELECT", db).addTimeout(5, _reactor())
        return await proto.execute_command(*args).addTimeout(5, _reactor())
    finally:
        closed = proto.whenDisconnected()
        proto.transport.loseConnection()
        await closed.addTimeout(5, _reactor())


class RedisServer:
    """One redis-server process on a fixed loopback port; restartable."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._dir = tempfile.mkdtemp(prefix="sse-redis-")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def spawn(self, *extra: str) -> None:
        assert self.proc is None, "already running"
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", self._dir,
                "--daemonize", "no",
                "--loglevel", "warning",
                *extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def start(self, *extra: str, timeout: float = 10.0) -> None:
        """Spawn and wait until it answers PING."""
        self.spawn(*extra)
        deadline = _reactor().seconds() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server on port {self.port} exited at start")
            try:
                if await redis_command(self.port, "PING") == "PONG":
                    return
            except Exception:
                if _reactor().seconds() > deadline:
                    raise
            await pause(0.02)

    def kill(self) -> None:
        """SIGKILL it (no clean shutdown) and reap it, by its PID."""
        if self.proc is not None:
            if self.proc.poll() is None:
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            self.proc = None

    async def command(self, *args: Any, **kw: Any) -> Any:
        return await redis_command(self.port, *args, **kw)


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


class Node:
    """A started RedisBus and what its on_event received."""

    def __init__(self, bus: RedisBus) -> None:
        self.bus = bus
        self.received: list[Event] = []
        bus.on_event = self.received.append

    async def ready(self, timeout: float = 10.0) -> Node:
        await wait_until(lambda: self.bus.ready, timeout, "the bus to be ready")
        return self

    async def count(self, n: int, timeout: float = 10.0) -> list[Event]:
        await wait_until(lambda: len(self.received) >= n, timeout, f"{n} events")
        return self.received


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

    await gatherResults([n.bus.stop() for n in made]).addTimeout(10, _reactor())


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
