#!/usr/bin/env python3
"""Sustained publish rate through POST /publish batches, with and without --history-db.

With --history-db every 200 is sent only once its events are committed (fsync'd),
so this measures what group commit buys: K publishers on keep-alive connections
each POST batches of B events back to back for T seconds; the acknowledged events
per second, the commits per second it took (the server's sse_history_commits_total)
and the server's CPU per event. The in-memory history runs in the same invocation,
interleaved round by round (mem, db, mem, db, ...), since the machine is shared
and noisy: read the medians and their ratio, not one run.

    python3 bench/durable.py [--twistd PATH] [--rounds 5] [--seconds 10]
        [--conns 8] [--batch 50] [--subscribers 0]

Server on CPU 0, publishers on CPU 1 (taskset), loopback only, every server
stopped by its PID; only the standard library.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from harness.config import LOAD_CPU, SERVER_CPU, TWISTD, pinned, raise_nofile
from harness.procfs import proc_cpu_s
from harness.servers import free_port, stop_process

PAD = "x" * 100


def start(twistd: str, port: int, extra: list[str], log: Path) -> subprocess.Popen[bytes]:
    argv = [twistd, "-n", "--pidfile=", "sse", "--port", f"tcp:{port}:interface=127.0.0.1"]
    argv += ["--heartbeat", "0", *extra]
    out = open(log, "wb")  # noqa: SIM115 - closed with the process
    proc = subprocess.Popen(
        pinned(SERVER_CPU, argv), stdout=out, stderr=subprocess.STDOUT, preexec_fn=raise_nofile
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return proc
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited: {log.read_text()[-2000:]}") from None
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError("server did not listen within 30 s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    """The server stopped by its PID: 10 s for a graceful stop, then SIGKILL."""
    stop_process(proc, 10.0)


def metric(port: int, name: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
    finally:
        conn.close()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def publisher(port: int, batch: int, until: float, results: Any) -> None:
    """POST batches back to back on one keep-alive connection until `until` (a process)."""
    counts: list[int] = []
    errors: list[str] = []
    _publish(port, batch, until, counts, errors)
    results.put((counts[0], errors))


def _publish(port: int, batch: int, until: float, counts: list[int], errors: list[str]) -> None:
    body = json.dumps([{"channel": "c", "event": "e", "data": PAD}] * batch).encode()
    headers = {"Content-Type": "application/json"}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    done = 0
    try:
        while time.monotonic() < until:
            conn.request("POST", "/publish", body, headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                errors.append(str(resp.status))
                break
            done += batch
    except OSError as e:
        errors.append(repr(e))
    finally:
        conn.close()
        counts.append(done)


def subscribe(port: int, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        socks.append(s)
    return socks


def one_run(args: argparse.Namespace, durable: bool, workdir: Path, tag: str) -> dict[str, Any]:
    port = free_port()
    extra = ["--history-db", str(workdir / f"{tag}.db")] if durable else []
    proc = start(args.twistd, port, extra, workdir / f"{tag}.log")
    socks: list[socket.socket] = []
    try:
        socks = subscribe(port, args.subscribers)  # never read: their queues drop
        c0, e0 = metric(port, "sse_history_commits_total"), proc_cpu_s(proc.pid)
        until = time.monotonic() + args.seconds
        # Processes, not threads: with threads the publishers' GIL hand-offs (5 ms
        # switch interval) would bound the rate, not the server.
        results: Any = multiprocessing.Queue()
        procs = [
            multiprocessing.Process(target=publisher, args=(port, args.batch, until, results))
            for _ in range(args.conns)
        ]
        started = time.monotonic()
        for p in procs:
            p.start()
        done = [results.get(timeout=args.seconds + 60) for _ in procs]
        elapsed = time.monotonic() - started
        for p in procs:
            p.join(10)
        counts = [n for n, _ in done]
        errors = [e for _, errs in done for e in errs]
        cpu = proc_cpu_s(proc.pid) - e0
        commits = metric(port, "sse_history_commits_total") - c0
        events = sum(counts)
        return {
            "events_per_s": events / elapsed,
            "commits_per_s": commits / elapsed,
            "events_per_commit": events / commits if commits else 0.0,
            "cpu_us_per_event": cpu * 1e6 / events if events else 0.0,
            "errors": errors[:5],
        }
    finally:
        for s in socks:
            s.close()
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--twistd", default=str(TWISTD), help="the twistd to run (default: main's)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--conns", type=int, default=8, help="concurrent publishers")
    ap.add_argument("--batch", type=int, default=50, help="events per POST")
    ap.add_argument("--subscribers", type=int, default=0)
    args = ap.parse_args()
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    results: dict[str, list[dict[str, Any]]] = {"memory": [], "history-db": []}
    with tempfile.TemporaryDirectory(prefix="sse-durable-bench-") as tmp:
        for r in range(args.rounds):
            for name in results:
                res = one_run(args, name == "history-db", Path(tmp), f"{name}-{r}")
                results[name].append(res)
                print(f"round {r + 1} {name}: {json.dumps(res)}", file=sys.stderr, flush=True)
    print(
        f"\nPOST /publish batches: {args.conns} publishers x {args.batch} events/POST, "
        f"{args.seconds:g} s, {args.subscribers} subscribers; median [min-max] of "
        f"{args.rounds} interleaved rounds\n"
    )
    keys = ["events_per_s", "commits_per_s", "events_per_commit", "cpu_us_per_event"]
    print("| history | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, runs in results.items():
        cells = []
        for k in keys:
            vals = [run[k] for run in runs]
            cells.append(f"{statistics.median(vals):,.1f} [{min(vals):,.1f}-{max(vals):,.1f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    ratio = statistics.median(r["events_per_s"] for r in results["history-db"]) / statistics.median(
        r["events_per_s"] for r in results["memory"]
    )
    print(f"\nevents/s with --history-db / in memory: x{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
