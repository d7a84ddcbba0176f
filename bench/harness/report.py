"""The report: every markdown table and list of the output, and the one-line progress log.

Tables and sections go through `markdown_table` and `section`, so every table has
the same shape (`| a | b |`, then `|---|---|`) and every list the same heading.
"""

from __future__ import annotations

import statistics
from typing import Any

from .config import REDIS_REF, REDIS_SCENARIOS, REDIS_SETUPS

Column = tuple[str, str, str]  # metric key, label, format

# Columns that several tables show alike.
_CPU_PER_EVENT: Column = ("cpu_us_per_event", "CPU µs/event", ".2f")
_EVENTS_PER_S: Column = ("events_per_s", "events/s", ",.0f")
_DELIVERED: Column = ("delivered_pct", "delivered %", ".1f")
_LATENCY: list[Column] = [
    ("p50_ms", "p50 ms", ".2f"),
    ("p99_ms", "p99 ms", ".2f"),
    ("max_ms", "max ms", ".1f"),
]
_NODES_AND_REDIS_CPU: list[Column] = [
    ("cpu_us_per_event", "nodes CPU µs/event", ".2f"),
    ("redis_cpu_us_per_event", "Redis CPU µs/event", ".3f"),
    ("redis_cpu_us_per_publish", "Redis CPU µs/publish", ".1f"),
]

#: The columns of each scenario's table, in order.
COLUMNS: dict[str, list[Column]] = {
    "idle": [
        ("kib_per_sub", "KiB/subscriber", ".2f"),
        ("rss_mib", "RSS MiB", ".1f"),
        ("held", "held", ".0f"),
        ("connect_s", "connect s", ".2f"),
    ],
    "burst": [_CPU_PER_EVENT, _EVENTS_PER_S, _DELIVERED, ("p99_ms", "p99 ms", ".1f")],
    "paced": [*_LATENCY, _DELIVERED, _CPU_PER_EVENT],
    "slow": [
        ("growth_mib", "peak growth MiB", ".1f"),
        ("phase1_growth_mib", "phase 1 MiB", ".1f"),
        ("phase2_growth_mib", "phase 2 MiB", ".1f"),
        ("readers_complete", "readers complete", ".0f"),
        ("reader_events_pct", "reader events %", ".1f"),
        ("duration_s", "duration s", ".2f"),
    ],
    "capacity": [
        ("held", "held", ".0f"),
        ("kib_per_sub", "KiB/subscriber", ".2f"),
        ("burst_complete_subs", "burst complete subs", ".0f"),
        ("burst_delivered_pct", "burst delivered %", ".1f"),
        ("heartbeats_in_hold", "heartbeats seen", ".0f"),
        ("connect_s", "connect s", ".1f"),
    ],
    "channels": [
        ("cpu_us_per_publish", "CPU µs/publish @N", ".1f"),
        ("cpu_us_per_publish_control", "CPU µs/publish @control", ".1f"),
        ("scaling", "scaling N/control", ".2f"),
        _CPU_PER_EVENT,
        _DELIVERED,
    ],
    "patterns": [
        ("cpu_us_per_event_channels", "CPU µs/delivered event, channels", ".2f"),
        ("cpu_us_per_event", "CPU µs/delivered event, patterns", ".2f"),
        ("ratio", "patterns/channels", ".2f"),
        ("cpu_us_per_publish_channels", "CPU µs/publish, channels", ".1f"),
        ("cpu_us_per_publish", "CPU µs/publish, patterns", ".1f"),
        ("delivered_pct_channels", "delivered % channels", ".1f"),
        _DELIVERED,
    ],
    "subscribe": [
        ("subscribe_s", "all subscribed s", ".3f"),
        ("sub_p50_ms", "p50 ms", ".1f"),
        ("sub_p99_ms", "p99 ms", ".1f"),
        ("cpu_us_per_subscribe", "CPU µs/subscribe", ".0f"),
        ("subscribed", "subscribed", ".0f"),
        ("listen_overflows", "listen overflows", ".0f"),
    ],
    "storm": [
        ("lost", "lost", ".0f"),
        ("dups", "duplicated", ".0f"),
        ("lossy_clients", "clients with loss", ".0f"),
        ("reconnect_s", "all reconnected s", ".3f"),
        ("catchup_s", "all caught up s", ".3f"),
        ("bound_s", "bound s", ".3f"),
        ("missed_per_client", "missed/client", ".1f"),
        _DELIVERED,
        ("publish_rate", "published/s", ".0f"),
        ("publish_max_wait_s", "publisher max wait s", ".2f"),
        ("listen_overflows", "listen overflows", ".0f"),
    ],
    "redis-burst": [
        _EVENTS_PER_S,
        _DELIVERED,
        ("p50_ms", "p50 ms", ".1f"),
        ("p99_ms", "p99 ms", ".1f"),
        *_NODES_AND_REDIS_CPU,
        ("publishes_per_s", "publishes/s", ",.0f"),
    ],
    "redis-paced": [*_LATENCY, _DELIVERED, *_NODES_AND_REDIS_CPU],
}

