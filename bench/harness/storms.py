"""Connection storms: `subscribe` (N clients open at once) and `storm` (N subscribers cut at
once, reconnecting with Last-Event-ID while events keep flowing).

Both open their streams at once (`connect(at_once=True)`: no cap on the connects in
flight, every load process starting on the same "go"), as browsers do after a deploy
or a network blip. Times are the load generator's CLOCK_MONOTONIC stamps, the same
clock the publisher writes into each event's "t".
"""

from __future__ import annotations

import math
import threading
import time
from typing import Any

from .load import Subs, connect, prewarm, run_pub, warm_up
from .metrics import merge_hist, per, percentile, strip, total
from .procfs import Usage, counters_delta, tcp_ext_counters
from .servers import Server

#: Streams per load process: well under the open-file limit (20,000 here) of each.
PER_PROCESS = 15000


def _procs(conns: int) -> int:
    return max(1, math.ceil(conns / PER_PROCESS))


def _open_at_once(
    srv: Server, p: dict[str, Any], *, channels: int = 0, time_limit: float
) -> tuple[Subs, float, dict[str, int]]:
    """Open p["conns"] streams at once over as many load processes as the fd limit needs
    (several: from source addresses 127.0.0.2..., as in the capacity scenario)."""
    procs = _procs(p["conns"])
    return connect(
        srv.port,
        p["conns"],
        procs=procs,
        channels=channels,
        at_once=True,
        time_limit=time_limit,
        connect_timeout=120,
        src_base=2 if procs > 1 else 0,
    )


def _subscribe_times(res: list[dict[str, Any]]) -> dict[str, Any]:
    """From the first connect() of any process to the last client's headers (and first
    body bytes, if every client got some before any event), and per-client percentiles."""
    t0 = min((r["sub_t0_ns"] for r in res if r.get("sub_t0_ns")), default=0)
    hdr = max((r.get("sub_hdr_max_ns", 0) for r in res), default=0)
    body = max((r.get("sub_body_max_ns", 0) for r in res), default=0)
    all_body = total(res, "sub_with_body") == total(res, "sub_readers")
    h = merge_hist([{"lat_hist_us": r.get("sub_hist_us", [])} for r in res])
    p50, p99 = percentile(h, 0.5), percentile(h, 0.99)
    return {
        "subscribe_s": (hdr - t0) / 1e9 if t0 and hdr else None,
        "first_body_s": (body - t0) / 1e9 if t0 and body and all_body else None,
        "sub_p50_ms": None if p50 is None else p50 / 1000,
        "sub_p99_ms": None if p99 is None else p99 / 1000,
    }


