"""
A loopback TCP forwarder for interop tests, in plain threads.

It sits between a browser and a real `twistd sse`, so a test can

- cut every open connection on demand (a network failure the server did not
  choose), and hold new ones until released, so that what is published
  meanwhile is certainly missed by the browser;
- serve a few static files itself, on the same origin as the forwarded
  stream (EventSource and htmx need same-origin without CORS).

Static answers close their connection, so a browser never sends a forwarded
request over a static connection; forwarded connections carry bytes both
ways untouched, keep-alive included.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Mapping

_HEAD_TIMEOUT = 10.0
_HOLD_TIMEOUT = 60.0


class Proxy:
    """Forward 127.0.0.1:<port> to 127.0.0.1:<upstream_port>."""

    def __init__(self, upstream_port: int, static: Mapping[str, tuple[bytes, str]] | None = None):
        self.upstream_port = upstream_port
        self.static = dict(static or {})
        #: The first request head of every forwarded connection, in order.
        self.heads: list[bytes] = []
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="interop-proxy", daemon=True)
        self._thread.start()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # -- control -------------------------------------------------------------

    def cut(self, *, hold: bool = True) -> int:
        """
        Reset every open connection (RST, as a dropped network would); with
        C{hold}, park new connections until L{release}. Returns how many
        sockets were cut.
        """
        if hold:
            self._open.clear()
        with self._lock:
            victims = list(self._sockets)
            self._sockets.clear()
        for sock in victims:
            _reset(sock)
        return len(victims)

    def release(self) -> None:
        """Let held and new connections through to the upstream server."""
        self._open.set()

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            # shutdown() wakes the thread blocked in accept(); close() alone does not.
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self.cut(hold=False)
        self._open.set()
        self._thread.join(5)

    # -- workers -------------------------------------------------------------

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            self._track(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            head = _read_head(client)
            if head is None:
                return _reset(client)
            path = head.split(b" ", 2)[1].decode("latin-1") if head.count(b" ") >= 2 else ""
            if path in self.static:
                body, ctype = self.static[path]
                client.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                    b"Cache-Control: no-store\r\nConnection: close\r\n\r\n%s"
                    % (ctype.encode(), len(body), body)
                )
                client.shutdown(socket.SHUT_WR)
                return
            if not self._open.wait(_HOLD_TIMEOUT) or self._closed:
                return _reset(client)
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=10)
        except OSError:
            return _reset(client)
        # Connected: relay without timeouts (a quiet stream is not an error);
        # cut() and close() wake both relays by resetting their sockets.
        upstream.settimeout(None)
        client.settimeout(None)
        self._track(upstream)
        with self._lock:
            self.heads.append(head)
        try:
            upstream.sendall(head)
        except OSError:
            _reset(client)
            _reset(upstream)
            return
        threading.Thread(target=_relay, args=(upstream, client), daemon=True).start()
        _relay(client, upstream)


def _read_head(sock: socket.socket) -> bytes | None:
    """Read up to the end of the first request head (and whatever came with it)."""
    sock.settimeout(_HEAD_TIMEOUT)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


def _relay(src: socket.socket, dst: socket.socket) -> None:
    try:
        while chunk := src.recv(65536):
            dst.sendall(chunk)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        # A cut or a reset on either side ends both directions.
        _reset(src)
        _reset(dst)


def _reset(sock: socket.socket) -> None:
    """Abort C{sock} with an RST and wake any thread blocked reading it."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)
    sock.close()
