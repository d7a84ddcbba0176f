#!/usr/bin/env python3
"""A node's CPU per event read from Redis, for several builds, interleaved.

Isolates the Redis read path: one `twistd sse --redis` node with one subscriber
(so fan-out is one write), a fresh redis-server, and N entries XADDed into the
stream in one pipelined write (the format the nodes write: channel, data of
~100 B). Measured: the node's CPU (utime+stime, /proc ticks) from the XADDs
until the subscriber has all N events, per event, and the events per second.
Builds run round by round (a, b, a, b, ...), since the machine is shared and
noisy: read the medians and the median of the per-round ratios (to the first
build).

    python3 bench/redis_read.py --twistd before=/work/main/.venv/bin/twistd \
        --twistd after=.venv/bin/twistd [--events 30000] [--rounds 5]

Node and redis-server on CPU 0, this script on CPU 1 (taskset); loopback only;
every process stopped by its PID; only the standard library.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable

from harness.config import LOAD_CPU, REDIS_SERVER, SERVER_CPU
from harness.procfs import proc_cpu_s
from harness.servers import free_port


def _command(*args: bytes) -> bytes:
    return b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args)


def _wait(predicate: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"timed out after {timeout}s waiting for {what}")


def _healthy(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")


def one_run(twistd: str, events: int) -> tuple[float, float]:
    """CPU µs per event and events/s of one fresh node reading `events` entries."""
    redis_port, port = free_port(), free_port()
    folder = tempfile.mkdtemp(prefix="sse-redis-read-")
    pin = ["taskset", "-c", SERVER_CPU]
    redis_cmd = [
        *pin, REDIS_SERVER, "--port", str(redis_port), "--bind", "127.0.0.1",
        "--save", "", "--appendonly", "no", "--dir", folder,
    ]  # fmt: skip
    redis = subprocess.Popen(redis_cmd, stdout=subprocess.DEVNULL)
    node_cmd = [
        *pin, twistd, "-n", "--pidfile=", "sse", "--port", f"tcp:{port}:interface=127.0.0.1",
        "--heartbeat", "0", "--queue-size", str(events),
        "--redis", f"redis://127.0.0.1:{redis_port}/0",
    ]  # fmt: skip
    node = subprocess.Popen(
        node_cmd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait(lambda: _healthy(port), "the node to be ready")
        with (
            socket.create_connection(("127.0.0.1", port), timeout=30) as sub,
            socket.create_connection(("127.0.0.1", redis_port), timeout=30) as r,
        ):
            sub.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)  # subscribed
            entry = _command(b"XADD", b"sse:events", b"*", b"channel", b"c", b"data", b"x" * 100)
            payload = entry * events
            cpu0, t0 = proc_cpu_s(node.pid), time.monotonic()
            r.sendall(payload)
            seen, tail = 0, b""
            while seen < events:
                chunk = sub.recv(1 << 20)
                if not chunk:
                    raise RuntimeError("the stream closed")
                seen += (tail + chunk).count(b"id: ")
                tail = chunk[-3:]
            elapsed, cpu = time.monotonic() - t0, proc_cpu_s(node.pid) - cpu0
        return cpu / events * 1e6, events / elapsed
    finally:
        for proc in (node, redis):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--twistd", action="append", required=True, metavar="NAME=PATH")
    ap.add_argument("--events", type=int, default=30000)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    builds = dict(spec.split("=", 1) for spec in args.twistd)
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in builds}
    for rnd in range(1, args.rounds + 1):
        for name, twistd in builds.items():
            us, rate = one_run(twistd, args.events)
            results[name].append((us, rate))
            print(f"round {rnd} {name}: {us:.1f} µs/event, {rate:,.0f} events/s", flush=True)
    first = next(iter(builds))
    print(f"\n| build | node CPU µs/event | events/s | CPU ×{first} |\n|---|---|---|---|")
    for name, runs in results.items():
        ratios = [a[0] / b[0] for a, b in zip(runs, results[first], strict=True)]
        print(
            f"| {name} | {statistics.median(u for u, _ in runs):.1f}"
            f" [{min(u for u, _ in runs):.1f}–{max(u for u, _ in runs):.1f}]"
            f" | {statistics.median(r for _, r in runs):,.0f} | ×{statistics.median(ratios):.2f} |"
        )


if __name__ == "__main__":
    main()
