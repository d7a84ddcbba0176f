"""
Real processes for end-to-end tests: `twistd -n sse` (or an example script)
on a free loopback port, found from its own log line, stopped by PID.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .chunks import chunk_data

ROOT = Path(__file__).resolve().parents[2]
TWISTD = str(Path(sys.executable).with_name("twistd"))
#: Seconds a server may take to start listening before the test fails.
START_TIMEOUT = 60.0
#: The line twistd logs once it listens; group 1 is the port.
LISTENING = re.compile(r"listening on (?:IPv4Address\(.*?port=)?(\d+)")


def rss(pid: int) -> int:
    """The process's resident set size in bytes (VmRSS)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def free_port() -> int:
    """A loopback port that was free a moment ago (bind to 0, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait(
    check: Callable[[], object], what: str, timeout: float = 15.0, interval: float = 0.02
) -> float:
    """
    Poll C{check()} until it is true, at most C{timeout} seconds (a real
    process offers nothing to await); return the seconds it took, or raise
    C{TimeoutError} naming C{what}.
    """
    start = time.monotonic()
    deadline = start + timeout
    while not check():
        if time.monotonic() >= deadline:
            raise TimeoutError(f"not within {timeout}s: {what}")
        time.sleep(interval)
    return time.monotonic() - start


class Process:
    """
    A subprocess whose output a thread collects line by line (so a chatty
    process never blocks on a full pipe), waited on with deadlines.
    """

    def __init__(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        pass_fds: tuple[int, ...] = (),
    ):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            cwd=str(cwd or ROOT),
            env={**os.environ, **(env or {})},
            pass_fds=pass_fds,
        )
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode("utf-8", "replace").rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def read_until(self, pattern: str | re.Pattern[str], timeout: float = 15.0) -> re.Match[str]:
        """Wait for an output line that matches, or fail after `timeout` seconds."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        seen = 0
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    m = regex.search(line)
                    if m:
                        return m
                seen = len(self.lines)
                if self._eof:
                    raise RuntimeError(
                        f"process exited ({self.proc.wait()}); output:\n" + self.output()
                    )
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"no line matching {regex.pattern!r}; output:\n" + self.output()
                    )
                self._changed.wait(left)

    def output(self) -> str:
        return "\n".join(self.lines)

    def drain_output(self) -> str:
        """All output, once the process has ended."""
        self.proc.wait(15)
        self._reader.join(15)
        return self.output()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(5)


class SSEServer(Process):
    """`twistd -n sse` on a free loopback port."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, port: int | None = None):
        where = f"tcp:{port or 0}:interface=127.0.0.1"
        super().__init__(
            [TWISTD, "-n", "--pidfile=", "sse", "--port", where, *args],
            env={"PYTHONUNBUFFERED": "1", **(env or {})},
        )
        try:
            # A bound, not a wait: on a loaded CI machine twistd's imports alone
            # have taken over 15 s.
            self.port = int(self.read_until(LISTENING, timeout=START_TIMEOUT).group(1))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise
        self.host = "127.0.0.1"

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
            hdrs = {"Content-Type": "application/json", **(headers or {})}
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            content = resp.read()
            ctype = resp.getheader("content-type", "")
            value = json.loads(content) if ctype.startswith("application/json") else content
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, value
        finally:
            conn.close()

    def publish(
        self, channel: str, event: str | None = None, data: Any = None, **fields: Any
    ) -> Any:
        body = {"channel": channel, **({"event": event} if event is not None else {}), **fields}
        if "text" not in fields:
            body["data"] = data
        status, _, answer = self.request("POST", "/publish", body)
        assert status == 200, (status, answer)
        return answer


def presence_events(sub: RawSubscriber) -> list[tuple[str, dict[str, Any]]]:
    """The C{sse.join}/C{sse.leave} events C{sub} has received so far: (name, data)."""
    found = []
    for block in sub.body().split(b"\n\n"):
        lines = dict(line.split(b": ", 1) for line in block.split(b"\n") if b": " in line)
        if lines.get(b"event") in (b"sse.join", b"sse.leave"):
            found.append((lines[b"event"].decode(), json.loads(lines[b"data"])))
    return found


class RawSubscriber:
    """A subscriber on a raw socket: exact bytes, with deadlines on every read."""

    def __init__(
        self, server: SSEServer, path: str = "/events", headers: dict[str, str] | None = None
    ):
        self.sock = socket.create_connection((server.host, server.port), timeout=10)
        lines = [
            f"GET {path} HTTP/1.1",
            f"Host: {server.host}:{server.port}",
            "Accept: text/event-stream",
        ]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        self.data = b""

    def read_until(self, needle: bytes, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while needle not in self.data:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{needle!r} not received; got {self.data!r}")
            self.sock.settimeout(left)
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before {needle!r}; got {self.data!r}")
            self.data += chunk
        return self.data

    def read_to_close(self, timeout: float = 10.0) -> bytes:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"still open; got {self.data!r}")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return self.data
            if not chunk:
                return self.data
            self.data += chunk

    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    def body(self) -> bytes:
        """The event-stream bytes, with HTTP/1.1 chunking removed."""
        return chunk_data(self.data.partition(b"\r\n\r\n")[2])

    def close(self) -> None:
        self.sock.close()
