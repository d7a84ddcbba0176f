"""The command line of bench/run.py: options, what to run, what to set up first, and main."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import json
import os
import platform
import resource
import shlex
import sys
from pathlib import Path
from typing import Any

from .build import ensure_go, ensure_loadgen, ensure_venv, redis_available, sse_twisted_available
from .config import (
    ALL_SCENARIOS,
    ALL_SERVERS,
    BUILD,
    DEFAULT_QUEUE,
    DEFAULT_SCENARIOS,
    LOAD_CPU,
    PARAMS,
    REDIS_SCENARIOS,
    REDIS_SETUPS,
    REFERENCE,
    RESULTS,
    SERVER_CPU,
    raise_nofile,
)
from .report import render
from .runner import Results, report, run_all, run_profiles
from .scenarios import SCENARIOS
from .servers import VARIANTS, add_variant
from .targets import add_storm_bounds, check_targets, scale_out_summary


def parse_args(
    description: str | None, argv: list[str] | None
) -> tuple[argparse.ArgumentParser, argparse.Namespace]:
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every scenario (default 3)")
    ap.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help=f"comma list from {','.join(ALL_SCENARIOS)}, 'redis' (= both redis-*) or 'all' "
        "(default: all but capacity, storm and the redis-* scale-out pair)",
    )
    ap.add_argument(
        "--capacity", action="store_true", help="add the capacity scenario (~19,900 subscribers)"
    )
    ap.add_argument(
        "--capacity-rounds",
        type=int,
        default=0,
        help="rounds of the capacity scenario (default: --rounds)",
    )
    ap.add_argument(
        "--servers", default=",".join(ALL_SERVERS), help="comma list (default: all available)"
    )
    ap.add_argument("--quick", action="store_true", help="small sizes, 1 round: a smoke run")
    ap.add_argument(
        "--profile",
        nargs="?",
        const=REFERENCE,
        default=None,
        metavar="SERVERS",
        help="after the runs, py-spy profile of a long burst on these servers (default sse_twisted)",
    )
    ap.add_argument(
        "--profile-only", action="store_true", help="skip the scenarios, only --profile"
    )
    ap.add_argument(
        "--profile-channels",
        action="store_true",
        help="with --profile: also profile the channels load",
    )
    ap.add_argument(
        "--max-minutes", type=float, default=45, help="start no new run after this (default 45)"
    )
    ap.add_argument("--no-setup", action="store_true", help="do not create/refresh bench/.venv")
    ap.add_argument(
        "--report",
        metavar="JSON",
        type=Path,
        help="run nothing: print the tables of an earlier run's bench/results/<stamp>.json again "
        "(with this harness's columns and targets)",
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=TWISTD[::ARGS]",
        help="also run another sse_twisted build as server sse_twisted@NAME (its twistd path); "
        "repeatable: measures an optimisation against the code before it, interleaved; "
        "'::ARGS' adds `twistd sse` arguments ({port} becomes the server's port)",
    )
    args = ap.parse_args(argv)
    for spec in args.variant:
        vname, sep, vpath = spec.partition("=")
        vpath, _, extra = vpath.partition("::")
        if not sep or not Path(vpath).exists():
            ap.error(f"--variant wants NAME=PATH_TO_TWISTD[::ARGS], got {spec!r}")
        add_variant(vname, Path(vpath), shlex.split(extra))
    return ap, args


def pick_scenarios(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """--scenarios ('all', 'redis' for the scale-out pair) and --capacity, in a fixed order."""
    scenarios = (
        ALL_SCENARIOS if args.scenarios == "all" else [s for s in args.scenarios.split(",") if s]
    )
    # 'redis' is an alias for the scale-out pair; duplicates dropped, order kept
    scenarios = [x for s in scenarios for x in (REDIS_SCENARIOS if s == "redis" else [s])]
    scenarios = list(dict.fromkeys(scenarios))
    if args.capacity and "capacity" not in scenarios:
        scenarios = [s for s in ALL_SCENARIOS if s in scenarios or s == "capacity"]
    for s in scenarios:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s!r}; choose from {', '.join(ALL_SCENARIOS)}")
    return scenarios


def pick_servers(ap: argparse.ArgumentParser, args: argparse.Namespace) -> list[str]:
    """--servers, plus every --variant even when --servers does not name it."""
    named = [s for s in args.servers.split(",") if s]
    wanted = named + [v for v in VARIANTS if v not in named]
    for s in wanted:
        if s not in ALL_SERVERS:
            ap.error(f"unknown server {s!r}; choose from {', '.join(ALL_SERVERS)}")
    return wanted


def set_up(
    args: argparse.Namespace, servers: list[str], scenarios: list[str], params: dict[str, Any]
) -> tuple[list[str], list[str], str, list[str]]:
    """Build and check what the run needs; return the servers and scenarios that can run,
    the reference server and the notes for the report."""
    notes: list[str] = []
    BUILD.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    ensure_loadgen()
    if not args.no_setup:
        ensure_venv()
    servers = list(servers)
    if "go-gin" in servers:
        note = ensure_go()
        if note:
            notes.append(note)
            servers.remove("go-gin")
    if "sse_twisted" in servers:
        ok, why = sse_twisted_available()
        if not ok:
            notes.append(f"sse_twisted skipped: {why}")
            servers.remove("sse_twisted")
    ref = REFERENCE if REFERENCE in servers else (servers[0] if servers else REFERENCE)
    peers_run = any(s not in REDIS_SCENARIOS for s in scenarios)
    if ref != REFERENCE and peers_run:
        notes.append(f"ratios are against {ref} because sse_twisted did not run")
    if peers_run:
        notes.append(
            "go-gin is the original broker verbatim: fixed 64-event buffer per client that drops when "
            "full, no heartbeat, and it scans every client on each publish"
        )
    notes.append(
        f"servers on CPU {SERVER_CPU}, load generator, publisher and harness on CPU {LOAD_CPU} (taskset); "
        f"per-subscriber queue {DEFAULT_QUEUE} (slow consumers: {params['slow']['queue']}), drop on overflow"
    )
    if any(s in REDIS_SCENARIOS for s in scenarios):
        ok, why = redis_available()
        if ok:
            notes.append(
                f"scale-out (redis-*): `{REDIS_SETUPS[0]}` is one sse_twisted without Redis; `{REDIS_SETUPS[1]}` is "
                "one redis-server (fresh, free loopback port, --save '' --appendonly no) and two sse_twisted "
                f"nodes with --redis, every event published to the first node. Nodes and redis-server all on CPU "
                f"{SERVER_CPU}, the two nodes sharing it, so this shows the cost of the Redis path, not the "
                f"scaling over cores; the load (two loadgen processes, one per node in {REDIS_SETUPS[1]}, both on "
                f"the one node in {REDIS_SETUPS[0]}) and the publisher on CPU {LOAD_CPU}. Nodes' CPU is summed "
                "over both nodes (/proc/PID/stat ticks); Redis CPU from /proc/PID/task/*/schedstat (ns)"
            )
        else:
            notes.append(f"scale-out scenarios skipped: {why}")
            scenarios = [s for s in scenarios if s not in REDIS_SCENARIOS]
    return servers, scenarios, ref, notes


def describe(
    stamp: str,
    size: str,
    rounds: int,
    scenarios: list[str],
    servers: list[str],
    params: dict[str, Any],
    ref: str,
) -> dict[str, Any]:
    """The JSON's "meta": what ran, with which sizes, on which machine."""
    return {
        "started": stamp,
        "size": size,
        "rounds": rounds,
        "scenarios": scenarios,
        "servers": servers,
        "redis_setups": REDIS_SETUPS if any(s in REDIS_SCENARIOS for s in scenarios) else [],
        "params": {s: params[s] for s in scenarios},
        "reference": ref,
        "server_cpu": SERVER_CPU,
        "load_cpu": LOAD_CPU,
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        },
    }


