"""The one module that touches Twisted's internals: its probes, and the public fallback."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet import tcp

from sse_twisted import _transport


def test_probe_accepts_this_twisted() -> None:
    """The running Twisted has the fields the write-through path reads."""
    assert _transport.probe_tcp(tcp.Server)
    assert _transport.FAST_TCP


def test_probe_refuses_a_twisted_without_them() -> None:
    """A server class without the buffer fields (a renamed attribute) fails the probe."""

    class Renamed:
        offset = 0
        dataBuffer = b""
        disconnecting = False
        connected = True

        def __init__(self) -> None:
            self.socket = None

    assert not _transport.probe_tcp(Renamed)


def _tcp_server(written: list[bytes]) -> Any:
    """A tcp.Server instance that records writes and must not be sent through."""
    server = tcp.Server.__new__(tcp.Server)
    server.write = written.append  # type: ignore[method-assign]

    class NoSocket:
        def send(self, data: bytes) -> int:
            raise AssertionError("the fallback must not touch the socket")

        def fileno(self) -> int:
            raise AssertionError("the fallback must not touch the socket")

    server.socket = NoSocket()
    return server


def test_fallback_writes_through_twisted(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the probe failed, send is transport.write and pending bytes are unknown."""
    monkeypatch.setattr(_transport, "FAST_TCP", False)
    written: list[bytes] = []
    server = _tcp_server(written)
    _transport.send(server, b"chunk")
    assert written == [b"chunk"]
    assert _transport.pending_bytes(server) is None


def test_chunk_is_what_request_write_sends() -> None:
    """A pre-built chunk is an HTTP/1.1 chunk of the frame."""
    assert _transport.chunk(b"data: x\n\n") == b"9\r\ndata: x\n\n\r\n"
