"""The scenarios: each takes a running server (a Cluster for redis-*) and its sizes, and
returns its metrics; keys starting with "_" are raw data kept only in the JSON.

burst, paced and the redis-* pair are the one delivery measurement (delivery.py);
subscribe and storm, the connection storms, are in storms.py; idle, slow, capacity
and channels are here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .delivery import sc_burst, sc_paced
from .load import Subs, connect, prewarm, run_pub, warm_up
from .metrics import per, span_s, strip, total
from .procfs import RssSampler, Usage, proc_fds, proc_mem_kib
from .servers import Server
from .storms import sc_storm, sc_subscribe


def _publish_measured(
    srv: Server,
    subs: Subs,
    p: dict[str, Any],
    *,
    timeout: float,
    stall: float = 5.0,
    total: int | None = None,
    channels: int = 0,
    seed: int = 1,
    suffix: str = "",
) -> tuple[Usage, dict[str, Any], bool, Usage]:
    """Reset the counters, publish `p["events"]` events and wait for their delivery, both
    bounded by `timeout`; return the server's usage before, the publisher's result,
    whether every stream got its events, and the usage after."""
    subs.reset(total)
    u0 = Usage(srv.pid)
    pub = run_pub(
        srv.port,
        p["events"],
        pad=p["pad"],
        channels=channels,
        time_limit=timeout,
        seed=seed,
        suffix=suffix,
    )
    complete = subs.wait_delivered(timeout=timeout, stall=stall)
    return u0, pub, complete, Usage(srv.pid)


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
        "kib_per_sub": per(grow, held),
        "rss_mib": after.mem["VmRSS"] / 1024,
        "rss_growth_mib": grow / 1024,
        "held": held,
        "failed": total(res, "failed"),
        "connect_s": dt,
        "warm": warm,
        "_raw": {"base": base.mem, "after": after.mem, "subs": strip(res)},
    }


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
        u0, pub, complete, u1 = _publish_measured(srv, subs, p, timeout=120, stall=10.0)
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
        "kib_per_sub": per(grow, held),
        "rss_mib": held_mem.mem["VmRSS"] / 1024,
        "server_fds": fds,
        "heartbeats_in_hold": s1.get("comments", 0) - s0.get("comments", 0),
        "burst_complete_subs": total(res, "readers_complete"),
        "burst_delivered_pct": 100.0 * delivered / (held * p["events"]) if held else 0.0,
        "cpu_us_per_event": per((u1.cpu - u0.cpu) * 1e6, delivered),
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
        c0, pub_c, _, c1 = _publish_measured(
            srv, ctl, p, timeout=60, total=p["events"] * p["control"], channels=1
        )
    finally:
        res_c = ctl.quit()
    time.sleep(0.3)
    # Many: `conns` subscribers over `channels` channels; each event to one channel.
    many = _fan_out(srv, p, param="channel", suffix="", pub_suffix="")
    delivered_c = total(res_c, "events")
    u0_ns, u1_ns = many["_raw"]["cpu_ns"]
    per_pub_ns = per((u1_ns - u0_ns) / 1e3, many["_raw"]["pub"].get("ok") or 0)
    per_pub_c_ns = per((c1.cpu_ns - c0.cpu_ns) / 1e3, pub_c.get("ok") or 0)
    return {
        "cpu_us_per_publish": many["cpu_us_per_publish"],
        "cpu_us_per_publish_control": per((c1.cpu - c0.cpu) * 1e6, pub_c.get("ok") or 0),
        "scaling": (per_pub_ns / per_pub_c_ns) if per_pub_ns and per_pub_c_ns else None,
        "cpu_us_per_event": many["cpu_us_per_event"],
        "events_per_s": many["events_per_s"],
        "delivered_pct": many["delivered_pct"],
        "control_delivered_pct": 100.0 * delivered_c / (p["events"] * p["control"]),
        "held": many["held"],
        "connect_s": many["connect_s"],
        "complete": many["complete"],
        "warm": many["warm"],
        "_raw": {
            "pub": many["_raw"]["pub"],
            "pub_control": pub_c,
            "subs": many["_raw"]["subs"],
            "control": strip(res_c),
            "cpu_ns": [c0.cpu_ns, c1.cpu_ns, u0_ns, u1_ns],
        },
    }


def _fan_out(
    srv: Server, p: dict[str, Any], *, param: str, suffix: str, pub_suffix: str
) -> dict[str, Any]:
    """`conns` subscribers, each on one of `channels` channels (`?param=ch<k><suffix>`),
    `events` events each to one random channel (`ch<k><pub_suffix>`): CPU per delivered
    event."""
    subs, dt, _ = connect(
        srv.port,
        p["conns"],
        channels=p["channels"],
        time_limit=240,
        connect_timeout=120,
        param=param,
        suffix=suffix,
    )
    try:
        warm = warm_up(subs, srv.port, channels=p["channels"], suffix=pub_suffix)
        time.sleep(0.3)
        per_channel = p["conns"] // p["channels"]
        u0, pub, complete, u1 = _publish_measured(
            srv,
            subs,
            p,
            timeout=60,
            total=p["events"] * per_channel,
            channels=p["channels"],
            seed=7,
            suffix=pub_suffix,
        )
    finally:
        res = subs.quit()
    delivered = total(res, "events")
    return {
        "cpu_us_per_event": per((u1.cpu - u0.cpu) * 1e6, delivered),
        "cpu_us_per_publish": per((u1.cpu - u0.cpu) * 1e6, pub.get("ok") or 0),
        "events_per_s": per(delivered, span_s(res, pub) or 0),
        "delivered_pct": 100.0 * delivered / (p["events"] * per_channel),
        "held": total(res, "open_readers"),
        "connect_s": dt,
        "complete": complete,
        "warm": warm,
        "_raw": {"pub": pub, "subs": strip(res), "cpu_ns": [u0.cpu_ns, u1.cpu_ns]},
    }


def sc_patterns(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    """Issue #14: `conns` subscribers on `channels` distinct patterns (`?pattern=ch<k>/*`,
    each matching one published channel `ch<k>/x`) against as many on plain channels
    (`?channel=ch<k>/x`), on the same server one after the other: CPU per delivered
    event of each, and their ratio (target: within 1.5x). The warm-up reaches every
    channel first, so the channel -> patterns cache is as in steady state."""
    plain = _fan_out(srv, p, param="channel", suffix="/x", pub_suffix="/x")
    time.sleep(0.3)
    globbed = _fan_out(srv, p, param="pattern", suffix="/*", pub_suffix="/x")
    a, b = plain["cpu_us_per_event"], globbed["cpu_us_per_event"]
    return {
        "cpu_us_per_event_channels": a,
        "cpu_us_per_event": b,
        "ratio": (b / a) if a and b else None,
        "cpu_us_per_publish_channels": plain["cpu_us_per_publish"],
        "cpu_us_per_publish": globbed["cpu_us_per_publish"],
        "delivered_pct_channels": plain["delivered_pct"],
        "delivered_pct": globbed["delivered_pct"],
        "held": globbed["held"],
        "connect_s": globbed["connect_s"],
        "complete": plain["complete"] and globbed["complete"],
        "warm": plain["warm"] and globbed["warm"],
        "_raw": {"channels": plain, "patterns": globbed},
    }


#: Scenario name -> measurement; the redis-* pair gets a Cluster, the others a Server.
SCENARIOS: dict[str, Callable[[Any, dict[str, Any]], dict[str, Any]]] = {
    "idle": sc_idle,
    "burst": sc_burst,
    "paced": sc_paced,
    "slow": sc_slow,
    "capacity": sc_capacity,
    "channels": sc_channels,
    "subscribe": sc_subscribe,
    "storm": sc_storm,
    "patterns": sc_patterns,
    "redis-burst": sc_burst,
    "redis-paced": sc_paced,
}
