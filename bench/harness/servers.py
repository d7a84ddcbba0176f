"""The processes measured: one server under test, a throwaway redis-server, a scale-out cluster.

Each runs on the servers' core (`taskset -c SERVER_CPU`, which execs it: the PID
is the server's), logs to a file, and is stopped by its PID: SIGTERM, SIGKILL
after 2 s (a graceful stop is not under test).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .config import (
    ALL_SERVERS,
    BENCH,
    BUILD,
    DEFAULT_QUEUE,
    GO_BIN,
    REDIS_SERVER,
    REDIS_SETUPS,
    REFERENCE,
    SERVER_CPU,
    TWISTD,
    VPY,
    pinned,
    raise_nofile,
)
from .procfs import Usage


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


#: Other builds of sse_twisted to measure beside this one (--variant NAME=TWISTD):
#: server "sse_twisted@NAME" runs that twistd, e.g. from an older commit's venv.
VARIANTS: dict[str, Path] = {}
#: Extra `twistd sse` arguments of a variant (--variant NAME=TWISTD::ARGS); "{port}"
#: in them becomes the server's port (e.g. a file of its own per run).
VARIANT_ARGS: dict[str, list[str]] = {}


def add_variant(name: str, twistd: Path, extra: list[str] | None = None) -> str:
    """Make server "sse_twisted@NAME" run `twistd` (with `extra` args); return that name."""
    server = f"sse_twisted@{name}"
    VARIANTS[server] = twistd
    VARIANT_ARGS[server] = extra or []
    ALL_SERVERS.append(server)
    # The scale-out scenarios run each variant's build as a setup of its own too.
    REDIS_SETUPS.append(f"redis-2@{name}")
    return server


def server_cmd(name: str, port: int, heartbeat: float, queue: int) -> list[str]:
    py = [str(VPY), str(BENCH / "servers")]
    common = ["--port", str(port), "--queue-size", str(queue), "--ping", str(heartbeat)]
    if name == "sse_twisted" or name in VARIANTS:
        return [
            str(VARIANTS.get(name, TWISTD)),
            "-n",
            "--pidfile=",
            "sse",
            "--port",
            f"tcp:{port}:interface=127.0.0.1",
            "--heartbeat",
            str(int(heartbeat) if float(heartbeat).is_integer() else heartbeat),
            "--queue-size",
            str(queue),
            "--overflow",
            "drop",
            *(arg.replace("{port}", str(port)) for arg in VARIANT_ARGS.get(name, [])),
        ]
    if name == "twisted-floor":
        return [py[0], py[1] + "/twisted_floor.py", *common]
    if name == "starlette-h11":
        return [py[0], py[1] + "/starlette_app.py", *common, "--loop", "asyncio", "--http", "h11"]
    if name == "starlette-uvloop":
        return [
            py[0],
            py[1] + "/starlette_app.py",
            *common,
            "--loop",
            "uvloop",
            "--http",
            "httptools",
        ]
    if name == "aiohttp-sse":
        return [py[0], py[1] + "/aiohttp_app.py", *common]
    if name == "go-gin":
        return [str(GO_BIN), "-addr", f"127.0.0.1:{port}"]
    raise ValueError(f"unknown server {name!r}; choose from {', '.join(ALL_SERVERS)}")


def _ask(port: int, request: bytes, size: int) -> bytes:
    """Send one request to 127.0.0.1:port and return the first bytes of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
        s.sendall(request)
        return s.recv(size)