def sc_subscribe(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    """N clients open at once: time until every one has its headers, and the server's CPU
    per subscribe (utime + stime from before the first connect to the last headers)."""
    prewarm(srv.port)
    k0, u0 = tcp_ext_counters(), Usage(srv.pid)
    subs, dt, _ = _open_at_once(srv, p, time_limit=180)
    u1, k1 = Usage(srv.pid), tcp_ext_counters()
    try:
        warm = warm_up(subs, srv.port)
    finally:
        res = subs.quit()
    n = total(res, "connected")
    return {
        **_subscribe_times(res),
        "cpu_us_per_subscribe": per((u1.cpu - u0.cpu) * 1e6, n),
        "cpu_us_precise_per_subscribe": per((u1.cpu_ns - u0.cpu_ns) / 1e3, n),
        "subscribed": n,
        "failed": total(res, "failed"),
        "listen_overflows": counters_delta(k0, k1).get("ListenOverflows"),
        "tcp": counters_delta(k0, k1),
        "warm": warm,
        "harness_s": dt,
        "_raw": {"subs": _strip(res), "u0": u0.__dict__, "u1": u1.__dict__},
    }


def _strip(res: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results without any of their histograms."""
    return [{k: v for k, v in r.items() if not k.endswith("_hist_us")} for r in strip(res)]


def _expected(conns: int, channels: int, published: int) -> int:
    """Events that `conns` streams (stream i on channel i % channels) should get when events
    0..published-1 went round robin over the channels."""
    if channels <= 0:
        return conns * published
    return sum(
        (published - 1 - i % channels) // channels + 1
        for i in range(conns)
        if published > i % channels
    )


def sc_storm(srv: Server, p: dict[str, Any]) -> dict[str, Any]:
    """N subscribers, events at `rate`/s round robin over `channels` channels; after `before`
    s every stream is cut at once and reconnects at once with its Last-Event-ID while the
    publisher goes on for `after` s more. Per stream: ids lost and duplicated across the cut;
    the time from the cut until every stream has caught up, i.e. has received every event
    published before its new subscription (the last of its replay, or its new headers when
    it had nothing to replay)."""
    m, rate = p["channels"], p["rate"]
    count = int(rate * (p["before"] + p["after"]))
    prewarm(srv.port)
    subs, _, _ = _open_at_once(srv, p, channels=m, time_limit=p["before"] + p["after"] + 240)
    pub: dict[str, Any] = {}
    try:
        warm = warm_up(subs, srv.port, channels=m)
        time.sleep(0.3)
        subs.reset()
        u0 = Usage(srv.pid)

        def publish() -> None:
            try:
                pub.update(
                    run_pub(
                        srv.port,
                        count,
                        rate=rate,
                        pad=p["pad"],
                        channels=m,
                        rr=True,
                        time_limit=p["before"] + p["after"] + 60,
                    )
                )
            except Exception as e:  # reported with the run's figures
                pub["error"] = f"{type(e).__name__}: {e}"

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        time.sleep(p["before"])
        before = subs.stat().get("events", 0)
        u_cut, k0 = Usage(srv.pid), tcp_ext_counters()
        subs.send("cut")
        reconnected = subs.wait_all("RECONNECTED", 120)
        tcp = counters_delta(k0, tcp_ext_counters())
        publisher.join(p["before"] + p["after"] + 75)
        published = int(pub.get("sent", 0))
        _announce_published(subs, m, published)
        complete = subs.wait_delivered(timeout=60, stall=3.0)
        u_end = Usage(srv.pid)
    finally:
        res = subs.quit()
    out = _storm_figures(
        res, pub, m, published, before, complete, reconnected, warm, u0, u_cut, u_end
    )
    return {**out, "listen_overflows": tcp.get("ListenOverflows"), "tcp": tcp}


def _announce_published(subs: Subs, channels: int, published: int) -> None:
    """Tell every load process what went out, and how many events its streams should get."""
    for s in subs.subs:
        s.send(f"published {published}")
        s.send(f"total {_expected(s.conns, channels, published)}")


def _storm_figures(
    res: list[dict[str, Any]],
    pub: dict[str, Any],
    channels: int,
    published: int,
    before: int,
    complete: bool,
    reconnected: bool,
    warm: bool,
    u0: Usage,
    u_cut: Usage,
    u_end: Usage,
) -> dict[str, Any]:
    t_cut = min((r["t_cut_ns"] for r in res if r.get("t_cut_ns")), default=0)
    caught = max((r.get("caught_max_ns", 0) for r in res), default=0)
    rehdr = max((r.get("rehdr_max_ns", 0) for r in res), default=0)
    readers = total(res, "sub_readers")
    expected = sum(_expected(int(r.get("connected", 0)), channels, published) for r in res)
    delivered = total(res, "events")
    dups = total(res, "dups")
    lost = total(res, "gaps") + total(res, "lost_head") + total(res, "lost_tail")
    n_re = total(res, "reconnected")
    h = merge_hist([{"lat_hist_us": r.get("resub_hist_us", [])} for r in res])
    re_p50 = percentile(h, 0.5)
    return {
        "lost": lost,
        "dups": dups,
        "lossy_clients": total(res, "lossy_clients"),
        "dup_clients": total(res, "dup_clients"),
        "reconnect_s": (rehdr - t_cut) / 1e9 if t_cut and rehdr else None,
        "reconnect_p50_ms": None if re_p50 is None else re_p50 / 1000,
        "catchup_s": (caught - t_cut) / 1e9 if t_cut and caught else None,
        "missed_per_client": per(total(res, "replayed") + lost, n_re),
        "replayed_per_client": per(total(res, "replayed"), n_re),
        "replayed_max": max((int(r.get("replayed_max", 0)) for r in res), default=0),
        "lost_per_client": per(lost, readers),
        "delivered_pct": 100.0 * (delivered - dups) / expected if expected else 0.0,
        "subscribers": readers,
        "cut": total(res, "cut"),
        "reconnected": n_re,
        "reconnect_failed": total(res, "refailed"),
        "published": published,
        "publish_errors": int(pub.get("non2xx", 0)) + int(pub.get("errors", 0)),
        # the publisher posts to the same server: a server busy with the storm slows it down
        "publish_rate": per(
            published - 1, (pub.get("last_send_ns", 0) - pub.get("first_ns", 0)) / 1e9
        ),
        "publish_max_wait_s": pub.get("max_wait_ns", 0) / 1e9 if pub.get("max_wait_ns") else None,
        "initial_subscribe_s": _subscribe_times(res)["subscribe_s"],
        "precut_cpu_us_per_event": per((u_cut.cpu - u0.cpu) * 1e6, before),
        "storm_cpu_s": u_end.cpu - u_cut.cpu,
        "complete": complete,
        "all_reconnected": reconnected,
        "warm": warm,
        "_raw": {
            "pub": pub,
            "subs": _strip(res),
            "events_before_cut": before,
            "u0": u0.__dict__,
            "u_cut": u_cut.__dict__,
            "u_end": u_end.__dict__,
        },
    }
