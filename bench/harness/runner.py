"""The interleaved run loop: every (scenario, round, server) on a fresh server, the JSON
written after each run, then the report and the optional profiles."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_QUEUE,
    REDIS_SCENARIOS,
    REDIS_SETUPS,
    RESULTS,
    ROOT,
    SSE_ONLY_SCENARIOS,
    log,
)
from .profiling import profile
from .report import progress_line, render
from .scenarios import SCENARIOS
from .servers import Cluster, Server
from .targets import add_storm_bounds, check_targets, scale_out_summary


class Results:
    """bench/results/<stamp>.json and the folder beside it (logs, table.md, profile.md)."""

    def __init__(self, stamp: str, meta: dict[str, Any], notes: list[str]) -> None:
        self.outdir = RESULTS / stamp
        self.outdir.mkdir(parents=True, exist_ok=True)
        self.json = RESULTS / f"{stamp}.json"
        self.meta, self.notes = meta, notes
        self.runs: list[dict[str, Any]] = []
        self.extra: dict[str, Any] = {}  # table_md, profile: kept by every later save

    def save(self, extra: dict[str, Any] | None = None) -> None:
        """Write the JSON again (after every run, so a stopped run keeps what it measured)."""
        self.extra.update(extra or {})
        doc = {"meta": self.meta, "notes": self.notes, "runs": self.runs, **self.extra}
        self.json.write_text(json.dumps(doc, indent=1, default=str))


def run_one(sc: str, rnd: int, name: str, p: dict[str, Any], outdir: Path) -> dict[str, Any]:
    """One run: start the server (for redis-*: the setup's Redis and nodes), measure, stop.

    A failed run is recorded with its error and the others go on.
    """
    log(f"{sc} round {rnd}: {name}")
    run: dict[str, Any] = {"scenario": sc, "round": rnd, "server": name}
    tag = f"{sc}-{rnd}-{name}"
    target: Server | Cluster
    if sc in REDIS_SCENARIOS:
        target = Cluster(name, outdir, tag)
    else:
        heartbeat, queue = p.get("heartbeat", 0), p.get("queue", DEFAULT_QUEUE)
        target = Server(name, outdir / f"{tag}.log", heartbeat=heartbeat, queue=queue)
    t0 = time.monotonic()
    try:
        target.start()
        run["metrics"] = SCENARIOS[sc](target, p)
        log("   " + progress_line(sc, run["metrics"]))
    except Exception as e:  # a failed run is recorded, the others go on
        run["error"] = f"{type(e).__name__}: {e}"
        log(f"   FAILED: {run['error']}")
    finally:
        target.stop()
        run["wall_s"] = time.monotonic() - t0
        time.sleep(0.3)
    return run


def run_all(
    results: Results,
    scenarios: list[str],
    servers: list[str],
    params: dict[str, Any],
    rounds: dict[str, int],
    max_minutes: float,
) -> None:
    """Each scenario `rounds[sc]` times, every server (setup) once a round, in turn; no new
    run starts after `max_minutes`."""
    t_start = time.monotonic()
    for sc in scenarios:
        names = REDIS_SETUPS if sc in REDIS_SCENARIOS else servers
        if sc in SSE_ONLY_SCENARIOS:
            names = [name for name in servers if name.startswith("sse_twisted")]
        plan = [(rnd, name) for rnd in range(1, rounds[sc] + 1) for name in names]
        for rnd, name in plan:
            if time.monotonic() - t_start > max_minutes * 60:
                results.notes.append(f"stopped early: --max-minutes {max_minutes} reached")
                results.meta["elapsed_s"] = time.monotonic() - t_start
                return
            results.runs.append(run_one(sc, rnd, name, params[sc], results.outdir))
            results.save()
    results.meta["elapsed_s"] = time.monotonic() - t_start


def report(
    results: Results, scenarios: list[str], servers: list[str], params: dict[str, Any], ref: str
) -> None:
    """Print the tables, and keep them in table.md and the JSON."""
    runs = results.runs
    add_storm_bounds(runs)
    findings = [
        ("scale-out: what Redis adds", scale_out_summary(runs, scenarios)),
        ("targets", check_targets(runs, servers, ref)),
    ]
    table = render(runs, scenarios, servers, params, ref, findings, results.notes)
    print(table)
    (results.outdir / "table.md").write_text(table)
    results.save({"table_md": table})
    log(
        f"raw results: {results.json.relative_to(ROOT)}  (logs and table in {results.outdir.relative_to(ROOT)}/)"
    )


def run_profiles(
    results: Results, names: list[str], servers: list[str], params: dict[str, Any], channels: bool
) -> None:
    """py-spy profiles of a long burst (and with `channels`, of the channels load)."""
    reports = []
    for name in names:
        if name not in servers:
            reports.append(f"{name}: not available, not profiled")
            continue
        if name == "go-gin":
            reports.append("go-gin: py-spy profiles Python only")
            continue
        pp = dict(params["burst"], events=params["burst"]["events"] * 5)
        log(f"profiling {name} during a burst of {pp['events']} events")
        reports.append(profile(name, pp, results.outdir))
        if channels:
            pc = dict(params["channels"], events=params["channels"]["events"] * 3)
            log(f"profiling {name} during {pc['events']} events over {pc['channels']} channels")
            reports.append(profile(name, pc, results.outdir, channels=pc["channels"]))
    text = "\n\n".join(reports)
    print(text)
    (results.outdir / "profile.md").write_text(text)
    results.save({"profile": text})
