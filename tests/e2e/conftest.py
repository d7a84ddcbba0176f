"""Fixtures of the end-to-end suite: real `twistd sse` processes on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from ..support.processes import SSEServer


@pytest.fixture
def server() -> Iterator[SSEServer]:
    srv = SSEServer("--heartbeat", "1")
    yield srv
    srv.stop()


@pytest.fixture
def start() -> Iterator[Callable[..., SSEServer]]:
    """
    Start `twistd sse` processes (no heartbeat); each is stopped at the end
    of the test, and one that logged a traceback fails it.
    """
    started: list[SSEServer] = []

    def run(*args: str) -> SSEServer:
        srv = SSEServer("--heartbeat", "0", *args)
        started.append(srv)
        return srv

    yield run
    for srv in started:
        srv.stop()
        assert "Traceback" not in srv.output(), srv.output()[-3000:]
