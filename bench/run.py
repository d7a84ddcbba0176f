#!/usr/bin/env python3
"""Side-by-side benchmark of sse_twisted against its peers (see bench/README.md).

One command builds what it needs (the C load generator, the Go/gin server when
Go and gin are installed from Debian, the peers' venv in bench/.venv), then runs
every scenario on every server, interleaved round by round (A B C A B C ...),
prints markdown tables of medians with min-max and the ratio of each peer to
sse_twisted, and writes the raw numbers to bench/results/<timestamp>.json.

Only the standard library is used here, so any Python 3.10+ can run it.
All traffic goes to 127.0.0.0/8; every load process has a count and a hard
wall-clock limit, and every server is killed by its PID when its run ends.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime as _dt
import hashlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
RESULTS = BENCH / "results"
VENV = BENCH / ".venv"
VPY = VENV / "bin" / "python"
MAIN_VENV = ROOT / ".venv"
TWISTD = MAIN_VENV / "bin" / "twistd"
LOADGEN = BUILD / "loadgen"
GO_BIN = BUILD / "sse-gin"
GO_REFERENCE = Path(
    os.environ.get("SSE_GO_REFERENCE", ROOT.parent / "shared" / "reference" / "sse.go")
)
GIN_SRC = Path("/usr/share/gocode/src/github.com/gin-gonic/gin")
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
SERVER_CPU = "0"
LOAD_CPU = "1"
CLK_TCK = os.sysconf("SC_CLK_TCK")
REFERENCE = "sse_twisted"
ALL_SERVERS = [
    "sse_twisted",
    "twisted-floor",
    "starlette-h11",
    "starlette-uvloop",
    "aiohttp-sse",
    "go-gin",
]
PY_PEERS = ["starlette-h11", "starlette-uvloop", "aiohttp-sse"]
DEFAULT_SCENARIOS = ["idle", "burst", "paced", "slow", "channels"]
# Scale-out: sse_twisted alone vs two sse_twisted nodes sharing one redis-server.
REDIS_SCENARIOS = ["redis-burst", "redis-paced"]  # `--scenarios redis` selects both
REDIS_SETUPS = ["single", "redis-2"]  # what these scenarios compare, instead of the servers
REDIS_REF = "single"
ALL_SCENARIOS = ["idle", "burst", "paced", "slow", "capacity", "channels", *REDIS_SCENARIOS]
PAD_100B = 64  # pad length that makes an event's JSON data about 100 bytes

# Scenario sizes: full run, and the --quick smoke run.
PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "full": {
        "idle": {"conns": 5000},
        "burst": {"conns": 1000, "events": 200, "pad": PAD_100B},
        "paced": {"conns": 1000, "rate": 50, "seconds": 6, "pad": PAD_100B},
        "slow": {"stalled": 40, "readers": 10, "events": 1000, "pad": 16384, "queue": 64},
        "capacity": {
            "conns": 19900,
            "procs": 4,
            "events": 20,
            "pad": PAD_100B,
            "heartbeat": 5,
            "hold": 6,
        },
        "channels": {
            "conns": 10000,
            "channels": 1000,
            "events": 2000,
            "pad": PAD_100B,
            "control": 10,
        },
        "redis-burst": {"conns": 1000, "procs": 2, "events": 200, "pad": PAD_100B},
        "redis-paced": {"conns": 1000, "procs": 2, "rate": 50, "seconds": 6, "pad": PAD_100B},
    },
    "quick": {
        "idle": {"conns": 1000},
        "burst": {"conns": 200, "events": 50, "pad": PAD_100B},
        "paced": {"conns": 200, "rate": 50, "seconds": 2, "pad": PAD_100B},
        "slow": {"stalled": 40, "readers": 10, "events": 200, "pad": 16384, "queue": 64},
        "capacity": {
            "conns": 2000,
            "procs": 2,
            "events": 5,
            "pad": PAD_100B,
            "heartbeat": 2,
            "hold": 3,
        },
        "channels": {"conns": 2000, "channels": 200, "events": 500, "pad": PAD_100B, "control": 10},
        "redis-burst": {"conns": 200, "procs": 2, "events": 50, "pad": PAD_100B},
        "redis-paced": {"conns": 200, "procs": 2, "rate": 50, "seconds": 2, "pad": PAD_100B},
    },
}
SSE_HISTORY = 1000  # sse_twisted's default --history, counted in the slow-consumer bound
DEFAULT_QUEUE = 256  # per-subscriber queue for every server that has one (Go's is fixed at 64)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    """preexec_fn: lift the soft open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ----------------------------------------------------------------------------- building


def ensure_loadgen() -> None:
    src = BENCH / "loadgen.c"
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= src.stat().st_mtime:
        return
    BUILD.mkdir(parents=True, exist_ok=True)
    cc = os.environ.get("CC", "gcc")
    log(f"building {LOADGEN.relative_to(ROOT)} with {cc}")
    subprocess.run([cc, "-O2", "-Wall", "-o", str(LOADGEN), str(src)], check=True)


def ensure_venv() -> None:
    req = BENCH / "requirements.txt"
    digest = hashlib.sha256(req.read_bytes()).hexdigest()
    stamp = VENV / ".requirements.sha256"
    if VPY.exists() and stamp.exists() and stamp.read_text().strip() == digest:
        return
    base = MAIN_VENV / "bin" / "python"
    base_py = str(base) if base.exists() else sys.executable
    if not VPY.exists():
        log(f"creating {VENV.relative_to(ROOT)}")
        subprocess.run([base_py, "-m", "venv", str(VENV)], check=True)
    log("installing bench/requirements.txt into bench/.venv")
    subprocess.run([str(VPY), "-m", "pip", "install", "-q", "-r", str(req)], check=True)
    stamp.write_text(digest + "\n")


