"""The one publish-and-deliver measurement, behind burst, paced, redis-burst and redis-paced.

On a single server (burst, paced) and on a scale-out setup (redis-*: one node
without Redis, or two nodes and a redis-server) the steps are the same: connect,
warm, reset the counters, publish `count` events to the first node, wait until
every stream got them, and read the CPU of every process measured before and
after. The scale-out runs also measure one idle second with every stream open
and report what Redis adds; burst and paced keep the keys they always had.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from .load import connect, run_pub, warm_up
from .metrics import lat_ms, per, span_s, strip, total
from .procfs import Usage, children_cpu_s
from .servers import Cluster, Server

#: Keys only the scale-out scenarios report (burst and paced never had them in their JSON).
SCALE_OUT_KEYS = frozenset(
    {
        "cpu_us_per_publish",
        "redis_cpu_us_per_event",
        "redis_cpu_us_per_publish",
        "total_cpu_us_per_event",
        "publishes_per_s",
        "delivered_per_node",
        "nodes",
        "redis_cpu_pct",
        "idle_server_cpu_pct",
        "idle_redis_cpu_pct",
        "redis_rss_mib",
    }
)

Sample = tuple[list[Usage], Usage | None]  # each node's usage, and Redis's (None: no Redis)


def _spent(a: Sample, b: Sample) -> tuple[float, int, int | None]:
    """CPU between two samples: the nodes' in s (ticks) and ns (schedstat), Redis's in ns."""
    cpu = sum(y.cpu - x.cpu for x, y in zip(a[0], b[0], strict=True))
    cpu_ns = sum(y.cpu_ns - x.cpu_ns for x, y in zip(a[0], b[0], strict=True))
    ra, rb = a[1], b[1]
    return cpu, cpu_ns, rb.cpu_ns - ra.cpu_ns if ra and rb else None


@dataclass
class Measured:
    """What one delivery run observed; `figures` makes the scenario's metrics of it."""

    count: int  # events published
    nodes: int
    results: list[dict[str, Any]]  # the load processes' RESULTs, process i on node i % nodes
    pub: dict[str, Any]  # the publisher's RESULT
    connect_s: float
    warm: bool
    complete: bool
    before: Sample
    after: Sample
    load_cpu_s: float
    publisher_cpu_s: float
    idle: tuple[Sample, Sample] | None  # one idle second with every stream open (redis-*)


def measure(
    target: Server | Cluster, p: dict[str, Any], *, rate: float, count: int, timeout: float
) -> Measured:
    """Publish `count` events at `rate` (0: back to back) and wait for their delivery.

    `p["procs"]` load processes (default 1) share `p["conns"]` streams, process i
    on node i % nodes; every event goes to the first node.
    """
    ports = target.ports
    subs, dt, _ = connect(
        ports[0],
        p["conns"],
        procs=p.get("procs", 1),
        ports=ports,
        expect=count,
        time_limit=timeout + 120,
        connect_timeout=60,
    )
    idle: tuple[Sample, Sample] | None = None
    try:
        warm = warm_up(subs, ports[0])
        if isinstance(target, Cluster):
            # 1 s idle with every stream open: what the nodes and Redis cost with nothing published
            i0 = target.usage()
            time.sleep(1.0)
            idle = i0, target.usage()
        else:
            time.sleep(0.3)
        subs.reset()
        u0, l0, c0 = target.usage(), subs.cpu_s(), children_cpu_s()
        pub = run_pub(ports[0], count, rate=rate, pad=p["pad"], time_limit=timeout)
        complete = subs.wait_delivered(timeout=timeout, stall=5.0)
        u1, l1, c1 = target.usage(), subs.cpu_s(), children_cpu_s()
    finally:
        res = subs.quit()
    return Measured(count, len(ports), res, pub, dt, warm, complete, u0, u1, l1 - l0, c1 - c0, idle)


