"""What a run concludes from its medians: the scale-out comparison and the targets
of bench/README.md, each one line of the report."""

from __future__ import annotations

from typing import Any

from .config import PY_PEERS, REDIS_SETUPS, REFERENCE, SSE_HISTORY
from .report import fmt, median, summarize


def add_storm_bounds(runs: list[dict[str, Any]]) -> None:
    """Put the issue's bound next to each storm run's catch-up time (metrics "bound_s"):
    1.5 x (subscribe time for N + N x events each missed x burst CPU per delivered event),
    with this run's medians of the same server's `subscribe` and `burst` scenarios, or,
    when they did not run, the storm's own figures (its streams also opened at once; its
    CPU per event before the cut, at the storm's rate)."""
    for run in runs:
        m = run.get("metrics")
        if run["scenario"] != "storm" or not m:
            continue
        name = run["server"]
        sub, sub_from = median(runs, "subscribe", name, "subscribe_s"), "subscribe"
        if sub is None:
            sub, sub_from = m.get("initial_subscribe_s"), "storm's own connect"
        cpu, cpu_from = median(runs, "burst", name, "cpu_us_per_event"), "burst"
        if cpu is None:
            cpu, cpu_from = m.get("precut_cpu_us_per_event"), "storm before the cut"
        n, missed = m.get("reconnected") or m.get("subscribers"), m.get("missed_per_client")
        if sub is None or cpu is None or missed is None or not n:
            continue
        m["bound_s"] = 1.5 * (sub + n * missed * cpu / 1e6)
        m["bound_inputs"] = {
            "subscribe_s": sub,
            "subscribe_from": sub_from,
            "clients": n,
            "missed_per_client": missed,
            "cpu_us_per_event": cpu,
            "cpu_from": cpu_from,
        }


def scale_out_summary(runs: list[dict[str, Any]], scenarios: list[str]) -> list[str]:
    """redis-2 against single, from the medians of the scale-out scenarios."""
    one, two = REDIS_SETUPS[:2]

    def pair(sc: str, key: str) -> tuple[float | None, float | None]:
        return median(runs, sc, one, key), median(runs, sc, two, key)

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
    """PASS or FAIL a target, from sse_twisted's medians and its peers' (none when the
    reference is not sse_twisted)."""
    if ref != REFERENCE:
        return []
    out = []

    def med(sc: str, s: str, key: str) -> float | None:
        return median(runs, sc, s, key)

    mine = med("burst", ref, "cpu_us_per_event")
    if mine is not None:
        py = [
            (v, s)
            for s in PY_PEERS
            if s in servers and (v := med("burst", s, "cpu_us_per_event")) is not None
        ]
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
    out += _storm_targets(runs, servers, ref)
    sc = med("channels", ref, "scaling")
    if sc is not None:
        fl, go = med("channels", "twisted-floor", "scaling"), med("channels", "go-gin", "scaling")
        out.append(
            f"{'PASS' if sc <= 1.5 else 'FAIL'}: channels: CPU per publish with all subscribers / with "
            f"the control alone = {sc:.2f}, target ≤ 1.5 (≈ 1 when cost follows matching subscribers; "
            f"twisted-floor's dict index {fmt(fl, '.2f')}, go-gin's scan of all clients {fmt(go, '.2f')})"
        )
    pr = med("patterns", ref, "ratio")
    if pr is not None:
        out.append(
            f"{'PASS' if pr <= 1.5 else 'FAIL'}: patterns: CPU per delivered event on distinct patterns"
            f" / on plain channels = {pr:.2f}, target ≤ 1.5"
        )
    return out


def _storm_targets(runs: list[dict[str, Any]], servers: list[str], ref: str) -> list[str]:
    """Issue #12's connection-storm targets: subscribe time ≤ 1.5x the twisted.web floor's
    and CPU per subscribe ≤ 1.2x its; in the reconnect storm nothing lost or duplicated
    in any round and the median catch-up within the median bound."""
    out = []

    def med(sc: str, s: str, key: str) -> float | None:
        return median(runs, sc, s, key)

    floor = "twisted-floor"
    t, ft = med("subscribe", ref, "subscribe_s"), med("subscribe", floor, "subscribe_s")
    c, fc = (
        med("subscribe", ref, "cpu_us_per_subscribe"),
        med("subscribe", floor, "cpu_us_per_subscribe"),
    )
    if t is not None and ft and c is not None and fc:
        verdict = "PASS" if t <= 1.5 * ft and c <= 1.2 * fc else "FAIL"
        out.append(
            f"{verdict}: subscribe: all subscribed in {t:.3f} s vs the floor's {ft:.3f} s (×{t / ft:.2f}, "
            f"target ≤ 1.5); CPU per subscribe {c:.0f} µs vs {fc:.0f} µs (×{c / fc:.2f}, target ≤ 1.2)"
        )
    st = summarize(runs, "storm", servers)
    mine = st.get(ref)
    if mine and "lost" in mine:
        lost, dups = mine["lost"]["max"], mine.get("dups", {}).get("max", 0)
        cu, bound = med("storm", ref, "catchup_s"), med("storm", ref, "bound_s")
        ok = lost == 0 and dups == 0 and cu is not None and bound is not None and cu <= bound
        peers = ", ".join(
            f"{s} {fmt(med('storm', s, 'lost_per_client'), '.1f')}"
            for s in servers
            if s != ref and s in st
        )
        out.append(
            f"{'PASS' if ok else 'FAIL'}: reconnect storm: lost {lost:.0f}, duplicated {dups:.0f} (worst "
            f"round; target 0); all caught up {fmt(cu, '.3f')} s after the cut, bound {fmt(bound, '.3f')} s"
            + (f"; peers (no resume) lose per client: {peers}" if peers else "")
        )
    return out
