"""
The listen backlog of `twistd sse` on a real socket: sized for reconnection
storms by default (Twisted's own default is 50), and the endpoint's own
`backlog=` when it gives one.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from collections.abc import Callable, Iterator

import pytest

from ..support.processes import SSEServer

pytestmark = pytest.mark.e2e

#: Connections opened while the server cannot accept: more than Twisted's 50.
BURST = 300


def handshakes_completed(server: SSEServer, count: int, within: float) -> int:
    """
    With the server stopped (SIGSTOP: it accepts nothing), open C{count}
    connections at once and count those whose handshake the kernel completed
    within C{within} seconds: at most the listen backlog (plus one).
    """
    socks: list[socket.socket] = []
    os.kill(server.pid, signal.SIGSTOP)
    try:
        for _ in range(count):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex((server.host, server.port))
            socks.append(s)
        pending = {s.fileno(): s for s in socks}
        done = 0
        deadline = time.monotonic() + within
        while pending and time.monotonic() < deadline:
            _, writable, _ = select.select([], list(pending), [], 0.05)
            for fd in writable:
                s = pending.pop(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    done += 1
        return done
    finally:
        os.kill(server.pid, signal.SIGCONT)
        for s in socks:
            s.close()


@pytest.fixture
def start() -> Iterator[Callable[..., SSEServer]]:
    started: list[SSEServer] = []

    def run(*args: str) -> SSEServer:
        server = SSEServer("--heartbeat", "0", *args)  # a later --port wins
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop()


@pytest.mark.timeout(60)
def test_default_backlog_takes_a_storm(start: Callable[..., SSEServer]) -> None:
    """
    A burst of 300 connections to a server that cannot accept for the moment
    all complete their handshake: none waits a second for a SYN retry.
    """
    server = start()
    assert handshakes_completed(server, BURST, within=0.5) == BURST
    assert server.request("GET", "/health")[0] == 200


@pytest.mark.timeout(60)
def test_endpoint_backlog_is_honoured(start: Callable[..., SSEServer]) -> None:
    """An endpoint's own backlog= is used as given (here smaller than the burst)."""
    server = start("--port", "tcp:0:interface=127.0.0.1:backlog=20")
    assert handshakes_completed(server, BURST, within=0.5) <= 21