def ensure_go() -> str | None:
    """Build the Go/gin original offline in GOPATH mode; return a note if skipped."""
    go = shutil.which("go")
    if not go:
        return "go-gin skipped: `go` not installed (Debian: golang-go)"
    if not GIN_SRC.is_dir():
        return "go-gin skipped: gin source missing (Debian: golang-github-gin-gonic-gin-dev)"
    if not GO_REFERENCE.exists():
        return f"go-gin skipped: reference source {GO_REFERENCE} not found"
    main_go = BENCH / "go" / "main.go"
    newest = max(GO_REFERENCE.stat().st_mtime, main_go.stat().st_mtime)
    if GO_BIN.exists() and GO_BIN.stat().st_mtime >= newest:
        return None
    gopath = BUILD / "gopath"
    api = gopath / "src" / "ssebench" / "api"
    cmd = gopath / "src" / "ssebench" / "cmd"
    api.mkdir(parents=True, exist_ok=True)
    cmd.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(GO_REFERENCE, api / "sse.go")
    shutil.copyfile(main_go, cmd / "main.go")
    env = dict(
        os.environ,
        GO111MODULE="off",
        GOPATH=f"{gopath}:/usr/share/gocode",
        GOCACHE=str(BUILD / "gocache"),
        GOFLAGS="",
        GOPROXY="off",
    )
    log("building the Go/gin reference server (GOPATH mode, offline)")
    try:
        subprocess.run(["gofmt", "-w", str(api / "sse.go")], check=True, env=env, timeout=120)
        subprocess.run(
            ["go", "build", "-o", str(GO_BIN), "ssebench/cmd"], check=True, env=env, timeout=600
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        return f"go-gin skipped: build failed ({e})"
    return None


def sse_twisted_available() -> tuple[bool, str]:
    if not TWISTD.exists():
        return False, f"{TWISTD} missing"
    try:
        r = subprocess.run(
            [str(TWISTD), "sse", "--help"], capture_output=True, timeout=60, cwd=str(BUILD)
        )
    except subprocess.TimeoutExpired:
        return False, "`twistd sse --help` timed out"
    if r.returncode != 0:
        return False, "`twistd sse --help` failed: " + r.stderr.decode(errors="replace").strip()[
            -200:
        ]
    return True, ""


def redis_available() -> tuple[bool, str]:
    """The scale-out scenarios need redis-server and sse_twisted's `redis` extra (txredisapi)."""
    if not Path(REDIS_SERVER).exists():
        return False, "`redis-server` not installed (Debian: redis-server)"
    ok, why = sse_twisted_available()
    if not ok:
        return False, why
    py = MAIN_VENV / "bin" / "python"
    try:
        r = subprocess.run([str(py), "-c", "import txredisapi"], capture_output=True, timeout=60)
    except (subprocess.TimeoutExpired, OSError) as e:
        return False, f"cannot check txredisapi: {e}"
    if r.returncode != 0:
        return False, "txredisapi missing in /work/main/.venv (pip install '.[redis]')"
    return True, ""


# ----------------------------------------------------------------------------- /proc


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_ns_precise(pid: int) -> int:
    """On-CPU nanoseconds summed over threads, from /proc/PID/task/*/schedstat (cross-check)."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    return total


def proc_mem_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "VmSize:", "RssAnon:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def children_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Usage:
    """CPU and memory of a server at one instant."""

    def __init__(self, pid: int) -> None:
        self.t = time.monotonic()
        self.cpu = proc_cpu_s(pid)
        self.cpu_ns = proc_cpu_ns_precise(pid)
        self.mem = proc_mem_kib(pid)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop_flag = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, proc_mem_kib(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            time.sleep(self.every)

    def stop(self) -> int:
        self.stop_flag.set()
        self.join(2)
        return self.peak


# ----------------------------------------------------------------------------- servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Other builds of sse_twisted to measure beside this one (--variant NAME=TWISTD):
#: server "sse_twisted@NAME" runs that twistd, e.g. from an older commit's venv.
VARIANTS: dict[str, Path] = {}


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


class Server:
    def __init__(
        self,
        name: str,
        logfile: Path,
        heartbeat: float = 0,
        queue: int = DEFAULT_QUEUE,
        extra: list[str] | None = None,
    ) -> None:
        self.name = name
        self.port = free_port()
        self.logf = open(logfile, "wb")  # noqa: SIM115 - closed in stop(), outlives this call
        cmd = ["taskset", "-c", SERVER_CPU, *server_cmd(name, self.port, heartbeat, queue)]
        cmd += extra or []
        rundir = BUILD / "run"
        rundir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        if name == "go-gin":
            env.pop("GOMAXPROCS", None)  # the Go runtime follows the taskset affinity: 1 P
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=raise_nofile,
            cwd=str(rundir),
            env=env,
            start_new_session=True,
        )
        self.pid = self.proc.pid  # taskset execs the server: same PID
        self.logfile = logfile

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} not listening on {self.port} after {timeout}s: {self.log_tail()}"
        )

    def wait_health(self, timeout: float = 30.0) -> None:
        """Until GET /health answers 200 (with --redis: once Redis is connected)."""
        deadline = time.monotonic() + timeout
        head = b""
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode}: {self.log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(
                        b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                    )
                    head = s.recv(64)
                if head.split(b" ", 2)[1:2] == [b"200"]:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(
            f"{self.name} /health not 200 after {timeout}s ({head[:40]!r}): {self.log_tail()}"
        )

    def log_tail(self) -> str:
        try:
            return self.logfile.read_text(errors="replace")[-800:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:  # a graceful stop is not under test: 2 s, then SIGKILL
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()


class RedisServer:
    """A throwaway redis-server on a free loopback port, no persistence, on the servers' core."""

    def __init__(self, logfile: Path) -> None:
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.logfile = logfile
        self.logf = open(logfile, "wb")  # noqa: SIM115 - closed in stop(), outlives this call
        rundir = BUILD / "run"
        rundir.mkdir(parents=True, exist_ok=True)
        # redis-server runs under `taskset -c SERVER_CPU` with exec: same PID as the Popen
        cmd = [
            "taskset",
            "-c",
            SERVER_CPU,
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
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=str(rundir),
            start_new_session=True,
        )
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until PING answers +PONG."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"redis-server not answering PING on {self.port} after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.logf.close()


class Cluster:
    """A scale-out setup: `single` (one sse_twisted, no Redis) or `redis-2` (one redis-server,
    two sse_twisted nodes with --redis). Everything on the servers' core."""

    def __init__(self, setup: str, outdir: Path, tag: str) -> None:
        if setup not in REDIS_SETUPS:
            raise ValueError(f"unknown setup {setup!r}")
        self.setup, self.outdir, self.tag = setup, outdir, tag
        self.redis: RedisServer | None = None
        self.nodes: list[Server] = []

    def start(self) -> None:
        extra: list[str] = []
        if self.setup == "redis-2":
            self.redis = RedisServer(self.outdir / f"{self.tag}-redis.log")
            self.redis.wait_ready()
            extra = ["--redis", self.redis.url]
        for node in ("A", "B") if self.redis else ("A",):
            log_name = f"{self.tag}-{node}.log" if self.redis else f"{self.tag}.log"
            self.nodes.append(Server(REFERENCE, self.outdir / log_name, extra=extra))
        for srv in self.nodes:
            srv.wait_health()

    @property
    def ports(self) -> list[int]:
        return [s.port for s in self.nodes]

    def usage(self) -> tuple[list[Usage], Usage | None]:
        return [Usage(s.pid) for s in self.nodes], Usage(self.redis.pid) if self.redis else None

    def stop(self) -> None:
        for srv in self.nodes:
            srv.stop()
        if self.redis:
            self.redis.stop()


# ----------------------------------------------------------------------------- load generator


class LoadSub:
    """One `loadgen sub` process and its line protocol (see loadgen.c)."""

    def __init__(
        self,
        port: int,
        conns: int,
        *,
        time_limit: float,
        stalled: int = 0,
        channels: int = 0,
        expect: int = 0,
        src: str | None = None,
        max_pending: int = 48,
    ) -> None:
        args = [
            str(LOADGEN),
            "sub",
            "--port",
            str(port),
            "--conns",
            str(conns),
            "--stalled",
            str(stalled),
            "--channels",
            str(channels),
            "--expect",
            str(expect),
            "--max-pending",
            str(max_pending),
            "--time-limit",
            str(time_limit),
        ]
        if src:
            args += ["--src", src]
        self.proc = subprocess.Popen(
            ["taskset", "-c", LOAD_CPU, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            preexec_fn=raise_nofile,
        )
        self.conns, self.stalled = conns, stalled
        self.flags: dict[str, str] = {}
        self.result: dict[str, Any] | None = None
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.cond:
                if line.startswith("RESULT "):
                    self.result = json.loads(line[7:])
                    self.flags["RESULT"] = "1"
                else:
                    self.flags[line.split(" ", 1)[0]] = line
                self.cond.notify_all()
        with self.cond:
            self.flags["EOF"] = "1"
            self.cond.notify_all()

    def send(self, cmd: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def clear(self, flag: str) -> None:
        with self.cond:
            self.flags.pop(flag, None)

    def wait(self, flag: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while flag not in self.flags and "EOF" not in self.flags:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.flags.get(flag)

    def stat(self) -> dict[str, int]:
        self.clear("STAT")
        self.send("stat")
        line = self.wait("STAT", 5) or ""
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}

    def quit(self, timeout: float = 15) -> dict[str, Any]:
        self.send("quit")
        self.wait("RESULT", timeout)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        return self.result or {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cpu_s(self) -> float:
        try:
            return proc_cpu_s(self.proc.pid)
        except OSError:
            return 0.0


class Subs:
    """Several LoadSub processes treated as one."""

    def __init__(self, subs: list[LoadSub]) -> None:
        self.subs = subs

    def wait_all(self, flag: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(
            s.wait(flag, max(0.0, deadline - time.monotonic())) is not None for s in self.subs
        )

    def send(self, cmd: str) -> None:
        for s in self.subs:
            s.send(cmd)

    def clear(self, flag: str) -> None:
        for s in self.subs:
            s.clear(flag)

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.subs)

    def stat(self) -> dict[str, int]:
        agg: collections.Counter[str] = collections.Counter()
        for s in self.subs:
            agg.update(s.stat())
        return dict(agg)

    def quit(self) -> list[dict[str, Any]]:
        return [s.quit() for s in self.subs]

    def kill(self) -> None:
        for s in self.subs:
            s.kill()

    def wait_delivered(self, timeout: float, stall: float = 5.0) -> bool:
        """Until every process said DONE, or no progress for `stall` s, or `timeout`."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.wait_all("DONE", min(0.5, max(0.0, deadline - time.monotonic()))):
                return True
            ev = self.stat().get("events", 0)
            if ev != last:
                last, last_change = ev, time.monotonic()
            elif time.monotonic() - last_change > stall:
                return False
        return False


def run_pub(
    port: int,
    count: int,
    *,
    rate: float = 0,
    pad: int = PAD_100B,
    channels: int = 0,
    rr: bool = False,
    warm: bool = False,
    conns: int = 1,
    time_limit: float = 60,
    seed: int = 1,
) -> dict[str, Any]:
    args = [
        str(LOADGEN),
        "pub",
        "--port",
        str(port),
        "--count",
        str(count),
        "--rate",
        str(rate),
        "--size",
        str(pad),
        "--conns",
        str(conns),
        "--time-limit",
        str(time_limit),
        "--seed",
        str(seed),
    ]
    if channels:
        args += ["--channels", str(channels)]
    if rr:
        args.append("--rr")
    if warm:
        args.append("--warm")
    r = subprocess.run(
        ["taskset", "-c", LOAD_CPU, *args],
        capture_output=True,
        text=True,
        timeout=time_limit + 15,
        preexec_fn=raise_nofile,
    )
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"publisher gave no result: rc={r.returncode} {r.stderr[-300:]}")


def warm_up(subs: Subs, port: int, channels: int = 0, tries: int = 8) -> bool:
    """Publish unmeasured events until every connected reader has seen one.

    Proves each subscription is live before anything is measured: a server may
    answer the GET before its subscriber is registered.
    """
    for i in range(tries):
        run_pub(
            port, max(1, channels), channels=channels, rr=True, warm=True, time_limit=30, seed=i + 1
        )
        if subs.wait_all("WARM", 1.0 + i):
            return True
    return False


def connect(
    port: int,
    conns: int,
    *,
    procs: int = 1,
    stalled: int = 0,
    channels: int = 0,
    expect: int = 0,
    time_limit: float = 120,
    connect_timeout: float = 60,
    src_base: int = 0,
    ports: list[int] | None = None,
) -> tuple[Subs, float, dict]:
    """Open `conns` streams over `procs` load processes; return when all resolved.

    With `ports`, load process i connects to ports[i % len(ports)] instead of `port`.
    """
    t0 = time.monotonic()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    subs = []
    for i, n in enumerate(per):
        src = f"127.0.0.{src_base + i}" if src_base else None
        subs.append(
            LoadSub(
                ports[i % len(ports)] if ports else port,
                n,
                time_limit=time_limit,
                stalled=stalled if i == 0 else 0,
                channels=channels,
                expect=expect,
                src=src,
            )
        )
    group = Subs(subs)
    ok = group.wait_all("CONNECTED", connect_timeout)
    st = group.stat()
    st["all_resolved"] = int(ok)
    return group, time.monotonic() - t0, st


def prewarm(port: int) -> None:
    """A few streams and one event, then close: imports and caches done before the baseline."""
    subs, _, _ = connect(port, 20, time_limit=30, connect_timeout=15)
    try:
        warm_up(subs, port, tries=3)
    finally:
        subs.quit()
    time.sleep(0.5)


# ----------------------------------------------------------------------------- latency


def merge_hist(results: list[dict[str, Any]]) -> list[tuple[float, int]]:
    c: collections.Counter[float] = collections.Counter()
    for r in results:
        for v, n in r.get("lat_hist_us", []):
            c[v] += n
    return sorted(c.items())


def percentile(hist: list[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in hist)
    if not total:
        return None
    want = q * total
    acc = 0
    for v, n in hist:
        acc += n
        if acc >= want:
            return v
    return hist[-1][0]


def lat_ms(results: list[dict[str, Any]]) -> dict[str, float | None]:
    h = merge_hist(results)
    out = {}
    for name, q in (
        ("p50_ms", 0.5),
        ("p90_ms", 0.9),
        ("p99_ms", 0.99),
        ("p999_ms", 0.999),
        ("max_ms", 1.0),
    ):
        v = percentile(h, q)
        out[name] = None if v is None else v / 1000
    return out


def strip(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.items() if k != "lat_hist_us"} for r in results]


def total(results: list[dict[str, Any]], key: str) -> int:
    return sum(int(r.get(key, 0)) for r in results)


# ----------------------------------------------------------------------------- scenarios


def sc_idle(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    prewarm(srv.port)
    base = Usage(srv.pid)
    subs, dt, _ = connect(srv.port, p["conns"], time_limit=180, connect_timeout=120)
    try:
        warm = warm_up(subs, srv.port)
        time.sleep(1.0)
        after = Usage(srv.pid)
    finally:
        res = subs.quit()
    held = total(res, "open_readers")
    grow = after.mem["VmRSS"] - base.mem["VmRSS"]
    return {
        "kib_per_sub": grow / held if held else None,
        "rss_mib": after.mem["VmRSS"] / 1024,
        "rss_growth_mib": grow / 1024,
        "held": held,
        "failed": total(res, "failed"),
        "connect_s": dt,
        "warm": warm,
        "_raw": {"base": base.mem, "after": after.mem, "subs": strip(res)},
    }


def _delivery(
    srv: Server, p: dict[str, Any], *, rate: float, count: int, timeout: float
) -> dict[str, Any]:
    """Connect, warm, publish `count` events, wait for delivery; shared by burst and paced."""
    subs, dt, _ = connect(
        srv.port, p["conns"], expect=count, time_limit=timeout + 120, connect_timeout=60
    )
    try:
        warm = warm_up(subs, srv.port)
        time.sleep(0.3)
        subs.send("reset")
        subs.clear("DONE")
        u0, l0, c0 = Usage(srv.pid), subs.cpu_s(), children_cpu_s()
        pub = run_pub(srv.port, count, rate=rate, pad=p["pad"], time_limit=timeout)
        complete = subs.wait_delivered(timeout=timeout, stall=5.0)
        u1, l1, c1 = Usage(srv.pid), subs.cpu_s(), children_cpu_s()
    finally:
        res = subs.quit()
    delivered = total(res, "events")
    readers = total(res, "open_readers")
    expected = count * readers
    last = max((r.get("last_ns", 0) for r in res), default=0)
    span_s = (last - pub["first_ns"]) / 1e9 if last and pub.get("first_ns") else None
    cpu = u1.cpu - u0.cpu
    out = {
        "cpu_us_per_event": cpu * 1e6 / delivered if delivered else None,
        "cpu_ns_precise_per_event": (u1.cpu_ns - u0.cpu_ns) / delivered if delivered else None,
        "events_per_s": delivered / span_s if span_s else None,
        "delivered_pct": 100.0 * delivered / expected if expected else 0.0,
        "delivered": delivered,
        "expected": expected,
        "published_ok": pub.get("ok"),
        "complete": complete,
        "readers": readers,
        "connect_s": dt,
        "warm": warm,
        "cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / (u1.t - u0.t),
        "loadgen_cpu_pct": 100 * (l1 - l0) / (u1.t - u0.t),
        "publisher_cpu_pct": 100 * (c1 - c0) / (u1.t - u0.t),
        "rss_mib": u1.mem["VmRSS"] / 1024,
        **lat_ms(res),
        "_raw": {"pub": pub, "subs": strip(res), "u0": u0.__dict__, "u1": u1.__dict__},
    }
    return out


def sc_burst(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    return _delivery(srv, p, rate=0, count=p["events"], timeout=90)


def sc_paced(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    count = int(p["rate"] * p["seconds"])
    return _delivery(srv, p, rate=p["rate"], count=count, timeout=p["seconds"] + 30)


def sc_slow(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    """Two equal phases of large events; a bounded server stops growing after the first.

    Frames shared by reference (Twisted's transport keeps the written bytes
    objects) make even the unbounded floor grow per event rather than per
    stalled client, so the second phase's growth is what tells bounded from
    unbounded: it is ~0 once queues, history and buffers are full.
    """
    prewarm(srv.port)
    base = Usage(srv.pid)
    n = p["stalled"] + p["readers"]
    per_phase = p["events"]
    subs, _, _ = connect(
        srv.port, n, stalled=p["stalled"], expect=2 * per_phase, time_limit=200, connect_timeout=30
    )
    sampler = RssSampler(srv.pid)
    pubs, phase_rss, phase_ok = [], [], []
    try:
        warm = warm_up(subs, srv.port)
        time.sleep(0.3)
        subs.send("reset")
        sampler.start()
        t0 = time.monotonic()
        for phase in (1, 2):
            subs.clear("DONE")
            subs.send(f"total {phase * per_phase * p['readers']}")
            pubs.append(run_pub(srv.port, per_phase, pad=p["pad"], time_limit=90, seed=phase))
            phase_ok.append(subs.wait_delivered(timeout=60, stall=5.0))
            time.sleep(0.5)
            phase_rss.append(proc_mem_kib(srv.pid)["VmRSS"])
        dur = time.monotonic() - t0
        end = Usage(srv.pid)
    finally:
        peak = sampler.stop()
        res = subs.quit()
    peak = max([peak, *phase_rss])
    event_kib = (p["pad"] + 60) / 1024
    bound_mib = p["queue"] * event_kib * p["stalled"] / 1024
    readers_events = total(res, "events")
    return {
        "growth_mib": (peak - base.mem["VmRSS"]) / 1024,
        "phase1_growth_mib": (phase_rss[0] - base.mem["VmRSS"]) / 1024,
        "phase2_growth_mib": (phase_rss[1] - phase_rss[0]) / 1024,
        "queue_bound_mib": bound_mib,
        "event_kib": event_kib,
        "per_phase_events": per_phase,
        "readers_complete": total(res, "readers_complete"),
        "readers": p["readers"],
        "reader_events_pct": 100.0 * readers_events / (p["readers"] * 2 * per_phase),
        "stalled_open": total(res, "open_stalled"),
        "published_ok": sum(x.get("ok", 0) for x in pubs),
        "duration_s": dur,
        "complete": all(phase_ok),
        "warm": warm,
        "_raw": {
            "pubs": pubs,
            "subs": strip(res),
            "base": base.mem,
            "end": end.mem,
            "peak_kib": peak,
            "phase_rss_kib": phase_rss,
        },
    }


def sc_capacity(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    prewarm(srv.port)
    base = Usage(srv.pid)
    subs, dt, _ = connect(
        srv.port,
        p["conns"],
        procs=p["procs"],
        expect=p["events"],
        time_limit=400,
        connect_timeout=240,
        src_base=2,
    )
    try:
        warm = warm_up(subs, srv.port)
        s0 = subs.stat()
        time.sleep(p["hold"])  # at least one heartbeat interval
        s1 = subs.stat()
        held_mem = Usage(srv.pid)
        fds = proc_fds(srv.pid)
        subs.send("reset")
        subs.clear("DONE")
        u0 = Usage(srv.pid)
        pub = run_pub(srv.port, p["events"], pad=p["pad"], time_limit=120)
        complete = subs.wait_delivered(timeout=120, stall=10.0)
        u1 = Usage(srv.pid)
    finally:
        res = subs.quit()
    held = total(res, "open_readers")
    delivered = total(res, "events")
    grow = held_mem.mem["VmRSS"] - base.mem["VmRSS"]
    return {
        "target": p["conns"],
        "held": held,
        "failed": total(res, "failed"),
        "closed": total(res, "closed"),
        "kib_per_sub": grow / held if held else None,
        "rss_mib": held_mem.mem["VmRSS"] / 1024,
        "server_fds": fds,
        "heartbeats_in_hold": s1.get("comments", 0) - s0.get("comments", 0),
        "burst_complete_subs": total(res, "readers_complete"),
        "burst_delivered_pct": 100.0 * delivered / (held * p["events"]) if held else 0.0,
        "cpu_us_per_event": (u1.cpu - u0.cpu) * 1e6 / delivered if delivered else None,
        "connect_s": dt,
        "complete": complete,
        "warm": warm,
        "_raw": {"pub": pub, "subs": strip(res), "base": base.mem, "held": held_mem.mem},
    }


def sc_channels(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    # Control: `control` subscribers on one channel, nobody else connected.
    ctl, _, _ = connect(srv.port, p["control"], channels=1, time_limit=120, connect_timeout=30)
    try:
        warm_up(ctl, srv.port, channels=1)
        ctl.send("reset")
        ctl.clear("DONE")
        ctl.send(f"total {p['events'] * p['control']}")
        c0 = Usage(srv.pid)
        pub_c = run_pub(srv.port, p["events"], pad=p["pad"], channels=1, time_limit=60)
        ctl.wait_delivered(timeout=60, stall=5.0)
        c1 = Usage(srv.pid)
    finally:
        res_c = ctl.quit()
    time.sleep(0.3)
    # Many: `conns` subscribers over `channels` channels; each event to one channel.
    subs, dt, _ = connect(
        srv.port, p["conns"], channels=p["channels"], time_limit=240, connect_timeout=120
    )
    try:
        warm = warm_up(subs, srv.port, channels=p["channels"])
        time.sleep(0.3)
        per_channel = p["conns"] // p["channels"]
        subs.send("reset")
        subs.clear("DONE")
        subs.send(f"total {p['events'] * per_channel}")
        u0 = Usage(srv.pid)
        pub = run_pub(
            srv.port, p["events"], pad=p["pad"], channels=p["channels"], time_limit=60, seed=7
        )
        complete = subs.wait_delivered(timeout=60, stall=5.0)
        u1 = Usage(srv.pid)
    finally:
        res = subs.quit()
    delivered = total(res, "events")
    delivered_c = total(res_c, "events")
    per_pub = (u1.cpu - u0.cpu) * 1e6 / pub["ok"] if pub.get("ok") else None
    per_pub_c = (c1.cpu - c0.cpu) * 1e6 / pub_c["ok"] if pub_c.get("ok") else None
    per_pub_ns = (u1.cpu_ns - u0.cpu_ns) / 1e3 / pub["ok"] if pub.get("ok") else None
    per_pub_c_ns = (c1.cpu_ns - c0.cpu_ns) / 1e3 / pub_c["ok"] if pub_c.get("ok") else None
    last = max((r.get("last_ns", 0) for r in res), default=0)
    span = (last - pub["first_ns"]) / 1e9 if last and pub.get("first_ns") else None
    return {
        "cpu_us_per_publish": per_pub,
        "cpu_us_per_publish_control": per_pub_c,
        "scaling": (per_pub_ns / per_pub_c_ns) if per_pub_ns and per_pub_c_ns else None,
        "cpu_us_per_event": (u1.cpu - u0.cpu) * 1e6 / delivered if delivered else None,
        "events_per_s": delivered / span if span else None,
        "delivered_pct": 100.0 * delivered / (p["events"] * per_channel),
        "control_delivered_pct": 100.0 * delivered_c / (p["events"] * p["control"]),
        "held": total(res, "open_readers"),
        "connect_s": dt,
        "complete": complete,
        "warm": warm,
        "_raw": {
            "pub": pub,
            "pub_control": pub_c,
            "subs": strip(res),
            "control": strip(res_c),
            "cpu_ns": [c0.cpu_ns, c1.cpu_ns, u0.cpu_ns, u1.cpu_ns],
        },
    }


def _cluster_delivery(
    cl: Cluster, p: dict[str, Any], *, rate: float, count: int, timeout: float
) -> dict[str, Any]:
    """Like _delivery, over a Cluster: `procs` load processes split over the nodes (process i
    on node i % nodes), every event published to the first node only. Node CPU is summed over
    the nodes (clock ticks, as everywhere); Redis's CPU is taken from schedstat (ns), since a
    run costs it only a few ticks."""
    ports = cl.ports
    subs, dt, _ = connect(
        ports[0],
        p["conns"],
        procs=p["procs"],
        ports=ports,
        expect=count,
        time_limit=timeout + 120,
        connect_timeout=60,
    )
    try:
        warm = warm_up(subs, ports[0])
        # 1 s idle with every stream open: what the nodes and Redis cost with nothing published
        i0 = cl.usage()
        time.sleep(1.0)
        i1 = cl.usage()
        subs.send("reset")
        subs.clear("DONE")
        u0, l0, c0 = cl.usage(), subs.cpu_s(), children_cpu_s()
        pub = run_pub(ports[0], count, rate=rate, pad=p["pad"], time_limit=timeout)
        complete = subs.wait_delivered(timeout=timeout, stall=5.0)
        u1, l1, c1 = cl.usage(), subs.cpu_s(), children_cpu_s()
    finally:
        res = subs.quit()
    delivered = total(res, "events")
    readers = total(res, "open_readers")
    expected = count * readers
    ok = pub.get("ok") or 0
    last = max((r.get("last_ns", 0) for r in res), default=0)
    span_s = (last - pub["first_ns"]) / 1e9 if last and pub.get("first_ns") else None
    pub_s = (pub["last_resp_ns"] - pub["first_ns"]) / 1e9 if pub.get("last_resp_ns") else None
    wall = u1[0][0].t - u0[0][0].t
    idle_wall = i1[0][0].t - i0[0][0].t
    cpu = sum(b.cpu - a.cpu for a, b in zip(u0[0], u1[0], strict=True))
    cpu_ns = sum(b.cpu_ns - a.cpu_ns for a, b in zip(u0[0], u1[0], strict=True))
    idle_ns = sum(b.cpu_ns - a.cpu_ns for a, b in zip(i0[0], i1[0], strict=True))
    r0, r1, ri0, ri1 = u0[1], u1[1], i0[1], i1[1]
    redis_ns = r1.cpu_ns - r0.cpu_ns if r0 and r1 else None
    redis_idle_ns = ri1.cpu_ns - ri0.cpu_ns if ri0 and ri1 else None
    per_node = [0] * len(ports)
    for i, r in enumerate(res):
        per_node[i % len(ports)] += int(r.get("events", 0))
    return {
        "cpu_us_per_event": cpu * 1e6 / delivered if delivered else None,
        "cpu_ns_precise_per_event": cpu_ns / delivered if delivered else None,
        "cpu_us_per_publish": cpu * 1e6 / ok if ok else None,
        "redis_cpu_us_per_event": redis_ns / 1e3 / delivered
        if redis_ns is not None and delivered
        else None,
        "redis_cpu_us_per_publish": redis_ns / 1e3 / ok if redis_ns is not None and ok else None,
        "total_cpu_us_per_event": (cpu_ns + (redis_ns or 0)) / 1e3 / delivered
        if delivered
        else None,
        "events_per_s": delivered / span_s if span_s else None,
        "publishes_per_s": ok / pub_s if pub_s else None,
        "delivered_pct": 100.0 * delivered / expected if expected else 0.0,
        "delivered": delivered,
        "delivered_per_node": per_node,
        "expected": expected,
        "published_ok": pub.get("ok"),
        "complete": complete,
        "readers": readers,
        "nodes": len(ports),
        "connect_s": dt,
        "warm": warm,
        "cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / wall,
        "redis_cpu_pct": 100 * redis_ns / 1e9 / wall if redis_ns is not None else None,
        "idle_server_cpu_pct": 100 * idle_ns / 1e9 / idle_wall,
        "idle_redis_cpu_pct": 100 * redis_idle_ns / 1e9 / idle_wall
        if redis_idle_ns is not None
        else None,
        "loadgen_cpu_pct": 100 * (l1 - l0) / wall,
        "publisher_cpu_pct": 100 * (c1 - c0) / wall,
        "rss_mib": sum(u.mem["VmRSS"] for u in u1[0]) / 1024,
        "redis_rss_mib": r1.mem["VmRSS"] / 1024 if r1 else None,
        **lat_ms(res),
        "_raw": {
            "pub": pub,
            "subs": strip(res),
            "u0": [u.__dict__ for u in u0[0]],
            "u1": [u.__dict__ for u in u1[0]],
            "redis_u0": r0.__dict__ if r0 else None,
            "redis_u1": r1.__dict__ if r1 else None,
        },
    }


def sc_redis_burst(cl: Cluster, p: dict[str, Any]) -> dict[str, Any]:
    return _cluster_delivery(cl, p, rate=0, count=p["events"], timeout=90)


def sc_redis_paced(cl: Cluster, p: dict[str, Any]) -> dict[str, Any]:
    count = int(p["rate"] * p["seconds"])
    return _cluster_delivery(cl, p, rate=p["rate"], count=count, timeout=p["seconds"] + 30)


SCENARIOS = {
    "idle": sc_idle,
    "burst": sc_burst,
    "paced": sc_paced,
    "slow": sc_slow,
    "capacity": sc_capacity,
    "channels": sc_channels,
    "redis-burst": sc_redis_burst,
    "redis-paced": sc_redis_paced,
}

# Columns shown in the tables: (key, label, format).
COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "idle": [
        ("kib_per_sub", "KiB/subscriber", ".2f"),
        ("rss_mib", "RSS MiB", ".1f"),
        ("held", "held", ".0f"),
        ("connect_s", "connect s", ".2f"),
    ],
    "burst": [
        ("cpu_us_per_event", "CPU µs/event", ".2f"),
        ("events_per_s", "events/s", ",.0f"),
        ("delivered_pct", "delivered %", ".1f"),
        ("p99_ms", "p99 ms", ".1f"),
    ],
    "paced": [
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("max_ms", "max ms", ".1f"),
        ("delivered_pct", "delivered %", ".1f"),
        ("cpu_us_per_event", "CPU µs/event", ".2f"),
    ],
    "slow": [
        ("growth_mib", "peak growth MiB", ".1f"),
        ("phase1_growth_mib", "phase 1 MiB", ".1f"),
        ("phase2_growth_mib", "phase 2 MiB", ".1f"),
        ("readers_complete", "readers complete", ".0f"),
        ("reader_events_pct", "reader events %", ".1f"),
        ("duration_s", "duration s", ".2f"),
    ],
    "capacity": [
        ("held", "held", ".0f"),
        ("kib_per_sub", "KiB/subscriber", ".2f"),
        ("burst_complete_subs", "burst complete subs", ".0f"),
        ("burst_delivered_pct", "burst delivered %", ".1f"),
        ("heartbeats_in_hold", "heartbeats seen", ".0f"),
        ("connect_s", "connect s", ".1f"),
    ],
    "channels": [
        ("cpu_us_per_publish", "CPU µs/publish @N", ".1f"),
        ("cpu_us_per_publish_control", "CPU µs/publish @control", ".1f"),
        ("scaling", "scaling N/control", ".2f"),
        ("cpu_us_per_event", "CPU µs/event", ".2f"),
        ("delivered_pct", "delivered %", ".1f"),
    ],
    "redis-burst": [
        ("events_per_s", "events/s", ",.0f"),
        ("delivered_pct", "delivered %", ".1f"),
        ("p50_ms", "p50 ms", ".1f"),
        ("p99_ms", "p99 ms", ".1f"),
        ("cpu_us_per_event", "nodes CPU µs/event", ".2f"),
        ("redis_cpu_us_per_event", "Redis CPU µs/event", ".3f"),
        ("redis_cpu_us_per_publish", "Redis CPU µs/publish", ".1f"),
        ("publishes_per_s", "publishes/s", ",.0f"),
    ],
    "redis-paced": [
        ("p50_ms", "p50 ms", ".2f"),
        ("p99_ms", "p99 ms", ".2f"),
        ("max_ms", "max ms", ".1f"),
        ("delivered_pct", "delivered %", ".1f"),
        ("cpu_us_per_event", "nodes CPU µs/event", ".2f"),
        ("redis_cpu_us_per_event", "Redis CPU µs/event", ".3f"),
        ("redis_cpu_us_per_publish", "Redis CPU µs/publish", ".1f"),
    ],
}

DESCRIPTIONS = {
    "idle": "idle memory: {conns} subscribers connected and idle; RSS growth over a warmed baseline / subscriber",
    "burst": "burst: {conns} subscribers, {events} events of ~100 B back to back, one POST each",
    "paced": "paced: {conns} subscribers, {rate} events/s for {seconds} s; publish-to-receive latency",
    "slow": "slow consumers: {stalled} stalled + {readers} readers, 2 phases of {events} x ~16 KiB events, "
    "queue {queue}; growth over a warmed baseline",
    "capacity": "capacity: {conns} subscribers over {procs} load processes, heartbeats every {heartbeat} s, "
    "then a burst of {events} events",
    "channels": "channels: {conns} subscribers over {channels} channels, {events} events each to one random "
    "channel; control = {control} subscribers on one channel alone",
    "redis-burst": "scale-out burst: {conns} subscribers over {procs} load processes (redis-2: half on each "
    "node), {events} events of ~100 B back to back, all published to the first node",
    "redis-paced": "scale-out paced: {conns} subscribers over {procs} load processes (redis-2: half on each "
    "node), {rate} events/s for {seconds} s published to the first node; publish-to-receive latency",
}


# ----------------------------------------------------------------------------- reporting


def fmt(v: Any, f: str) -> str:
    if v is None:
        return "–"
    try:
        return format(v, f)
    except (TypeError, ValueError):
        return str(v)


def summarize(
    runs: list[dict[str, Any]], scenario: str, servers: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in servers:
        rs = [r for r in runs if r["scenario"] == scenario and r["server"] == s and "metrics" in r]
        if not rs:
            continue
        out[s] = {"n": len(rs)}
        for key in {k for r in rs for k in r["metrics"] if not k.startswith("_")}:
            vals = [
                r["metrics"][key]
                for r in rs
                if isinstance(r["metrics"].get(key), (int, float))
                and not isinstance(r["metrics"].get(key), bool)
            ]
            if vals:
                out[s][key] = {
                    "median": statistics.median(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
    return out


def render(
    runs: list[dict[str, Any]],
    scenarios: list[str],
    servers: list[str],
    params: dict,
    ref: str,
    notes: list[str],
) -> str:
    lines = []
    for sc in scenarios:
        rows, sc_ref = (REDIS_SETUPS, REDIS_REF) if sc in REDIS_SCENARIOS else (servers, ref)
        summ = summarize(runs, sc, rows)
        if not summ:
            continue
        lines.append(f"### {sc} — {DESCRIPTIONS[sc].format(**params[sc])}")
        lines.append("")
        cols = COLUMNS[sc]
        what = "setup" if sc in REDIS_SCENARIOS else "server"
        lines.append(f"| {what} | n | " + " | ".join(c[1] for c in cols) + " |")
        lines.append("|---|---|" + "---|" * len(cols))
        for s in rows:
            if s not in summ:
                continue
            cells = []
            for key, _, f in cols:
                st = summ[s].get(key)
                if not st:
                    cells.append("–")
                    continue
                cell = f"{fmt(st['median'], f)} [{fmt(st['min'], f)}–{fmt(st['max'], f)}]"
                refst = summ.get(sc_ref, {}).get(key)
                if s != sc_ref and refst and refst["median"]:
                    cell += f" ×{st['median'] / refst['median']:.2f}"
                cells.append(cell)
            errs = sum(1 for r in runs if r["scenario"] == sc and r["server"] == s and "error" in r)
            name = s + (f" ({errs} failed)" if errs else "")
            lines.append(f"| {name} | {summ[s]['n']} | " + " | ".join(cells) + " |")
        lines.append("")
    redis_ratio = (
        f" (scale-out tables: / {REDIS_REF}'s)"
        if any(s in REDIS_SCENARIOS for s in scenarios)
        else ""
    )
    lines.append(
        f"Cells: median [min–max] over rounds; ×r = this server's median / {ref}'s median{redis_ratio}."
    )
    lines.append("")
    scale = scale_out_summary(runs, scenarios)
    if scale:
        lines.append("### scale-out: what Redis adds")
        lines.append("")
        lines.extend(f"- {t}" for t in scale)
        lines.append("")
    targets = check_targets(runs, servers, ref)
    if targets:
        lines.append("### targets")
        lines.append("")
        lines.extend(f"- {t}" for t in targets)
        lines.append("")
    if notes:
        lines.append("### notes")
        lines.append("")
        lines.extend(f"- {n}" for n in notes)
        lines.append("")
    return "\n".join(lines)


def scale_out_summary(runs: list[dict[str, Any]], scenarios: list[str]) -> list[str]:
    """redis-2 against single, from the medians of the scale-out scenarios."""
    one, two = REDIS_SETUPS

    def pair(sc: str, key: str) -> tuple[float | None, float | None]:
        summ = summarize(runs, sc, REDIS_SETUPS)
        return tuple(summ.get(s, {}).get(key, {}).get("median") for s in (one, two))  # type: ignore[return-value]

    out = []
    if "redis-burst" in scenarios:
        e1, e2 = pair("redis-burst", "events_per_s")
        c1, c2 = pair("redis-burst", "cpu_us_per_event")
        n1, n2 = pair("redis-burst", "cpu_us_per_publish")
        rd = pair("redis-burst", "redis_cpu_us_per_event")[1]
        rp = pair("redis-burst", "redis_cpu_us_per_publish")[1]
        if e1 and e2 and c1 is not None and c2 is not None:
            out.append(
                f"burst: {two} delivers {e2:,.0f} events/s vs {e1:,.0f} for {one} (×{e2 / e1:.2f}); "
                f"nodes' CPU per delivered event {c2:.2f} µs vs {c1:.2f} µs ({c2 - c1:+.2f} µs), "
                f"per publish {fmt(n2, '.0f')} µs vs {fmt(n1, '.0f')} µs; Redis adds {fmt(rd, '.3f')} µs "
                f"per delivered event, {fmt(rp, '.1f')} µs per publish"
            )
    if "redis-paced" in scenarios:
        p50 = pair("redis-paced", "p50_ms")
        p99 = pair("redis-paced", "p99_ms")
        c1, c2 = pair("redis-paced", "cpu_us_per_event")
        rp = pair("redis-paced", "redis_cpu_us_per_publish")[1]
        if p50[0] is not None and p50[1] is not None:
            out.append(
                f"paced: publish-to-receive p50 {p50[1]:.2f} ms vs {p50[0]:.2f} ms "
                f"({p50[1] - p50[0]:+.2f} ms), p99 {fmt(p99[1], '.2f')} ms vs {fmt(p99[0], '.2f')} ms; "
                f"nodes' CPU per delivered event {fmt(c2, '.2f')} µs vs {fmt(c1, '.2f')} µs; "
                f"Redis {fmt(rp, '.1f')} µs per publish"
            )
    return out


def check_targets(runs: list[dict[str, Any]], servers: list[str], ref: str) -> list[str]:
    if ref != REFERENCE:
        return []
    out = []

    def med(sc: str, s: str, key: str) -> float | None:
        st = summarize(runs, sc, [s]).get(s, {}).get(key)
        return st["median"] if st else None

    mine = med("burst", ref, "cpu_us_per_event")
    if mine is not None:
        py = [(med("burst", s, "cpu_us_per_event"), s) for s in PY_PEERS if s in servers]
        py = [x for x in py if x[0] is not None]
        if py:
            best, who = min(py)
            verdict = "PASS" if mine <= best / 2 else "FAIL"
            out.append(
                f"{verdict}: burst CPU/event {mine:.2f} µs vs best Python peer ({who}) {best:.2f} µs "
                f"— target ≤ half ({best / 2:.2f})"
            )
        go = med("burst", "go-gin", "cpu_us_per_event")
        if go is not None:
            verdict = "PASS" if mine <= 1.5 * go else "FAIL"
            out.append(
                f"{verdict}: burst CPU/event {mine:.2f} µs vs go-gin {go:.2f} µs — target ≤ 1.5× ({1.5 * go:.2f})"
            )
    kib = med("idle", ref, "kib_per_sub")
    if kib is not None:
        out.append(
            f"{'PASS' if kib <= 8 else 'FAIL'}: idle memory {kib:.2f} KiB/subscriber — target ≤ 8"
        )
    p99, gop99 = med("paced", ref, "p99_ms"), med("paced", "go-gin", "p99_ms")
    if p99 is not None and gop99 is not None:
        out.append(
            f"{'PASS' if p99 <= gop99 else 'FAIL'}: paced p99 {p99:.2f} ms vs go-gin {gop99:.2f} ms — target ≤ Go"
        )
    g, bound = med("slow", ref, "growth_mib"), med("slow", ref, "queue_bound_mib")
    if g is not None and bound is not None:
        g2, rc = med("slow", ref, "phase2_growth_mib"), med("slow", ref, "readers_complete")
        ev = med("slow", ref, "event_kib") or 16.06
        hist = SSE_HISTORY * ev / 1024  # sse_twisted keeps its last events for Last-Event-ID resume
        limit = bound + hist + 16
        # the history may still be filling in phase 2 (it is full after phase 1 at full size)
        per_phase = med("slow", ref, "per_phase_events") or SSE_HISTORY
        hist2 = (min(SSE_HISTORY, 2 * per_phase) - min(SSE_HISTORY, per_phase)) * ev / 1024
        verdict = "PASS" if g <= limit and (g2 or 0) <= 4 + hist2 else "FAIL"
        floor = med("slow", "twisted-floor", "phase2_growth_mib")
        out.append(
            f"{verdict}: slow consumers: peak growth {g:.1f} MiB ≤ queue bound {bound:.1f} + history "
            f"{hist:.1f} + 16 MiB allowance for buffers; 2nd phase growth {g2:.1f} MiB ≤ 4 + {hist2:.1f} of history (floor: "
            f"{fmt(floor, '.1f')}); readers complete {rc:.0f}"
        )
    sc = med("channels", ref, "scaling")
    if sc is not None:
        fl, go = med("channels", "twisted-floor", "scaling"), med("channels", "go-gin", "scaling")
        out.append(
            f"{'PASS' if sc <= 1.5 else 'FAIL'}: channels: CPU per publish with all subscribers / with "
            f"the control alone = {sc:.2f}, target ≤ 1.5 (≈ 1 when cost follows matching subscribers; "
            f"twisted-floor's dict index {fmt(fl, '.2f')}, go-gin's scan of all clients {fmt(go, '.2f')})"
        )
    return out


# ----------------------------------------------------------------------------- profiling


def profile(name: str, p: dict[str, Any], outdir: Path, stamp: str, channels: int = 0) -> str:
    """py-spy record of `name` during a long burst (to one of `channels` channels each, if
    given); returns a top-functions report."""
    pyspy = VENV / "bin" / "py-spy"
    if not pyspy.exists():
        return "py-spy not installed in bench/.venv"
    srv = Server(name, outdir / f"profile-{name}.log", queue=DEFAULT_QUEUE)
    raw = outdir / f"profile-{name}{'-channels' if channels else ''}.txt"
    try:
        srv.wait_ready()
        subs, _, _ = connect(
            srv.port,
            p["conns"],
            expect=0 if channels else p["events"],
            channels=channels,
            time_limit=300,
            connect_timeout=120,
        )
        try:
            warm_up(subs, srv.port, channels=channels)
            subs.send("reset")
            subs.clear("DONE")
            if channels:
                subs.send(f"total {p['events'] * (p['conns'] // channels)}")
            spy = subprocess.Popen(
                [
                    "taskset",
                    "-c",
                    LOAD_CPU,
                    str(pyspy),
                    "record",
                    "--pid",
                    str(srv.pid),
                    "--rate",
                    "250",
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            pub = run_pub(srv.port, p["events"], pad=p["pad"], channels=channels, time_limit=120)
            subs.wait_delivered(timeout=120, stall=5.0)
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        finally:
            res = subs.quit()
    finally:
        srv.stop()
    delivered = total(res, "events")
    return summarize_profile(raw, name, p, delivered, pub, channels)


def summarize_profile(
    raw: Path, name: str, p: dict, delivered: int, pub: dict, channels: int = 0, top: int = 25
) -> str:
    if not raw.exists():
        return f"py-spy wrote nothing for {name}"
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        samples += k
        frames = [_short(f) for f in stack.split(";")]
        if frames:
            self_c[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    idle = sum(
        v for f, v in self_c.items() if "poll (" in f or "epoll" in f.lower() or "select (" in f
    )
    what = f"over {channels} channels, each event to one" if channels else "all on every event"
    out = [
        f"py-spy profile of {name}: {p['events']} events back to back, {p['conns']} subscribers {what}; "
        f"{pub.get('ok')} published, {delivered} delivered; {samples} samples at 250 Hz, {idle} of them "
        "idle in the poller",
        "",
        "top by own time (self):",
        "",
    ]
    for f, v in self_c.most_common(top):
        out.append(f"  {100 * v / samples:5.1f}%  {f}")
    out += ["", "top by inclusive time:", ""]
    for f, v in incl.most_common(top):
        out.append(f"  {100 * v / samples:5.1f}%  {f}")
    return "\n".join(out)


def _short(frame: str) -> str:
    """'write (twisted/web/http.py:1234)' -> 'write (twisted/web/http.py)'; paths shortened."""
    frame = frame.strip()
    if "(" in frame and frame.endswith(")"):
        fn, _, loc = frame[:-1].partition(" (")
        path = loc.rsplit(":", 1)[0]
        for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{fn} ({path})"
    return frame


# ----------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (default 3)")
    ap.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list from {','.join(ALL_SCENARIOS)}, 'redis' (= both redis-*) or 'all' "
        "(default: all but capacity and the redis-* scale-out pair)",
    )
    ap.add_argument(
        "--capacity", action="store_true", help="add the capacity scenario (~19,900 subscribers)"
    )
    ap.add_argument(
        "--capacity-rounds",
        type=int,
        default=0,
        help="rounds of the capacity scenario (default: --rounds)",
    )
    ap.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help="comma list (default: all available)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    ap.add_argument(
        "--profile",
        nargs="?",
        const=REFERENCE,
        default=None,
        metavar="SERVERS",
        help="after the runs, py-spy profile of a long burst on these servers (default sse_twisted)",
    )
    ap.add_argument(
        "--profile-only", action="store_true", help="skip the scenarios, only --profile"
    )
    ap.add_argument(
        "--profile-channels",
        action="store_true",
        help="with --profile: also profile the channels load",
    )
    ap.add_argument(
        "--max-minutes", type=float, default=45, help="start no new run after this (default 45)"
    )
    ap.add_argument("--no-setup", action="store_true", help="do not create/refresh bench/.venv")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=TWISTD",
        help="also run another sse_twisted build as server sse_twisted@NAME (its twistd path); "
        "repeatable: measures an optimisation against the code before it, interleaved",
    )
    args = ap.parse_args()
    for spec in args.variant:
        vname, sep, vpath = spec.partition("=")
        if not sep or not Path(vpath).exists():
            ap.error(f"--variant wants NAME=PATH_TO_TWISTD, got {spec!r}")
        VARIANTS[f"sse_twisted@{vname}"] = Path(vpath)
        ALL_SERVERS.append(f"sse_twisted@{vname}")

    if sys.platform != "linux":
        print("this benchmark reads /proc and uses epoll: Linux only", file=sys.stderr)
        return 2
    raise_nofile()
    with contextlib.suppress(OSError):  # the harness sits with the load, off the server's core
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    size = "quick" if args.quick else "full"
    rounds = 1 if args.quick and args.rounds == 3 else args.rounds
    params = PARAMS[size]
    scenarios = (
        ALL_SCENARIOS if args.scenarios == "all" else [s for s in args.scenarios.split(",") if s]
    )
    # 'redis' is an alias for the scale-out pair; duplicates dropped, order kept
    scenarios = [x for s in scenarios for x in (REDIS_SCENARIOS if s == "redis" else [s])]
    scenarios = list(dict.fromkeys(scenarios))
    if args.capacity and "capacity" not in scenarios:
        scenarios = [s for s in ALL_SCENARIOS if s in scenarios or s == "capacity"]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(ALL_SCENARIOS)}")
    wanted = [s for s in args.servers.split(",") if s] + [
        v for v in VARIANTS if v not in args.servers.split(",")
    ]
    for s in wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; choose from {', '.join(ALL_SERVERS)}")

    notes: list[str] = []
    BUILD.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_loadgen()
    if not args.no_setup:
        ensure_venv()
    servers = list(wanted)
    if "go-gin" in servers:
        note = ensure_go()
        if note:
            notes.append(note)
            servers.remove("go-gin")
    if "sse_twisted" in servers:
        ok, why = sse_twisted_available()
        if not ok:
            notes.append(f"sse_twisted skipped: {why}")
            servers.remove("sse_twisted")
    ref = REFERENCE if REFERENCE in servers else (servers[0] if servers else REFERENCE)
    peers_run = any(s not in REDIS_SCENARIOS for s in scenarios)
    if ref != REFERENCE and peers_run:
        notes.append(f"ratios are against {ref} because sse_twisted did not run")
    if peers_run:
        notes.append(
            "go-gin is the original broker verbatim: fixed 64-event buffer per client that drops when "
            "full, no heartbeat, and it scans every client on each publish"
        )
    notes.append(
        f"servers on CPU {SERVER_CPU}, load generator, publisher and harness on CPU {LOAD_CPU} (taskset); "
        f"per-subscriber queue {DEFAULT_QUEUE} (slow consumers: {params['slow']['queue']}), drop on overflow"
    )
    if any(s in REDIS_SCENARIOS for s in scenarios):
        ok, why = redis_available()
        if ok:
            notes.append(
                f"scale-out (redis-*): `{REDIS_SETUPS[0]}` is one sse_twisted without Redis; `{REDIS_SETUPS[1]}` is "
                "one redis-server (fresh, free loopback port, --save '' --appendonly no) and two sse_twisted "
                f"nodes with --redis, every event published to the first node. Nodes and redis-server all on CPU "
                f"{SERVER_CPU}, the two nodes sharing it, so this shows the cost of the Redis path, not the "
                f"scaling over cores; the load (two loadgen processes, one per node in {REDIS_SETUPS[1]}, both on "
                f"the one node in {REDIS_SETUPS[0]}) and the publisher on CPU {LOAD_CPU}. Nodes' CPU is summed "
                "over both nodes (/proc/PID/stat ticks); Redis CPU from /proc/PID/task/*/schedstat (ns)"
            )
        else:
            notes.append(f"scale-out scenarios skipped: {why}")
            scenarios = [s for s in scenarios if s not in REDIS_SCENARIOS]

    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = RESULTS / stamp
    outdir.mkdir(parents=True, exist_ok=True)
    out_json = RESULTS / f"{stamp}.json"
    meta = {
        "started": stamp,
        "size": size,
        "rounds": rounds,
        "scenarios": scenarios,
        "servers": servers,
        "redis_setups": REDIS_SETUPS if any(s in REDIS_SCENARIOS for s in scenarios) else [],
        "params": {s: params[s] for s in scenarios},
        "reference": ref,
        "server_cpu": SERVER_CPU,
        "load_cpu": LOAD_CPU,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        },
    }
    runs: list[dict[str, Any]] = []

    def save(extra: dict | None = None) -> None:
        doc = {"meta": meta, "notes": notes, "runs": runs, **(extra or {})}
        out_json.write_text(json.dumps(doc, indent=1, default=str))

    t_start = time.monotonic()
    stopped_early = False
    if not args.profile_only:
        for sc in scenarios:
            n_rounds = (
                args.capacity_rounds if sc == "capacity" and args.capacity_rounds > 0 else rounds
            )
            for rnd in range(1, n_rounds + 1):
                for name in REDIS_SETUPS if sc in REDIS_SCENARIOS else servers:
                    if time.monotonic() - t_start > args.max_minutes * 60:
                        stopped_early = True
                        break
                    if sc in REDIS_SCENARIOS:
                        run = _one_setup(sc, rnd, name, params, outdir)
                    else:
                        run = _one(sc, rnd, name, params, outdir)
                    runs.append(run)
                    save()
                if stopped_early:
                    break
            if stopped_early:
                notes.append(f"stopped early: --max-minutes {args.max_minutes} reached")
                break
        meta["elapsed_s"] = time.monotonic() - t_start
        table = render(runs, scenarios, servers, params, ref, notes)
        print(table)
        (outdir / "table.md").write_text(table)
        save({"table_md": table})
        log(
            f"raw results: {out_json.relative_to(ROOT)}  (logs and table in {outdir.relative_to(ROOT)}/)"
        )
    if args.profile:
        reports = []
        for name in args.profile.split(","):
            if name not in servers:
                reports.append(f"{name}: not available, not profiled")
                continue
            if name == "go-gin":
                reports.append("go-gin: py-spy profiles Python only")
                continue
            pp = dict(params["burst"], events=params["burst"]["events"] * 5)
            log(f"profiling {name} during a burst of {pp['events']} events")
            reports.append(profile(name, pp, outdir, stamp))
            if args.profile_channels:
                pc = dict(params["channels"], events=params["channels"]["events"] * 3)
                log(f"profiling {name} during {pc['events']} events over {pc['channels']} channels")
                reports.append(profile(name, pc, outdir, stamp, channels=pc["channels"]))
        text = "\n\n".join(reports)
        print(text)
        (outdir / "profile.md").write_text(text)
        save({"profile": text})
    return 0


def _one(sc: str, rnd: int, name: str, params: dict, outdir: Path) -> dict[str, Any]:
    p = params[sc]
    heartbeat = p.get("heartbeat", 0)
    queue = p.get("queue", DEFAULT_QUEUE)
    log(f"{sc} round {rnd}: {name}")
    run: dict[str, Any] = {"scenario": sc, "round": rnd, "server": name}
    srv = Server(name, outdir / f"{sc}-{rnd}-{name}.log", heartbeat=heartbeat, queue=queue)
    t0 = time.monotonic()
    try:
        srv.wait_ready()
        run["metrics"] = SCENARIOS[sc](srv, p)
        shown = {k: v for k, v in run["metrics"].items() if k in {c[0] for c in COLUMNS[sc]}}
        log(
            "   "
            + ", ".join(
                f"{k}={fmt(v, '.3g') if isinstance(v, float) else v}" for k, v in shown.items()
            )
        )
    except Exception as e:  # a failed run is recorded, the others go on
        run["error"] = f"{type(e).__name__}: {e}"
        log(f"   FAILED: {run['error']}")
    finally:
        srv.stop()
        run["wall_s"] = time.monotonic() - t0
        time.sleep(0.3)
    return run


def _one_setup(sc: str, rnd: int, setup: str, params: dict, outdir: Path) -> dict[str, Any]:
    """One run of a scale-out scenario: start the setup's Redis and nodes, measure, stop."""
    log(f"{sc} round {rnd}: {setup}")
    run: dict[str, Any] = {"scenario": sc, "round": rnd, "server": setup}
    cl = Cluster(setup, outdir, f"{sc}-{rnd}-{setup}")
    t0 = time.monotonic()
    try:
        cl.start()
        run["metrics"] = SCENARIOS[sc](cl, params[sc])
        shown = {k: v for k, v in run["metrics"].items() if k in {c[0] for c in COLUMNS[sc]}}
        log(
            "   "
            + ", ".join(
                f"{k}={fmt(v, '.3g') if isinstance(v, float) else v}" for k, v in shown.items()
            )
        )
    except Exception as e:  # a failed run is recorded, the others go on
        run["error"] = f"{type(e).__name__}: {e}"
        log(f"   FAILED: {run['error']}")
    finally:
        cl.stop()
        run["wall_s"] = time.monotonic() - t0
        time.sleep(0.3)
    return run


if __name__ == "__main__":
    sys.exit(main())
