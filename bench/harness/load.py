"""The load generator's processes: `loadgen sub` (streams) and `loadgen pub` (the publisher).

Both are pinned to the load core, have a count and a hard wall-clock limit, and
talk to the harness in lines on stdin/stdout (see the top of loadgen.c).
"""

from __future__ import annotations

import collections
import json
import subprocess
import threading
import time
from typing import Any

from .config import LOAD_CPU, LOADGEN, PAD_100B, pinned, raise_nofile
from .procfs import proc_cpu_s


def _options(**values: object) -> list[str]:
    """loadgen's `--name value` pairs, in the order given (time_limit: --time-limit)."""
    return [x for k, v in values.items() for x in ("--" + k.replace("_", "-"), str(v))]


class LoadSub:
    """One `loadgen sub` process and its line protocol (see loadgen.c)."""

    def __init__(
        self,
        port: int,
        conns: int,
        *,
        time_limit: float,
        stalled: int = 0,
        channels: int = 0,
        expect: int = 0,
        src: str | None = None,
        max_pending: int = 48,
        wait_go: bool = False,
        param: str = "channel",
        suffix: str = "",
    ) -> None:
        args = [str(LOADGEN), "sub"]
        args += _options(
            port=port,
            conns=conns,
            stalled=stalled,
            channels=channels,
            expect=expect,
            max_pending=max_pending,
            time_limit=time_limit,
        )
        if src:
            args += _options(src=src)
        if channels and (param != "channel" or suffix):
            args += _options(param=param, suffix=suffix)
        if wait_go:
            args.append("--wait-go")
        self.proc = subprocess.Popen(
            pinned(LOAD_CPU, args),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            bufsize=1,
            preexec_fn=raise_nofile,
        )
        self.conns, self.stalled = conns, stalled
        self.flags: dict[str, str] = {}
        self.result: dict[str, Any] | None = None
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self.cond:
                if line.startswith("RESULT "):
                    self.result = json.loads(line[7:])
                    self.flags["RESULT"] = "1"
                else:
                    self.flags[line.split(" ", 1)[0]] = line
                self.cond.notify_all()
        with self.cond:
            self.flags["EOF"] = "1"
            self.cond.notify_all()

    def send(self, cmd: str) -> None:
        try:
            assert self.proc.stdin is not None
            self.proc.stdin.write(cmd + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            pass

    def clear(self, flag: str) -> None:
        with self.cond:
            self.flags.pop(flag, None)

    def wait(self, flag: str, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        with self.cond:
            while flag not in self.flags and "EOF" not in self.flags:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.flags.get(flag)

    def stat(self) -> dict[str, int]:
        self.clear("STAT")
        self.send("stat")
        line = self.wait("STAT", 5) or ""
        return {k: int(v) for k, v in (kv.split("=") for kv in line.split()[1:])}

    def quit(self, timeout: float = 15) -> dict[str, Any]:
        self.send("quit")
        self.wait("RESULT", timeout)
        if self.proc.poll() is None:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.reader.join(5)
        return self.result or {}

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)

    def cpu_s(self) -> float:
        try:
            return proc_cpu_s(self.proc.pid)
        except OSError:
            return 0.0


class Subs:
    """Several LoadSub processes treated as one."""

    def __init__(self, subs: list[LoadSub]) -> None:
        self.subs = subs

    def wait_all(self, flag: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        return all(
            s.wait(flag, max(0.0, deadline - time.monotonic())) is not None for s in self.subs
        )

    def send(self, cmd: str) -> None:
        for s in self.subs:
            s.send(cmd)

    def clear(self, flag: str) -> None:
        for s in self.subs:
            s.clear(flag)

    def reset(self, total: int | None = None) -> None:
        """Start a measured phase: zero the counters and forget DONE; with `total`, each
        process says DONE once its streams got that many events between them."""
        self.send("reset")
        self.clear("DONE")
        if total is not None:
            self.send(f"total {total}")

    def cpu_s(self) -> float:
        return sum(s.cpu_s() for s in self.subs)

    def stat(self) -> dict[str, int]:
        agg: collections.Counter[str] = collections.Counter()
        for s in self.subs:
            agg.update(s.stat())
        return dict(agg)

    def quit(self) -> list[dict[str, Any]]:
        return [s.quit() for s in self.subs]

    def kill(self) -> None:
        for s in self.subs:
            s.kill()

    def wait_delivered(self, timeout: float, stall: float = 5.0) -> bool:
        """Until every process said DONE, or no progress for `stall` s, or `timeout`."""
        deadline = time.monotonic() + timeout
        last, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            if self.wait_all("DONE", min(0.5, max(0.0, deadline - time.monotonic()))):
                return True
            ev = self.stat().get("events", 0)
            if ev != last:
                last, last_change = ev, time.monotonic()
            elif time.monotonic() - last_change > stall:
                return False
        return False


def run_pub(
    port: int,
    count: int,
    *,
    rate: float = 0,
    pad: int = PAD_100B,
    channels: int = 0,
    rr: bool = False,
    warm: bool = False,
    conns: int = 1,
    time_limit: float = 60,
    seed: int = 1,
    suffix: str = "",
    channel: str = "",
) -> dict[str, Any]:
    """Publish `count` events (one POST each) and return the publisher's RESULT; with
    `channels`, to ch<k><suffix>; with `channel`, all to that one."""
    args = [str(LOADGEN), "pub"]
    args += _options(
        port=port, count=count, rate=rate, size=pad, conns=conns, time_limit=time_limit, seed=seed
    )
    if channel:
        args += _options(channel=channel)
    if channels:
        args += _options(channels=channels)
        if suffix:
            args += _options(suffix=suffix)
    if rr:
        args.append("--rr")
    if warm:
        args.append("--warm")
    r = subprocess.run(
        pinned(LOAD_CPU, args),
        capture_output=True,
        text=True,
        timeout=time_limit + 15,
        preexec_fn=raise_nofile,
    )
    for line in r.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[7:])
            return result
    raise RuntimeError(f"publisher gave no result: rc={r.returncode} {r.stderr[-300:]}")


def warm_up(subs: Subs, port: int, channels: int = 0, tries: int = 8, suffix: str = "") -> bool:
    """Publish unmeasured events until every connected reader has seen one.

    Proves each subscription is live before anything is measured: a server may
    answer the GET before its subscriber is registered.
    """
    for i in range(tries):
        run_pub(
            port,
            max(1, channels),
            channels=channels,
            rr=True,
            warm=True,
            time_limit=30,
            seed=i + 1,
            suffix=suffix,
        )
        if subs.wait_all("WARM", 1.0 + i):
            return True
    return False


def connect(
    port: int,
    conns: int,
    *,
    procs: int = 1,
    stalled: int = 0,
    channels: int = 0,
    expect: int = 0,
    time_limit: float = 120,
    connect_timeout: float = 60,
    src_base: int = 0,
    ports: list[int] | None = None,
    at_once: bool = False,
    param: str = "channel",
    suffix: str = "",
) -> tuple[Subs, float, dict[str, int]]:
    """Open `conns` streams over `procs` load processes; return when all resolved.

    With `ports`, load process i connects to ports[i % len(ports)] instead of `port`.
    With `at_once`, every process opens all its streams at once (no cap on the
    connects in flight), and all processes start together on one "go": a storm.
    """
    t0 = time.monotonic()
    per = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    subs = []
    for i, n in enumerate(per):
        src = f"127.0.0.{src_base + i}" if src_base else None
        subs.append(
            LoadSub(
                ports[i % len(ports)] if ports else port,
                n,
                time_limit=time_limit,
                stalled=stalled if i == 0 else 0,
                channels=channels,
                expect=expect,
                src=src,
                max_pending=n if at_once else 48,
                wait_go=at_once,
                param=param,
                suffix=suffix,
            )
        )
    group = Subs(subs)
    if at_once:
        group.send("go")
    ok = group.wait_all("CONNECTED", connect_timeout)
    st = group.stat()
    st["all_resolved"] = int(ok)
    return group, time.monotonic() - t0, st


def prewarm(port: int) -> None:
    """A few streams and one event, then close: imports and caches done before the baseline."""
    subs, _, _ = connect(port, 20, time_limit=30, connect_timeout=15)
    try:
        warm_up(subs, port, tries=3)
    finally:
        subs.quit()
    time.sleep(0.5)
