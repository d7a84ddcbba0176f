#!/usr/bin/env python3
"""What one redis-server serves on this machine, for docs/scale.md's cost model.

    python3 bench/redis_cost.py [--requests 100000] [--clients 20] [--rounds 3]

Starts a throwaway redis-server (free loopback port, no persistence, on CPU 0,
stopped by its PID and killed with this process), then runs Debian's
`redis-benchmark` (redis-tools, on CPU 1) on the commands of sse_twisted's Redis
path, with an event of the size the bench publishes (~100 B of data):

- XADD with MAXLEN ~ 1000 (a publish), unpipelined and pipelined (-P 16);
- XREAD COUNT n from a full stream (1,000 entries), n = 1, 10, 100, 500: what a
  node's read returns, one entry at a time (a quiet stream) up to the node's
  read_count (a busy one);
- XRANGE id id COUNT 1 (the cursor check each read makes).

For each: the requests per second that redis-benchmark saw (bounded by either side
on a 2-core machine shared with other work), and redis-server's own CPU per request
(on-CPU ns from /proc/PID/task/*/schedstat) and per entry: the figure that carries
to another machine, and the ceiling of one Redis core (1 s / CPU per request).
Median of --rounds. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from harness.config import LOAD_CPU, SERVER_CPU, pinned
from harness.procfs import proc_cpu_ns_precise
from harness.servers import _ask, free_port, stop_process

_LIBC = ctypes.CDLL(None, use_errno=True)
DATA = '{"t":0,"s":0,"p":"' + "x" * 64 + '"}'  # the bench's ~100 B event data


def _die_with_parent() -> None:
    _LIBC.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def bench(port: int, clients: int, requests: int, pipeline: int, cmd: list[str]) -> float:
    """redis-benchmark's requests/s for one command."""
    args = ["redis-benchmark", "-h", "127.0.0.1", "-p", str(port), "-c", str(clients)]
    args += ["-n", str(requests), "-P", str(pipeline), "--csv", *cmd]
    r = subprocess.run(
        pinned(LOAD_CPU, args), capture_output=True, text=True, timeout=300, check=True
    )
    # the last 7 fields are numbers (rps, then latencies); the command before them is
    # not escaped, so a quote or comma in it would shift a split from the left
    last = r.stdout.strip().splitlines()[-1]
    return float(last.split(",")[-7].strip('"'))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--requests", type=int, default=100000)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not shutil.which("redis-benchmark") or not shutil.which("redis-server"):
        print("needs redis-server and redis-benchmark (Debian: redis-server, redis-tools)")
        return 2
    port = free_port()
    rundir = tempfile.mkdtemp(prefix="redis-cost-")
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    cmd += ["--appendonly", "no", "--dir", rundir]
    proc = subprocess.Popen(
        pinned(SERVER_CPU, cmd),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_die_with_parent,
    )
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if _ask(port, b"PING\r\n", 16).startswith(b"+PONG"):
                    break
            time.sleep(0.1)
        xadd = ["XADD", "s", "MAXLEN", "~", "1000", "*", "channel", "ch0", "data", DATA]
        bench(port, 1, 1100, 1, xadd)  # fill: the stream as a node reads it, 1,000+ entries
        first = _ask(port, b"XRANGE s - + COUNT 1\r\n", 256).split(b"\r\n")[3].decode()
        cases: list[tuple[str, list[str], int, int]] = [
            ("XADD MAXLEN ~ 1000 (a publish)", xadd, 1, 1),
            ("XADD, pipelined x16", xadd, 16, 1),
            (
                "XRANGE id id COUNT 1 (the cursor check)",
                ["XRANGE", "s", first, first, "COUNT", "1"],
                1,
                1,
            ),
        ]
        for n in (1, 10, 100, 500):
            cases.append(
                (f"XREAD COUNT {n}", ["XREAD", "COUNT", str(n), "STREAMS", "s", "0"], 1, n)
            )
        rows = []
        for name, c, pipe, entries in cases:
            rps, cpu = [], []
            reqs = args.requests if entries < 100 else max(2000, args.requests // entries * 4)
            for _ in range(args.rounds):
                c0 = proc_cpu_ns_precise(proc.pid)
                rps.append(bench(port, args.clients, reqs, pipe, c))
                cpu.append((proc_cpu_ns_precise(proc.pid) - c0) / reqs / 1e3)
            us = statistics.median(cpu)
            rows.append((name, reqs, statistics.median(rps), us, entries))
            print(f"  {name}: {rows[-1][2]:,.0f}/s, {us:.2f} µs", file=sys.stderr, flush=True)
    finally:
        stop_process(proc, 5.0)
        shutil.rmtree(rundir, ignore_errors=True)
    print(
        f"redis-server {subprocess.run(['redis-server', '--version'], capture_output=True, text=True).stdout.split()[2]}, "
        f"{args.clients} clients, median of {args.rounds} rounds\n"
    )
    print(
        "| command | requests/s seen | Redis CPU µs / request | µs / entry | one Redis core: requests/s | entries/s |"
    )
    print("|---|---|---|---|---|---|")
    for name, _reqs, seen, us, entries in rows:
        print(
            f"| {name} | {seen:,.0f} | {us:.2f} | {us / entries:.3f} | {1e6 / us:,.0f} | "
            f"{1e6 / us * entries:,.0f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
