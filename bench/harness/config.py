"""Where things are, which core runs what, and the names and sizes of everything measured."""

from __future__ import annotations

import os
import resource
import shutil
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent.parent
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
#: Every server name --servers accepts; --variant adds "sse_twisted@NAME" (servers.add_variant).
ALL_SERVERS = [
    "sse_twisted",
    "twisted-floor",
    "starlette-h11",
    "starlette-uvloop",
    "aiohttp-sse",
    "go-gin",
]
PY_PEERS = ["starlette-h11", "starlette-uvloop", "aiohttp-sse"]
#: storm is left out: 2.5-5 min a round at full size with every server (the asyncio peers take
#: up to 85 s each); `--scenarios burst,subscribe,storm` runs it.
DEFAULT_SCENARIOS = ["idle", "burst", "paced", "slow", "channels", "subscribe"]
# Scale-out: sse_twisted alone vs two sse_twisted nodes sharing one redis-server.
REDIS_SCENARIOS = ["redis-burst", "redis-paced"]  # `--scenarios redis` selects both
REDIS_SETUPS = ["single", "redis-2"]  # what these scenarios compare, instead of the servers
REDIS_REF = "single"
#: subscribe and storm come after burst: the storm's bound uses this run's subscribe time and
#: burst CPU per delivered event (targets.add_storm_bounds).
ALL_SCENARIOS = [
    "idle",
    "burst",
    "paced",
    "slow",
    "capacity",
    "channels",
    "subscribe",
    "storm",
    "patterns",
    *REDIS_SCENARIOS,
]
#: Scenarios only sse_twisted can run (no peer has pattern subscriptions).
SSE_ONLY_SCENARIOS = ["patterns"]
PAD_100B = 64  # pad length that makes an event's JSON data about 100 bytes

# Scenario sizes; a pair is (full run, --quick smoke run), a single value is both.
_SIZES: dict[str, dict[str, Any]] = {
    "idle": {"conns": (5000, 1000)},
    "burst": {"conns": (1000, 200), "events": (200, 50), "pad": PAD_100B},
    "paced": {"conns": (1000, 200), "rate": 50, "seconds": (6, 2), "pad": PAD_100B},
    "slow": {"stalled": 40, "readers": 10, "events": (1000, 200), "pad": 16384, "queue": 64},
    "capacity": {
        "conns": (19900, 2000),
        "procs": (4, 2),
        "events": (20, 5),
        "pad": PAD_100B,
        "heartbeat": (5, 2),
        "hold": (6, 3),
    },
    "channels": {
        "conns": (10000, 2000),
        "channels": (1000, 200),
        "events": (2000, 500),
        "pad": PAD_100B,
        "control": 10,
    },
    "subscribe": {"conns": (5000, 500)},
    # Issue #14: as many pattern subscribers as channels' (each pattern matches one channel).
    "patterns": {
        "conns": (10000, 2000),
        "channels": (1000, 200),
        "events": (2000, 500),
        "pad": PAD_100B,
    },
    # 200 events/s to all 5,000 would be 1 M deliveries/s, 8 s of CPU a second even at
    # sse_twisted's burst cost: no server here carries it. Round robin over 50 channels
    # keeps 200/s through the server (and its history: 1,000 events = 5 s) at 20,000
    # deliveries/s; each stream gets 4 events/s.
    "storm": {
        "conns": (5000, 500),
        "channels": (50, 10),
        "rate": 200,
        "before": (3, 1.5),
        "after": (5, 2.5),
        "pad": PAD_100B,
    },
    "redis-burst": {"conns": (1000, 200), "procs": 2, "events": (200, 50), "pad": PAD_100B},
    "redis-paced": {
        "conns": (1000, 200),
        "procs": 2,
        "rate": 50,
        "seconds": (6, 2),
        "pad": PAD_100B,
    },
}
#: PARAMS["full" | "quick"][scenario] -> that scenario's sizes.
PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    size: {
        sc: {k: v[i] if isinstance(v, tuple) else v for k, v in sizes.items()}
        for sc, sizes in _SIZES.items()
    }
    for i, size in enumerate(("full", "quick"))
}
SSE_HISTORY = 1000  # sse_twisted's default --history, counted in the slow-consumer bound
DEFAULT_QUEUE = 256  # per-subscriber queue for every server that has one (Go's is fixed at 64)


def pinned(cpu: str, cmd: list[str]) -> list[str]:
    """`cmd` run on one core: taskset execs it, so the process keeps the PID Popen gives."""
    return ["taskset", "-c", cpu, *cmd]


def log(msg: str) -> None:
    """Progress on stderr, so that stdout carries only the tables."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def raise_nofile() -> None:
    """preexec_fn: lift the soft open-file limit to the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