def stop_process(proc: subprocess.Popen[Any], grace: float) -> None:
    """SIGTERM `proc` (by its PID) if it still runs; SIGKILL it after `grace` s."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


class _Process:
    """A process on the servers' core, logging to `logfile`, started in its own session."""

    def __init__(
        self,
        name: str,
        cmd: list[str],
        logfile: Path,
        *,
        env: dict[str, str] | None = None,
        preexec_fn: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.logfile = logfile
        self.logf = open(logfile, "wb")  # noqa: SIM115 - closed in stop(), outlives this call
        rundir = BUILD / "run"
        rundir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            pinned(SERVER_CPU, cmd),
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=preexec_fn,
            cwd=str(rundir),
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid  # taskset execs the server: same PID

    def _wait(self, probe: Callable[[], bool], failed: Callable[[], str], timeout: float) -> None:
        """Until `probe()` is true (an OSError counts as not yet), bounded by `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            with contextlib.suppress(OSError):
                if probe():
                    return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} {failed()} after {timeout}s: {self.log_tail()}")

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc, 2.0)  # a graceful stop is not under test: 2 s, then SIGKILL
        self.logf.close()


class Server(_Process):
    """One server under test on a free loopback port; it runs from construction."""

    def __init__(
        self,
        name: str,
        logfile: Path,
        heartbeat: float = 0,
        queue: int = DEFAULT_QUEUE,
        extra: list[str] | None = None,
    ) -> None:
        self.port = free_port()
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if name == "go-gin":
            env.pop("GOMAXPROCS", None)  # the Go runtime follows the taskset affinity: 1 P
        cmd = [*server_cmd(name, self.port, heartbeat, queue), *(extra or [])]
        super().__init__(name, cmd, logfile, env=env, preexec_fn=raise_nofile)

    @property
    def ports(self) -> list[int]:
        return [self.port]

    def start(self) -> None:
        """Wait until it listens (the process itself started with the object)."""
        self.wait_ready()

    def usage(self) -> tuple[list[Usage], Usage | None]:
        """As Cluster.usage: this one node, and no Redis."""
        return [Usage(self.pid)], None

    def wait_ready(self, timeout: float = 30.0) -> None:
        def listening() -> bool:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True

        self._wait(listening, lambda: f"not listening on {self.port}", timeout)

    def wait_health(self, timeout: float = 30.0) -> None:
        """Until GET /health answers 200 (with --redis: once Redis is connected)."""
        head = [b""]

        def healthy() -> bool:
            head[0] = _ask(
                self.port,
                b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
                64,
            )
            return head[0].split(b" ", 2)[1:2] == [b"200"]

        self._wait(healthy, lambda: f"/health not 200 ({head[0][:40]!r})", timeout)


class RedisServer(_Process):
    """A throwaway redis-server on a free loopback port, no persistence, on the servers' core."""

    def __init__(self, logfile: Path, *, preexec_fn: Callable[[], None] | None = None) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        rundir = BUILD / "run"
        cmd = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--protected-mode",
            "yes",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(rundir),
        ]
        super().__init__("redis-server", cmd, logfile, preexec_fn=preexec_fn)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until PING answers +PONG."""

        def pong() -> bool:
            return _ask(self.port, b"PING\r\n", 16).startswith(b"+PONG")

        self._wait(pong, lambda: f"not answering PING on {self.port}", timeout)


class Cluster:
    """A scale-out setup: `single` (one sse_twisted, no Redis) or `redis-2` (one redis-server,
    two sse_twisted nodes with --redis). Everything on the servers' core."""

    def __init__(self, setup: str, outdir: Path, tag: str) -> None:
        if setup not in REDIS_SETUPS:
            raise ValueError(f"unknown setup {setup!r}")
        # "redis-2@NAME": the nodes run variant NAME's build (--variant NAME=TWISTD).
        self.server = f"sse_twisted@{setup.partition('@')[2]}" if "@" in setup else REFERENCE
        self.setup, self.outdir, self.tag = setup, outdir, tag
        self.redis: RedisServer | None = None
        self.nodes: list[Server] = []

    def start(self) -> None:
        extra: list[str] = []
        if self.setup.startswith("redis-2"):
            self.redis = RedisServer(self.outdir / f"{self.tag}-redis.log")
            self.redis.wait_ready()
            extra = ["--redis", self.redis.url]
        for node in ("A", "B") if self.redis else ("A",):
            log_name = f"{self.tag}-{node}.log" if self.redis else f"{self.tag}.log"
            self.nodes.append(Server(self.server, self.outdir / log_name, extra=extra))
        for srv in self.nodes:
            srv.wait_health()

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.nodes]

    def usage(self) -> tuple[list[Usage], Usage | None]:
        """Each node's usage, and Redis's (None without Redis)."""
        return [Usage(s.pid) for s in self.nodes], Usage(self.redis.pid) if self.redis else None

    def stop(self) -> None:
        for srv in self.nodes:
            srv.stop()
        if self.redis:
            self.redis.stop()
