"""
Real redis-server processes for the Redis tests, and helpers to wait on them
(the fixtures that start and stop them are in tests/redis/conftest.py).

Each server binds 127.0.0.1 on a free port with persistence off and is
stopped by its PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred

from sse_twisted.event import Event
from sse_twisted.redis import RedisBus

from .processes import free_port

REDIS_SERVER = shutil.which("redis-server") or (
    "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
)


def global_reactor() -> Any:
    """The global reactor, imported late (see STYLE.md: never at a conftest's top)."""
    from twisted.internet import reactor

    return reactor


async def pause(seconds: float) -> None:
    from twisted.internet.task import deferLater

    await deferLater(global_reactor(), seconds)


async def wait_until(
    predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"
) -> None:
    """Poll C{predicate} every 20 ms until it holds; fail after C{timeout} s."""
    deadline = global_reactor().seconds() + timeout
    while not predicate():
        if global_reactor().seconds() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await pause(0.02)


async def redis_command(port: int, *args: Any, password: str | None = None, db: int = 0) -> Any:
    """Run one command on a fresh connection (through an endpoint) and close it."""
    from twisted.internet.endpoints import TCP4ClientEndpoint

    from sse_twisted.redis.resp import RespFactory, RespProtocol

    endpoint = TCP4ClientEndpoint(global_reactor(), "127.0.0.1", port, timeout=5)
    proto: RespProtocol = await endpoint.connect(RespFactory()).addTimeout(5, global_reactor())
    try:
        if password is not None:
            await proto.execute("AUTH", password).addTimeout(5, global_reactor())
        if db:
            await proto.execute("SELECT", db).addTimeout(5, global_reactor())
        return await proto.execute(*args).addTimeout(5, global_reactor())
    finally:
        closed: Deferred[None] = Deferred()
        proto.on_lost = lambda _: closed.callback(None)
        assert proto.transport is not None
        proto.transport.loseConnection()
        await closed.addTimeout(5, global_reactor())


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
        deadline = global_reactor().seconds() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"redis-server on port {self.port} exited at start")
            try:
                if await redis_command(self.port, "PING") == "PONG":
                    return
            except Exception:
                if global_reactor().seconds() > deadline:
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


def ping(port: int) -> bool:
    """Whether a Redis server answers PING on C{port} (a blocking socket, 1 s)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False
