"""
`twistd sse` that cannot start says so in one line and exits non-zero at
once, with no traceback (issue 9, items 2-4): a port it cannot have, options
that would break every client later, a missing optional dependency. And a
port below 1024 binds before `--uid` drops privileges.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

import twisted
from sse_twisted import __version__

from ..support.processes import LISTENING, TWISTD, Process

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

#: How long a refused start may take (the interpreter and Twisted load first,
#: on a busy CI machine): the process must be gone by then.
DEADLINE = 30.0


class Ended:
    """How a `twistd sse` that should not have started ended."""

    def __init__(self, returncode: int, output: str, seconds: float) -> None:
        self.returncode = returncode
        self.output = output
        self.seconds = seconds
        self.lines = [line for line in output.splitlines() if line.strip()]

    def one_line(self, pattern: str) -> str:
        """The single output line matching `pattern` (failing if none or several do)."""
        found = [line for line in self.lines if re.search(pattern, line)]
        assert len(found) == 1, f"{pattern!r} in {len(found)} lines; output:\n{self.output}"
        return found[0]


def run(
    *args: str, twistd: tuple[str, ...] = ("--pidfile=",), env: dict[str, str] | None = None
) -> Ended:
    """Run `twistd -n <twistd> sse <args>` and wait, with a deadline, for it to end."""
    proc = Process(
        [TWISTD, "-n", *twistd, "sse", *args], env={"PYTHONUNBUFFERED": "1", **(env or {})}
    )
    started = time.monotonic()
    try:
        returncode = proc.proc.wait(DEADLINE)
    except subprocess.TimeoutExpired:
        proc.stop(signal.SIGKILL)
        pytest.fail(f"still running after {DEADLINE} s; output:\n{proc.output()}")
    seconds = time.monotonic() - started
    return Ended(returncode, proc.drain_output(), seconds)


def refused(ended: Ended, pattern: str) -> str:
    """A start refused: exit 1, the one line matching `pattern`, no traceback."""
    assert ended.returncode == 1, ended.output
    assert "Traceback" not in ended.output, ended.output
    return ended.one_line(pattern)


@pytest.fixture
def busy_port() -> Iterator[int]:
    """A loopback port that something else is listening on."""
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


# --- the port cannot be had -------------------------------------------------


def test_port_in_use(busy_port: int) -> None:
    """A port in use: exit 1 at once, one line naming the endpoint and the reason."""
    endpoint = f"tcp:{busy_port}:interface=127.0.0.1"
    ended = run("--port", endpoint)
    line = refused(ended, "Cannot listen")
    assert line.endswith(f"Cannot listen on {endpoint}: [Errno 98] Address already in use")
    assert "sse_twisted listening" not in ended.output


def test_port_in_use_removes_the_pidfile(busy_port: int, tmp_path: Path) -> None:
    """With a real pidfile, a refused start leaves no stale pidfile behind."""
    pidfile = tmp_path / "twistd.pid"
    ended = run("--port", f"tcp:{busy_port}:interface=127.0.0.1", twistd=(f"--pidfile={pidfile}",))
    refused(ended, "Cannot listen")
    assert not pidfile.exists()


def test_port_in_use_daemonised(busy_port: int, tmp_path: Path) -> None:
    """Daemonised (no -n), the parent exits 1 and the log holds the one line."""
    pidfile, logfile = tmp_path / "twistd.pid", tmp_path / "twistd.log"
    argv = [TWISTD, f"--pidfile={pidfile}", f"--logfile={logfile}", "sse"]
    argv += ["--port", f"tcp:{busy_port}:interface=127.0.0.1"]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=DEADLINE)
        assert done.returncode == 1, (done.stdout, done.stderr)
        assert "Cannot listen on" in done.stderr
        log = logfile.read_text()
        assert log.count("Cannot listen on") == 1 and "Traceback" not in log, log
        assert not pidfile.exists()
    finally:  # never leave a daemon behind, should one have started
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


# --- refused at option time -------------------------------------------------


def test_port_out_of_range() -> None:
    """--port 99999: exit 1 with one usage line naming the port and the range."""
    refused(run("--port", "99999"), r"--port 'tcp:99999': port must be 0-65535, got 99999$")


def test_port_not_an_endpoint() -> None:
    """--port abc: exit 1 with one usage line (no traceback)."""
    refused(run("--port", "abc"), r"--port 'abc' is not a usable endpoint: Unknown endpoint type")


def test_usage_error_is_short() -> None:
    """A usage error prints a pointer to --help and the error, not every option."""
    ended = run("--port", "abc")
    assert len(ended.lines) <= 3, ended.output
    assert "--port 'abc'" in ended.lines[-1]


def test_jwt_public_key_not_a_key(tmp_path: Path) -> None:
    """A --jwt-public-key that is not a PEM public key: one usage line, exit 1."""
    path = tmp_path / "key.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\nnot base64\n-----END PUBLIC KEY-----\n")
    refused(run("--jwt-public-key", str(path)), r"--jwt-public-key .* is not a PEM public key")


def test_empty_jwt_secret() -> None:
    """--jwt-secret= (empty) is refused rather than turning JWT off in silence."""
    refused(run("--jwt-secret="), r"--jwt-secret must not be empty")


def test_non_ascii_cors_origin() -> None:
    """A non-ASCII --cors-origin is one usage line giving the punycode form."""
    line = refused(run("--cors-origin", "https://bücher.example"), r"--cors-origin")
    assert "https://xn--bcher-kva.example" in line


def test_redis_without_the_extra(tmp_path: Path) -> None:
    """--redis where hiredis cannot be imported: one line naming the extra to install."""
    # As on an install without the extra: the module is known to be missing.
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['hiredis'] = None\n")
    ended = run("--redis", "redis://127.0.0.1:6379/0", env={"PYTHONPATH": str(tmp_path)})
    refused(ended, re.escape("--redis needs the 'redis' extra: pip install 'sse-twisted[redis]'"))


def test_version() -> None:
    """`twistd sse --version` prints sse_twisted's version and Twisted's, and exits 0."""
    ended = run("--version")
    assert ended.returncode == 0, ended.output
    assert ended.lines == [f"sse_twisted {__version__}", f"Twisted {twisted.__version__}"]


# --- privileges -------------------------------------------------------------


def _free_low_port() -> int:
    """
    A port below 1024 that is free on 127.0.0.1 (the tests run as root),
    tried in random order: suites running side by side (CI's Python matrix)
    would otherwise all pick 1023 at once.
    """
    ports = list(range(1023, 511, -1))
    random.shuffle(ports)
    for port in ports:
        with closing(socket.socket()) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    pytest.skip("no free port below 1024 on 127.0.0.1")


def _uid(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[2])  # the effective uid
    raise AssertionError("no Uid line")


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="binding below 1024 needs root")
NOBODY = ("--pidfile=", "--uid", "65534", "--gid", "65534")


@needs_root
def test_privileged_port_binds_before_uid() -> None:
    """A port below 1024 with --uid: bound before privileges drop, then served as that uid."""
    port = _free_low_port()
    proc = Process(
        [TWISTD, "-n", *NOBODY, "sse", "--port", f"tcp:{port}:interface=127.0.0.1"],
        env={"PYTHONUNBUFFERED": "1"},
    )
    try:
        assert int(proc.read_until(LISTENING, timeout=DEADLINE).group(1)) == port
        proc.read_until(r"set uid/gid 65534/65534", timeout=DEADLINE)
        assert _uid(proc.pid) == 65534
        with closing(socket.create_connection(("127.0.0.1", port), timeout=10)) as sock:
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert sock.recv(64).startswith(b"HTTP/1.1 200")
    finally:
        proc.stop()
    assert "Traceback" not in proc.drain_output()


@needs_root
def test_privileged_port_in_use_with_uid() -> None:
    """A port below 1024 already in use, with --uid: still exit 1 in one line."""
    port = _free_low_port()
    with closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        ended = run("--port", f"tcp:{port}:interface=127.0.0.1", twistd=NOBODY)
    refused(ended, rf"Cannot listen on tcp:{port}:interface=127.0.0.1: .*Address already in use")
