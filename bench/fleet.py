#!/usr/bin/env python3
"""K sse_twisted nodes sharing one redis-server, ~19,500 subscribers each (issue #15).

    python3 bench/fleet.py --nodes 13 --per-node 19500 --max-minutes 20   # 253,500 streams
    python3 bench/fleet.py --nodes 3 --per-node 5000                       # a small run

Starts one redis-server (free loopback port, no persistence), K `twistd sse --redis`
nodes, and one `loadgen sub` a node from its own source address (127.0.0.2, .3, ...),
then reports per node and in total: subscribers held, RSS per subscriber, time to
connect everyone, a burst published on the first node reaching every subscriber
(delivered %, p50/p99 publish-to-receive), heartbeats seen, Redis's CPU and memory, and
each node's CPU per event read from Redis. The preflight refuses a plan that the
machine's fds, ephemeral ports or memory cannot hold, with the arithmetic.

Nodes and redis-server on CPU 0, the load on CPU 1 (as every bench scenario); every
wait bounded; the whole run bounded by --max-minutes (a watchdog kills everything by
PID); the nodes and redis-server die with this process (PR_SET_PDEATHSIG), the load
processes at EOF of their stdin. Standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
import time
from typing import Any

from harness.build import ensure_loadgen, sse_twisted_available
from harness.config import RESULTS, log
from harness.fleet import Fleet, preflight, run_fleet


def _f(v: Any, fmt: str = "{:.1f}") -> str:
    return "–" if v is None else fmt.format(v)


def render(r: dict[str, Any]) -> str:
    """The run's table and summary in markdown."""
    head = (
        "| node | held | failed | RSS MiB | KiB/sub | connect s | burst delivered % | "
        "complete subs | p50 ms | p99 ms | heartbeats/sub | read µs/event |"
    )
    lines = [head, "|" + "---|" * 12]
    for p in r["per_node"]:
        lines.append(
            f"| {p['node']} | {p['held']:,} | {p['failed']} | {_f(p['rss_mib'])} | "
            f"{_f(p['kib_per_sub'], '{:.2f}')} | {_f(p['connect_s'])} | "
            f"{_f(p['delivered_pct'], '{:.2f}')} | {p['complete_subs']:,} | {_f(p['p50_ms'])} | "
            f"{_f(p['p99_ms'])} | {_f(p['heartbeats_per_sub'], '{:.2f}')} | "
            f"{_f(p['read_cpu_us_per_event'], '{:.0f}')} |"
        )
    lines.append(
        f"| **all {r['nodes']}** | **{r['held']:,}** of {r['target']:,} | {r['failed']} | "
        f"{_f(r['nodes_rss_mib'], '{:.0f}')} | {_f(r['kib_per_sub'], '{:.2f}')} | "
        f"{_f(r['connect_s'])} | {_f(r['delivered_pct'], '{:.2f}')} | {r['complete_subs']:,} | "
        f"{_f(r['p50_ms'])} | {_f(r['p99_ms'])} | "
        f"{_f(r['heartbeats'] / r['held'] if r['held'] else None, '{:.2f}')} | "
        f"{_f(r['read_cpu_us_per_event_mean'], '{:.0f}')} (mean) |"
    )
    s = r["steps"]
    lines += [
        "",
        f"- burst: {r['burst_events']} events of ~100 B to node 0, {r['published_ok']} "
        f"published; {r['delivered']:,} deliveries in {_f(s.get('burst_s'))} s "
        f"(complete: {r['complete']}); nodes' CPU {_f(r['burst_nodes_cpu_ms'], '{:.0f}')} ms "
        f"({_f(r['burst_nodes_cpu_us_per_delivery'], '{:.1f}')} µs per delivery), "
        f"Redis's {_f(r['burst_redis_cpu_ms'], '{:.1f}')} ms; p99.9 {_f(r['p999_ms'])} ms, "
        f"max {_f(r['max_ms'])} ms",
        f"- heartbeats every {r['heartbeat_s']} s, hold {r['hold_s']} s: {r['heartbeats']:,} "
        f"comments received; nodes' --redis-timeout {r.get('redis_timeout_s')} s",
        f"- steps: nodes up {_f(s.get('start_s'))} s, connect (wall) "
        f"{_f(s.get('connect_wall_s'))} s, warm {_f(s.get('warm_s'))} s",
        f"- Redis: {r['redis_clients']} clients, used_memory {_f(r['redis_used_memory_mib'])} "
        f"MiB (rss {_f(r['redis_rss_mib'])} MiB), idle CPU {_f(r['redis_idle_cpu_pct'], '{:.2f}')} %, "
        f"{_f(r['redis_cpu_us_per_publish_read'], '{:.0f}')} µs per event with {r['nodes']} "
        f"readers; CPU over the run {_f(r['redis_cpu_total_s'], '{:.2f}')} s",
        f"- Redis read path: {r['read_events']} events at {r['read_rate']:.0f}/s "
        f"({_f(r.get('read_published_per_s'), '{:.0f}')}/s achieved) to a channel "
        f"nobody reads; each node's CPU in that window less its idle CPU (heartbeats) = "
        f"{_f(r['read_cpu_us_per_event_mean'], '{:.0f}')} µs per event read (mean of nodes)",
        f"- machine, per stream: {_f(r['parts_kib_per_stream'], '{:.1f}')} KiB from the parts "
        f"(nodes' growth, load generators, kernel slab growth, TCP buffers); MemAvailable "
        f"dropped {_f(r['mem_available_drop_mib'], '{:.0f}')} MiB with everyone connected = "
        f"{_f(r['machine_kib_per_stream'], '{:.1f}')} KiB per stream (it moves with the rest of "
        f"the machine) (nodes {_f(r['nodes_rss_mib'], '{:.0f}')} MiB, load generators "
        f"{_f(r['load_rss_mib'], '{:.0f}')} MiB, kernel slab +{_f(r['slab_mib'], '{:.0f}')} MiB, "
        f"TCP buffers +{_f(r['tcp_mem_mib_held'], '{:.0f}')} MiB held, "
        f"+{_f(r['tcp_mem_mib_max'], '{:.0f}')} MiB at most); lowest MemAvailable "
        f"{r['mem_available_min_mib']:,} MiB",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--per-node", type=int, default=5000)
    ap.add_argument("--heartbeat", type=float, default=10.0, help="nodes' --heartbeat (s)")
    ap.add_argument(
        "--hold", type=float, default=None, help="s held before the burst (default: heartbeat + 2)"
    )
    ap.add_argument(
        "--redis-timeout",
        type=float,
        default=5.0,
        help="nodes' --redis-timeout (s; their default, 5): a reactor turn longer than "
        "it (a burst to 19,500 streams on a shared core) no longer loses Redis (1c825d2)",
    )
    ap.add_argument("--events", type=int, default=5, help="events in the burst")
    ap.add_argument(
        "--read-events",
        type=int,
        default=500,
        help="events of the Redis read phase (to a channel nobody reads)",
    )
    ap.add_argument("--read-rate", type=float, default=50.0, help="their rate (0: back to back)")
    ap.add_argument(
        "--read-conns", type=int, default=1, help="publisher connections of the read phase"
    )
    ap.add_argument(
        "--max-pending", type=int, default=256, help="connects in flight per load process"
    )
    ap.add_argument("--connect-timeout", type=float, default=600.0)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="the whole run's bound")
    ap.add_argument(
        "--est-kib",
        type=float,
        default=24.0,
        help="memory a stream costs, all included, for the preflight (KiB)",
    )
    ap.add_argument("--preflight-only", action="store_true")
    args = ap.parse_args()

    problems, plan = preflight(args.nodes, args.per_node, args.est_kib)
    log(
        f"plan: {args.nodes} nodes x {args.per_node} = {plan['streams']:,} streams; "
        f"fd hard limit {plan['fd_hard_limit']}, {plan['ephemeral_ports']} ephemeral ports, "
        f"MemAvailable {plan['mem_available_mib']:,} MiB, estimated need "
        f"{plan['est_need_mib']:,.0f} MiB"
    )
    for p in problems:
        log(f"cannot: {p}")
    if problems or args.preflight_only:
        return 2 if problems else 0
    ensure_loadgen()
    ok, why = sse_twisted_available()
    if not ok:
        log(f"sse_twisted unavailable: {why}")
        return 2

    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = RESULTS / f"fleet-{stamp}"
    outdir.mkdir(parents=True, exist_ok=True)
    fleet = Fleet(outdir)
    deadline = time.monotonic() + args.max_minutes * 60

    def watchdog() -> None:
        log(f"--max-minutes {args.max_minutes} passed: killing {fleet.pids()} and exiting")
        for pid in fleet.pids():
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        os._exit(3)

    dog = threading.Timer(args.max_minutes * 60 + 30, watchdog)
    dog.daemon = True
    dog.start()

    def on_term(signum: int, _frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    doc: dict[str, Any] = {"argv": sys.argv, "plan": plan, "args": vars(args)}
    rc = 0
    try:
        r = run_fleet(
            fleet,
            nodes=args.nodes,
            per_node=args.per_node,
            heartbeat=args.heartbeat,
            redis_timeout=args.redis_timeout,
            hold=args.hold if args.hold is not None else args.heartbeat + 2,
            events=args.events,
            read_events=args.read_events,
            read_rate=args.read_rate,
            read_conns=args.read_conns,
            max_pending=args.max_pending,
            connect_timeout=args.connect_timeout,
            deadline=deadline,
        )
        doc["result"] = r
        table = render(r)
        (outdir / "table.md").write_text(table)
        print(table)
        if r["held"] < r["target"] or not r["complete"]:
            rc = 1
    except (Exception, KeyboardInterrupt, SystemExit) as e:
        doc["error"] = repr(e)
        log(f"run failed: {e!r}")
        for n in fleet.nodes:
            if n.proc.poll() is not None:
                log(f"{n.name} exited {n.proc.returncode}: {n.log_tail()[-300:]}")
        rc = 1
    finally:
        fleet.stop()
        dog.cancel()
        path = RESULTS / f"fleet-{stamp}.json"
        path.write_text(json.dumps(doc, indent=1, default=str))
        log(f"wrote {path}")
    return rc


if __name__ == "__main__":
    sys.exit(main())