def figures(m: Measured, scale_out: bool) -> dict[str, Any]:
    """The metrics of a delivery run; the SCALE_OUT_KEYS only with `scale_out`.

    Node CPU is summed over the nodes (clock ticks, as everywhere); Redis's CPU
    is taken from schedstat (ns), since a run costs it only a few ticks.
    """
    res, pub = m.results, m.pub
    delivered = total(res, "events")
    readers = total(res, "open_readers")
    expected = m.count * readers
    ok = pub.get("ok") or 0
    span = span_s(res, pub)
    pub_s = (pub["last_resp_ns"] - pub["first_ns"]) / 1e9 if pub.get("last_resp_ns") else None
    wall = m.after[0][0].t - m.before[0][0].t
    cpu, cpu_ns, redis_ns = _spent(m.before, m.after)
    redis_us = None if redis_ns is None else redis_ns / 1e3
    idle_pct: list[float | None] = [None, None]  # nodes', Redis's
    if m.idle:
        _, idle_ns, redis_idle_ns = _spent(*m.idle)
        idle_wall = m.idle[1][0][0].t - m.idle[0][0][0].t
        idle_pct[0] = 100 * idle_ns / 1e9 / idle_wall
        if redis_idle_ns is not None:
            idle_pct[1] = 100 * redis_idle_ns / 1e9 / idle_wall
    per_node = [0] * m.nodes
    for i, r in enumerate(res):
        per_node[i % m.nodes] += int(r.get("events", 0))
    r0, r1 = m.before[1], m.after[1]
    out = {
        "cpu_us_per_event": per(cpu * 1e6, delivered),
        "cpu_ns_precise_per_event": per(cpu_ns, delivered),
        "cpu_us_per_publish": per(cpu * 1e6, ok),
        "redis_cpu_us_per_event": per(redis_us, delivered),
        "redis_cpu_us_per_publish": per(redis_us, ok),
        "total_cpu_us_per_event": per((cpu_ns + (redis_ns or 0)) / 1e3, delivered),
        "events_per_s": per(delivered, span or 0),
        "publishes_per_s": per(ok, pub_s or 0),
        "delivered_pct": 100.0 * delivered / expected if expected else 0.0,
        "delivered": delivered,
        "delivered_per_node": per_node,
        "expected": expected,
        "published_ok": pub.get("ok"),
        "complete": m.complete,
        "readers": readers,
        "nodes": m.nodes,
        "connect_s": m.connect_s,
        "warm": m.warm,
        "cpu_s": cpu,
        "server_cpu_pct": 100 * cpu / wall,
        "redis_cpu_pct": 100 * redis_ns / 1e9 / wall if redis_ns is not None else None,
        "idle_server_cpu_pct": idle_pct[0],
        "idle_redis_cpu_pct": idle_pct[1],
        "loadgen_cpu_pct": 100 * m.load_cpu_s / wall,
        "publisher_cpu_pct": 100 * m.publisher_cpu_s / wall,
        "rss_mib": sum(u.mem["VmRSS"] for u in m.after[0]) / 1024,
        "redis_rss_mib": r1.mem["VmRSS"] / 1024 if r1 else None,
        **lat_ms(res),
    }
    if not scale_out:
        out = {k: v for k, v in out.items() if k not in SCALE_OUT_KEYS}
        u0, u1 = m.before[0][0].__dict__, m.after[0][0].__dict__
        return {**out, "_raw": {"pub": pub, "subs": strip(res), "u0": u0, "u1": u1}}
    out["_raw"] = {
        "pub": pub,
        "subs": strip(res),
        "u0": [u.__dict__ for u in m.before[0]],
        "u1": [u.__dict__ for u in m.after[0]],
        "redis_u0": r0.__dict__ if r0 else None,
        "redis_u1": r1.__dict__ if r1 else None,
    }
    return out


def delivery(
    target: Server | Cluster, p: dict[str, Any], *, rate: float, count: int, timeout: float
) -> dict[str, Any]:
    """The one delivery measurement, on a server or a scale-out setup alike."""
    m = measure(target, p, rate=rate, count=count, timeout=timeout)
    return figures(m, scale_out=isinstance(target, Cluster))


def sc_burst(target: Server | Cluster, p: dict[str, Any]) -> dict[str, Any]:
    """burst and redis-burst: `events` events back to back."""
    return delivery(target, p, rate=0, count=p["events"], timeout=90)


def sc_paced(target: Server | Cluster, p: dict[str, Any]) -> dict[str, Any]:
    """paced and redis-paced: `rate` events/s for `seconds` s."""
    count = int(p["rate"] * p["seconds"])
    return delivery(target, p, rate=p["rate"], count=count, timeout=p["seconds"] + 30)