DESCRIPTIONS = {
    "idle": "idle memory: {conns} subscribers connected and idle; RSS growth over a warmed baseline / subscriber",
    "burst": "burst: {conns} subscribers, {events} events of ~100 B back to back, one POST each",
    "paced": "paced: {conns} subscribers, {rate} events/s for {seconds} s; publish-to-receive latency",
    "slow": "slow consumers: {stalled} stalled + {readers} readers, 2 phases of {events} x ~16 KiB events, "
    "queue {queue}; growth over a warmed baseline",
    "capacity": "capacity: {conns} subscribers over {procs} load processes, heartbeats every {heartbeat} s, "
    "then a burst of {events} events",
    "channels": "channels: {conns} subscribers over {channels} channels, {events} events each to one random "
    "channel; control = {control} subscribers on one channel alone",
    "patterns": "patterns: {conns} subscribers on {channels} distinct patterns (ch<k>/*, each matching "
    "one channel ch<k>/x) against {conns} on {channels} plain channels, on one server one after the other; "
    "{events} events each to one random channel; target: patterns/channels ≤ 1.5",
    "subscribe": "subscribe: {conns} clients open at once; time from the first connect to the last client's "
    "headers, per-client p50/p99, server CPU per subscribe",
    "storm": "reconnect storm: {conns} subscribers over {channels} channels, {rate} events/s round robin; "
    "after {before} s every stream is cut at once and reconnects at once with Last-Event-ID, {after} s more "
    "of events; lost/duplicated ids per stream, time from the cut until every stream has everything "
    "published before it subscribed again; bound = 1.5 × (subscribe time + N × missed × burst CPU/event)",
    "redis-burst": "scale-out burst: {conns} subscribers over {procs} load processes (redis-2: half on each "
    "node), {events} events of ~100 B back to back, all published to the first node",
    "redis-paced": "scale-out paced: {conns} subscribers over {procs} load processes (redis-2: half on each "
    "node), {rate} events/s for {seconds} s published to the first node; publish-to-receive latency",
}


def fmt(v: Any, f: str) -> str:
    if v is None:
        return "–"
    try:
        return format(v, f)
    except (TypeError, ValueError):
        return str(v)


def summarize(
    runs: list[dict[str, Any]], scenario: str, servers: list[str]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for s in servers:
        rs = [r for r in runs if r["scenario"] == scenario and r["server"] == s and "metrics" in r]
        if not rs:
            continue
        out[s] = {"n": len(rs)}
        for key in {k for r in rs for k in r["metrics"] if not k.startswith("_")}:
            vals = [
                r["metrics"][key]
                for r in rs
                if isinstance(r["metrics"].get(key), (int, float))
                and not isinstance(r["metrics"].get(key), bool)
            ]
            if vals:
                out[s][key] = {
                    "median": statistics.median(vals),
                    "min": min(vals),
                    "max": max(vals),
                }
    return out


def median(runs: list[dict[str, Any]], scenario: str, server: str, key: str) -> float | None:
    """The median of one metric of one server over the rounds, None if it never ran."""
    st = summarize(runs, scenario, [server]).get(server, {}).get(key)
    return st["median"] if st else None


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """The lines of a markdown table: header, separator, one line a row."""
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def section(title: str, body: list[str]) -> list[str]:
    """A `###` heading, its body and a blank line; nothing at all for an empty body."""
    return ["### " + title, "", *body, ""] if body else []


def bullets(items: list[str]) -> list[str]:
    return [f"- {t}" for t in items]


def cell(st: dict[str, float] | None, ref: dict[str, float] | None, f: str) -> str:
    """median [min-max], and the ratio to the reference's median when `ref` is given."""
    if not st:
        return "–"
    text = f"{fmt(st['median'], f)} [{fmt(st['min'], f)}–{fmt(st['max'], f)}]"
    if ref and ref["median"]:
        text += f" ×{st['median'] / ref['median']:.2f}"
    return text


def scenario_table(
    runs: list[dict[str, Any]], sc: str, params: dict[str, Any], servers: list[str], ref: str
) -> list[str]:
    """One scenario's section: a row a server (a setup for redis-*), a column a metric."""
    rows, sc_ref = (REDIS_SETUPS, REDIS_REF) if sc in REDIS_SCENARIOS else (servers, ref)
    summ = summarize(runs, sc, rows)
    if not summ:
        return []
    cols = COLUMNS[sc]
    header = ["setup" if sc in REDIS_SCENARIOS else "server", "n", *(c[1] for c in cols)]
    body = []
    for s in (s for s in rows if s in summ):
        refs = summ.get(sc_ref, {}) if s != sc_ref else {}
        errs = sum(1 for r in runs if r["scenario"] == sc and r["server"] == s and "error" in r)
        name = s + (f" ({errs} failed)" if errs else "")
        body.append(
            [name, str(summ[s]["n"]), *(cell(summ[s].get(k), refs.get(k), f) for k, _, f in cols)]
        )
    title = f"{sc} — {DESCRIPTIONS[sc].format(**params[sc])}"
    return section(title, markdown_table(header, body))


def render(
    runs: list[dict[str, Any]],
    scenarios: list[str],
    servers: list[str],
    params: dict[str, Any],
    ref: str,
    findings: list[tuple[str, list[str]]],
    notes: list[str],
) -> str:
    """The whole report: a table a scenario, the legend, then `findings` (title, items) and
    the notes as lists."""
    lines = [line for sc in scenarios for line in scenario_table(runs, sc, params, servers, ref)]
    redis_ratio = (
        f" (scale-out tables: / {REDIS_REF}'s)"
        if any(s in REDIS_SCENARIOS for s in scenarios)
        else ""
    )
    lines.append(
        f"Cells: median [min–max] over rounds; ×r = this server's median / {ref}'s median{redis_ratio}."
    )
    lines.append("")
    for title, items in [*findings, ("notes", notes)]:
        lines += section(title, bullets(items))
    return "\n".join(lines)


def progress_line(sc: str, metrics: dict[str, Any]) -> str:
    """The metrics of one run that its scenario's table shows, for the progress log."""
    shown = {k: v for k, v in metrics.items() if k in {c[0] for c in COLUMNS[sc]}}
    return ", ".join(
        f"{k}={fmt(v, '.3g') if isinstance(v, float) else v}" for k, v in shown.items()
    )
