#!/usr/bin/env python3
"""Server CPU per delivered event when events come in batches: one POST of B events
against B POSTs of one, to N reading subscribers, for one or more builds of twistd
interleaved round by round (the machine is shared: read medians and ratios).

A batch published in one reactor turn goes out as one write per subscriber
(`sse_twisted.outbox.held`); a lone event's first 64 connections are written at once,
the rest a slice per reactor turn. This measures what batching buys.

    python3 bench/batch.py [--twistd NAME=PATH ...] [--rounds 3] [--subscribers 1000]
        [--events 400] [--batches 1,20]

Server on CPU 0; subscribers (a reader process) and the publisher on CPU 1; loopback
only; every process stopped by its PID; only the standard library.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from durable import start, stop
from harness.config import LOAD_CPU, TWISTD, raise_nofile
from harness.procfs import proc_cpu_s
from harness.servers import free_port

MARK = b"event: e\n"


def reader(port: int, n: int, ready: Any, expected: Any, done: Any, quit_: Any) -> None:
    """Open `n` streams, read them all; set `done` once each has `expected.value` events."""
    import os
    import selectors

    raise_nofile()
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    sel = selectors.DefaultSelector()
    counts: dict[socket.socket, int] = {}
    tails: dict[socket.socket, bytes] = {}
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(b"GET /events?channel=c HTTP/1.1\r\nHost: x\r\n\r\n")
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        counts[s] = 0
        tails[s] = b""
    ready.set()
    deadline = time.monotonic() + 600
    while not quit_.is_set() and time.monotonic() < deadline:
        for key, _ in sel.select(0.1):
            s = key.fileobj  # type: ignore[assignment]
            assert isinstance(s, socket.socket)
            try:
                data = s.recv(1 << 16)
            except BlockingIOError:
                continue
            if not data:
                sel.unregister(s)
                continue
            buf = tails[s] + data
            counts[s] += buf.count(MARK)
            tails[s] = buf[-(len(MARK) - 1) :]
        want = expected.value
        if want and not done.is_set() and all(c >= want for c in counts.values()):
            done.set()
    for s in counts:
        s.close()


def publish(port: int, events: int, batch: int) -> None:
    item = {"channel": "c", "event": "e", "data": "x" * 100}
    body = json.dumps([item] * batch if batch > 1 else item).encode()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        for _ in range(events // batch):
            conn.request("POST", "/publish", body, {"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"publish answered {resp.status}")
    finally:
        conn.close()


def one_run(twistd: str, args: argparse.Namespace, batch: int, work: Path, tag: str) -> float:
    port = free_port()
    proc = start(twistd, port, [], work / f"{tag}.log")
    ready, done, quit_ = multiprocessing.Event(), multiprocessing.Event(), multiprocessing.Event()
    expected = multiprocessing.Value("i", 0)
    r = multiprocessing.Process(
        target=reader, args=(port, args.subscribers, ready, expected, done, quit_)
    )
    r.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("subscribers did not connect")
        time.sleep(1.0)  # every stream subscribed and idle
        total = args.events // batch * batch
        expected.value = total
        cpu0 = proc_cpu_s(proc.pid)
        publish(port, args.events, batch)
        if not done.wait(120):
            raise RuntimeError("not every event reached every subscriber")
        cpu = proc_cpu_s(proc.pid) - cpu0
        return float(cpu * 1e6 / (total * int(args.subscribers)))
    finally:
        quit_.set()
        r.join(30)
        if r.is_alive():
            r.kill()
        stop(proc)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--twistd", action="append", default=[], metavar="NAME=PATH")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--events", type=int, default=400)
    ap.add_argument("--batches", default="1,20")
    args = ap.parse_args()
    builds = dict(spec.split("=", 1) for spec in args.twistd) or {"main": str(TWISTD)}
    batches = [int(b) for b in args.batches.split(",")]
    results: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for rnd in range(args.rounds):
            for batch in batches:
                for name, path in builds.items():
                    us = one_run(path, args, batch, work, f"{name}-{batch}-{rnd}")
                    results.setdefault((name, batch), []).append(us)
                    print(f"round {rnd + 1}: {name} batch {batch}: {us:.2f} µs", file=sys.stderr)
    first = next(iter(builds))
    print(
        f"| build | events per POST | CPU µs per delivered event (median [min-max]) | × {first} |"
    )
    print("| --- | --- | --- | --- |")
    for batch in batches:
        base = statistics.median(results[(first, batch)])
        for name in builds:
            xs = results[(name, batch)]
            med = statistics.median(xs)
            print(
                f"| {name} | {batch} | {med:.2f} [{min(xs):.2f}-{max(xs):.2f}] | ×{med / base:.2f} |"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