def report_again(path: Path) -> int:
    """The tables of an earlier run, from its JSON, with the current columns and targets."""
    doc = json.loads(path.read_text())
    runs, meta = doc["runs"], doc["meta"]
    add_storm_bounds(runs)
    findings = [
        ("scale-out: what Redis adds", scale_out_summary(runs, meta["scenarios"])),
        ("targets", check_targets(runs, meta["servers"], meta["reference"])),
    ]
    print(
        render(
            runs,
            meta["scenarios"],
            meta["servers"],
            meta["params"],
            meta["reference"],
            findings,
            doc.get("notes", []),
        )
    )
    return 0


def main(description: str | None = None, argv: list[str] | None = None) -> int:
    ap, args = parse_args(description, argv)
    if args.report:
        return report_again(args.report)
    if sys.platform != "linux":
        print("this benchmark reads /proc and uses epoll: Linux only", file=sys.stderr)
        return 2
    raise_nofile()
    with contextlib.suppress(OSError):  # the harness sits with the load, off the server's core
        os.sched_setaffinity(0, {int(LOAD_CPU)})
    size = "quick" if args.quick else "full"
    rounds = 1 if args.quick and args.rounds == 3 else args.rounds
    params = PARAMS[size]
    scenarios, wanted = pick_scenarios(ap, args), pick_servers(ap, args)
    servers, scenarios, ref, notes = set_up(args, wanted, scenarios, params)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    meta = describe(stamp, size, rounds, scenarios, servers, params, ref)
    results = Results(stamp, meta, notes)
    if not args.profile_only:
        per_scenario = {s: rounds for s in scenarios}
        if args.capacity_rounds > 0 and "capacity" in per_scenario:
            per_scenario["capacity"] = args.capacity_rounds
        run_all(results, scenarios, servers, params, per_scenario, args.max_minutes)
        report(results, scenarios, servers, params, ref)
    if args.profile:
        names = args.profile.split(",")
        run_profiles(results, names, servers, params, args.profile_channels)
    return 0
