"""
Configuration on real processes (issue 16): `twist sse` in the foreground,
a --config file with the command line overriding it, --check's exit codes,
secrets from files, and socket activation (a listening socket inherited the
way systemd passes it: fd 3, LISTEN_FDS, LISTEN_PID).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import pytest

from ..support.processes import (
    LISTENING,
    TWISTD,
    Process,
    RawSubscriber,
    SSEServer,
    free_port,
)

pytestmark = pytest.mark.e2e

TWIST = str(Path(TWISTD).with_name("twist"))
SECRET = "f1le-s3cret-f1le-s3cret-f1le-s3c"
ENV = {"PYTHONUNBUFFERED": "1"}
TWISTD_SSE = [TWISTD, "-n", "--pidfile=", "sse", "--heartbeat", "0"]
#: The socket unit's one socket, as contrib/systemd/sse-twisted.service names it.
SYSTEMD_PORT = "systemd:domain=INET:index=0"
LOOPBACK = "tcp:0:interface=127.0.0.1"


class Running(SSEServer):
    """A server started with any argv (twist, a wrapper), on a port known or read from its log."""

    def __init__(
        self,
        argv: list[str],
        *,
        port: int | None = None,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        pass_fds: tuple[int, ...] = (),
        ready: str | re.Pattern[str] = LISTENING,
    ):
        Process.__init__(self, argv, env={**ENV, **(env or {})}, cwd=cwd, pass_fds=pass_fds)
        self.host = "127.0.0.1"
        try:
            match = self.read_until(ready)
            self.port = port if port is not None else int(match.group(1))
        except BaseException:
            self.stop(signal.SIGKILL)
            raise


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=60, env={**os.environ, **ENV}
    )


def token(secret: str, **sse: Any) -> str:
    claims = {"sse": sse, "exp": int(time.time()) + 600}
    return jwt.encode(claims, secret, algorithm="HS256")


# --- twist ----------------------------------------------------------------


def test_twist_serves_in_the_foreground_without_a_pidfile(tmp_path: Path) -> None:
    """`twist sse` serves /health and the stream, writes no pidfile, and stops on SIGTERM."""
    server = Running(
        [TWIST, "--log-format=text", "sse", "--port", "tcp:0:interface=127.0.0.1"], cwd=tmp_path
    )
    try:
        status, _, health = server.request("GET", "/health")
        assert status == 200, health
        sub = RawSubscriber(server, "/events?channel=c")
        sub.read_until(b"retry:")
        server.publish("c", "tick", {"n": 1})
        sub.read_until(b'data: {"n":1}')
        sub.close()
        assert list(tmp_path.iterdir()) == []  # no twistd.pid, no twistd.log
    finally:
        server.stop()
    assert "Traceback" not in server.drain_output()


def test_twist_json_logs_and_log_level(tmp_path: Path) -> None:
    """
    `twist --log-format=json --log-level=warn`: every line is a JSON event, no
    info line is written, and the warning for a secret in argv is.
    """
    port = free_port()
    server = Running(
        [
            TWIST,
            "--log-format=json",
            "--log-level=warn",
            "sse",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--publish-token",
            "t0ken",
        ],
        port=port,
        cwd=tmp_path,
        ready="cmdline",
    )
    try:
        deadline = time.monotonic() + 15
        while server.request("GET", "/health")[0] != 200:  # pragma: no cover - a slow start
            assert time.monotonic() < deadline
    finally:
        server.stop()
    events = [json.loads(line) for line in server.drain_output().splitlines() if line]
    levels = {e["log_level"]["name"] for e in events}
    assert levels <= {"warn", "error", "critical"}, levels
    warned = [e["warning"] for e in events if "warning" in e]
    assert len(warned) == 1
    assert warned[0].startswith("--publish-token on the command line can be read")
    assert "t0ken" not in server.output()


# --- --config -------------------------------------------------------------


def test_config_file_with_command_line_override(tmp_path: Path) -> None:
    """
    The --config file's options apply (path, a token read from the file it
    names), and the command line's --port replaces the file's (whose UNIX
    socket is never created).
    """
    (tmp_path / "token").write_text("t0ken\n")
    unused = tmp_path / "unused.sock"
    config = tmp_path / "sse.toml"
    config.write_text(
        f'port = "unix:{unused}"\n'
        'path = "/stream"\n'
        f'publish-token-file = "{tmp_path / "token"}"\n'
        "no-demo = true\n"
    )
    server = Running([*TWISTD_SSE, "--config", str(config), "--port", "tcp:0:interface=127.0.0.1"])
    try:
        assert not unused.exists()
        sub = RawSubscriber(server, "/stream?channel=c")
        sub.read_until(b"retry:")
        body = {"channel": "c", "data": 1}
        assert server.request("POST", "/publish", body)[0] == 401  # loopback is not enough
        auth = {"Authorization": "Bearer t0ken"}
        assert server.request("POST", "/publish", body, headers=auth)[0] == 200
        sub.read_until(b"data: 1")
        sub.close()
        assert server.request("GET", "/")[0] == 404  # no-demo
    finally:
        server.stop()
    assert "Traceback" not in server.drain_output()


def test_check_exit_codes(tmp_path: Path) -> None:
    """
    --check: 0 and one 'ok' line for a good config; 1 (twistd) or 64 (twist,
    EX_USAGE) with the error for a bad one; nothing listens, no pidfile.
    """
    port = free_port()
    good = tmp_path / "good.toml"
    good.write_text(f'port = "tcp:{port}:interface=127.0.0.1"\nheartbeat = 5\n')
    bad = tmp_path / "bad.toml"
    bad.write_text("heartbaet = 5\n")
    done = run([TWISTD, "sse", "--config", str(good), "--check"], tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (
        0,
        f"ok: would listen on tcp:{port}:interface=127.0.0.1\n",
        "",
    )
    done = run([TWISTD, "sse", "--config", str(bad), "--check"], tmp_path)
    assert done.returncode == 1
    assert f"{bad}: unknown key 'heartbaet' (did you mean 'heartbeat'?)" in done.stdout
    done = run([TWIST, "sse", "--config", str(bad), "--check"], tmp_path)
    assert done.returncode == 64
    assert f"Error: {bad}: unknown key 'heartbaet'" in done.stderr
    done = run([TWIST, "sse", "--config", str(good), "--check"], tmp_path)
    assert (done.returncode, done.stdout) == (
        0,
        f"ok: would listen on tcp:{port}:interface=127.0.0.1\n",
    )
    assert list(tmp_path.iterdir()) == [bad, good] or sorted(tmp_path.iterdir()) == sorted(
        [bad, good]
    )
    with socket.socket() as s:  # the port was never taken
        s.bind(("127.0.0.1", port))


# --- secrets from files ---------------------------------------------------


def test_jwt_secret_file(tmp_path: Path) -> None:
    """
    --jwt-secret-file: the file's secret (without its newline) verifies
    tokens; a token signed with the newline kept is refused.
    """
    (tmp_path / "jwt").write_text(SECRET + "\n")
    key = str(tmp_path / "jwt")
    server = Running(
        [*TWISTD_SSE, "--port", LOOPBACK, "--private-channel", "p*", "--jwt-secret-file", key]
    )
    try:
        good = token(SECRET, subscribe=["p*"])
        sub = RawSubscriber(server, f"/events?channel=p1&token={good}")
        assert sub.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 200")
        sub.close()
        wrong = token(SECRET + "\n", subscribe=["p*"])
        sub = RawSubscriber(server, f"/events?channel=p1&token={wrong}")
        assert sub.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 401")
        sub.close()
    finally:
        server.stop()
    output = server.drain_output()
    assert SECRET not in output
    assert "command line can be read" not in output


def test_unreadable_secret_file_stops_at_start(tmp_path: Path) -> None:
    """A missing --publish-token-file ends twistd with status 1 and a line naming it."""
    missing = tmp_path / "missing"
    done = run([TWISTD, "-n", "--pidfile=", "sse", "--publish-token-file", str(missing)], tmp_path)
    assert done.returncode == 1
    assert f"cannot read --publish-token-file {missing}: No such file or directory" in (done.stdout)


# --- systemd socket activation ----------------------------------------------

#: Puts the inherited socket at fd 3 and sets LISTEN_FDS, LISTEN_PID (this
#: very process: exec keeps the pid) and LISTEN_FDNAMES (systemd 227+ always
#: does; Twisted ignores the fds without it), as systemd does before exec.
ACTIVATE = (
    "import os, sys\n"
    "fd = int(sys.argv[1])\n"
    "if fd != 3:\n"
    "    os.dup2(fd, 3)\n"
    "    os.close(fd)\n"
    "os.environ.update(LISTEN_FDS='1', LISTEN_PID=str(os.getpid()))\n"
    "os.environ['LISTEN_FDNAMES'] = 'sse-twisted.socket'\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def activated(listener: socket.socket) -> Running:
    """`twistd sse --port systemd:domain=INET:index=0` on the inherited C{listener}."""
    fd = listener.fileno()
    return Running(
        [sys.executable, "-c", ACTIVATE, str(fd), *TWISTD_SSE, "--port", SYSTEMD_PORT],
        port=listener.getsockname()[1],
        pass_fds=(fd,),
        ready=r"listening on",
    )


def test_systemd_socket_activation_survives_a_restart() -> None:
    """
    Served on a socket inherited as systemd passes it; and, as under
    systemd, the socket outlives the process: a client that connects while
    no server runs waits in the backlog and is served by the next one.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        first = activated(listener)
        try:
            assert first.request("GET", "/health")[0] == 200
            sub = RawSubscriber(first, "/events?channel=c")
            sub.read_until(b"retry:")
            first.publish("c", "tick", {"n": 1})
            sub.read_until(b'data: {"n":1}')
        finally:
            first.stop()
        sub.read_to_close()
        sub.close()
        assert "Traceback" not in first.drain_output()
        # No process now; the socket still listens (systemd holds it).
        waiting = socket.create_connection(listener.getsockname(), timeout=10)
        waiting.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        second = activated(listener)
        try:
            answer = b""
            while b"\r\n\r\n" not in answer:
                chunk = waiting.recv(4096)
                assert chunk, answer
                answer += chunk
            assert answer.startswith(b"HTTP/1.1 200")
        finally:
            waiting.close()
            second.stop()
        assert "Traceback" not in second.drain_output()


CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "systemd"


def unit_lines(name: str) -> list[str]:
    """The unit file's lines, continuation lines joined, comments left out."""
    text = (CONTRIB / name).read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_systemd_units_command_line(tmp_path: Path) -> None:
    """
    contrib/systemd's ExecStart, run as systemd would (its socket at fd 3,
    its credentials in $CREDENTIALS_DIRECTORY, the example sse.toml as
    /etc/sse-twisted/sse.toml): serves, verifies JWTs with the credential's
    secret, requires the credential's publish token, and warns of nothing.
    """
    service = unit_lines("sse-twisted.service")
    (exec_start,) = [line.partition("=")[2] for line in service if line.startswith("ExecStart=")]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    secrets = {"jwt-secret": SECRET, "publish-token": "t0ken-from-credential"}
    for line in service:
        if line.startswith("LoadCredential="):
            name = line.partition("=")[2].partition(":")[0]
            (credentials / name).write_text(secrets.pop(name) + "\n")
    assert secrets == {}, "a secret the unit does not load"
    argv = shlex.split(
        exec_start.replace("${CREDENTIALS_DIRECTORY}", str(credentials)).replace(
            "/etc/sse-twisted/sse.toml", str(CONTRIB / "sse.toml")
        )
    )
    assert argv[0] == "/opt/sse-twisted/bin/twist"
    (listen,) = [line for line in unit_lines("sse-twisted.socket") if line.startswith("Listen")]
    # domain=INET goes with an IPv4 ListenStream (a bare port would be IPv6).
    assert "domain=INET:" in exec_start
    assert re.fullmatch(r"ListenStream=\d+\.\d+\.\d+\.\d+:\d+", listen)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        fd = listener.fileno()
        server = Running(
            [sys.executable, "-c", ACTIVATE, str(fd), TWIST, *argv[1:]],
            port=listener.getsockname()[1],
            pass_fds=(fd,),
            ready="listening on",
        )
        try:
            assert server.request("GET", "/health")[0] == 200
            sub = RawSubscriber(server, "/events?channel=user-1")
            assert sub.read_until(b"\r\n\r\n").startswith(b"HTTP/1.1 401")  # private
            sub.close()
            good = token(SECRET, subscribe=["user-1"])
            sub = RawSubscriber(server, f"/events?channel=user-1&token={good}")
            sub.read_until(b"retry:")
            body = {"channel": "user-1", "data": 7}
            assert server.request("POST", "/publish", body)[0] == 401
            auth = {"Authorization": "Bearer t0ken-from-credential"}
            assert server.request("POST", "/publish", body, headers=auth)[0] == 200
            sub.read_until(b"data: 7")
            sub.close()
        finally:
            server.stop()
    output = server.drain_output()
    assert "Traceback" not in output
    assert "[sse_twisted.tap#warn]" not in output, output
