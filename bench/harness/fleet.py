"""The fleet scenario (issue #15): K sse_twisted nodes sharing one redis-server, ~19,500
subscribers each, a burst published on one node reaching every subscriber of every node.

Everything is started by this module and stopped by its PID: the nodes and redis-server
also die with the harness (PR_SET_PDEATHSIG), and the load processes quit on EOF of their
stdin and at their own --time-limit, so a harness killed with SIGKILL leaves nothing
running. Every wait has a bound, and the whole run has one (`max_s`, enforced by a
watchdog thread that kills everything and exits).

Steps (each bounded): preflight (fds, ephemeral ports, memory: refuses with the
arithmetic when the machine cannot hold the plan), redis-server, K nodes until
/health is 200, K load processes (one per node, source address 127.0.0.(2+i), all
opened on one "go"), warm-up, a hold of at least one heartbeat interval, a burst
to the first node, then the Redis read phase (idle window, then events to a channel
nobody subscribes to: every node reads each one from Redis and delivers it to no one).
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import resource
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

from .config import (
    DEFAULT_QUEUE,
    REFERENCE,
    log,
    raise_nofile,
)
from .load import LoadSub, Subs, run_pub
from .metrics import lat_ms, per, total
from .procfs import counters_delta, proc_cpu_ns_precise, proc_mem_kib, tcp_ext_counters
from .servers import RedisServer, Server, _Process, free_port, server_cmd

_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    """preexec_fn: the hard open-file limit, and SIGKILL when the harness dies."""
    raise_nofile()
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


# ---------------------------------------------------------------- the processes


class Node(Server):
    """One `twistd sse --redis ...` node on a free loopback port (pinned like every server)."""

    def __init__(
        self, i: int, logfile: Path, redis_url: str, heartbeat: float, redis_timeout: float
    ) -> None:
        self.port = free_port()
        cmd = [*server_cmd(REFERENCE, self.port, heartbeat, DEFAULT_QUEUE), "--redis", redis_url]
        cmd += ["--redis-timeout", f"{redis_timeout:g}"]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        # _Process's, not Server's: its own command line, and the child setup above
        _Process.__init__(self, f"node{i}", cmd, logfile, env=env, preexec_fn=_child_setup)


class Redis(RedisServer):
    """A throwaway redis-server: free loopback port, no persistence."""

    def __init__(self, logfile: Path) -> None:
        super().__init__(logfile, preexec_fn=_child_setup)

    def info(self) -> dict[str, str]:
        """INFO's fields (every section), over a fresh connection; {} when it does not answer."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2.0) as s:
                s.sendall(b"INFO everything\r\n")
                buf = b""
                while b"\r\n" not in buf:
                    buf += s.recv(65536) or b"!"
                head, rest = buf.split(b"\r\n", 1)
                size = int(head[1:])
                while len(rest) < size:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    rest += chunk
        except (OSError, ValueError):
            return {}
        out = {}
        for line in rest[:size].decode(errors="replace").splitlines():
            if ":" in line and not line.startswith("#"):
                k, v = line.split(":", 1)
                out[k] = v
        return out


# ---------------------------------------------------------------- the machine


def meminfo_kib() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            k, v = line.split(":", 1)
            out[k] = int(v.split()[0])
    return out


def tcp_mem_pages() -> int:
    """The kernel's TCP buffer memory in pages (/proc/net/sockstat's `TCP: ... mem N`)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                parts = line.split()
                return int(parts[parts.index("mem") + 1])
    return 0


def port_range() -> tuple[int, int]:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        lo, hi = f.read().split()
    return int(lo), int(hi)


class MemWatch(threading.Thread):
    """MemAvailable and the kernel's TCP memory every 0.5 s, in a thread until stop()."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop_flag = threading.Event()
        self.start_avail = meminfo_kib()["MemAvailable"]
        self.min_avail = self.start_avail
        self.max_tcp_pages = tcp_mem_pages()
        self.samples: list[tuple[float, int]] = []

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop_flag.wait(0.5):
            with contextlib.suppress(OSError, KeyError, ValueError):
                avail = meminfo_kib()["MemAvailable"]
                self.min_avail = min(self.min_avail, avail)
                self.max_tcp_pages = max(self.max_tcp_pages, tcp_mem_pages())
                self.samples.append((round(time.monotonic() - t0, 1), avail // 1024))

    def stop(self) -> None:
        self.stop_flag.set()
        self.join(2)


#: Streams from one source address to one destination (address, port) that connect at
#: full speed. Linux (since 4.6) gives connect() the ports of one parity of
#: ip_local_port_range first (half of it, ~14,100 here) and only then searches the
#: other half, slowly: one node's streams from one address went from ~1,500/s to
#: ~200/s past 14,500 here, with the node idle. So a load process spreads its streams
#: over several source addresses (loadgen --src A,B: stream k from address k % n).
STREAMS_PER_SOURCE = 12000


def sources_per_node(per_node: int) -> int:
    return max(1, -(-per_node // STREAMS_PER_SOURCE))


def preflight(nodes: int, per_node: int, est_kib: float) -> tuple[list[str], dict[str, Any]]:
    """What stops this plan before it starts: fds, ephemeral ports, memory. Returns the
    problems (empty: go) and the arithmetic."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    lo, hi = port_range()
    ports = hi - lo + 1
    avail = meminfo_kib()["MemAvailable"]
    streams = nodes * per_node
    need_kib = streams * est_kib
    problems = []
    # a node: its streams + listening socket, Redis links, log, epoll, pipes, Python's own
    if per_node + 100 > hard:
        problems.append(
            f"{per_node} subscribers a node need ~{per_node + 100} fds; the hard limit is {hard}"
        )
    # one load process a node, its streams over sources_per_node() source addresses
    per_src = sources_per_node(per_node)
    if ports // 2 < STREAMS_PER_SOURCE:
        problems.append(
            f"{STREAMS_PER_SOURCE} streams a source address need that many ephemeral ports "
            f"of one parity; {ports // 2} exist ({lo}-{hi})"
        )
    if nodes * per_src > 250:
        problems.append(f"{nodes} nodes x {per_src} source addresses: 127.0.0.2.. run out at 250")
    if need_kib > 0.8 * avail:
        problems.append(
            f"{streams} streams x {est_kib:.0f} KiB (server + load generator + kernel, both "
            f"ends) = {need_kib / 1024**2:.1f} GiB > 80% of MemAvailable "
            f"{avail / 1024**2:.1f} GiB"
        )
    return problems, {
        "fd_hard_limit": hard,
        "ephemeral_ports": ports,
        "mem_available_mib": avail // 1024,
        "est_kib_per_stream": est_kib,
        "est_need_mib": need_kib / 1024,
        "streams": streams,
        "sources_per_node": per_src,
    }


# ---------------------------------------------------------------- the run


class Fleet:
    """redis-server, the nodes and the load processes of one run; stop() by PID, idempotent."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.redis: Redis | None = None
        self.nodes: list[Node] = []
        self.subs: list[LoadSub] = []
        self.lock = threading.Lock()
        self.stopped = False

    def stop(self) -> None:
        with self.lock:
            if self.stopped:
                return
            self.stopped = True
        for s in self.subs:
            with contextlib.suppress(Exception):
                s.kill()
        for n in self.nodes:
            with contextlib.suppress(Exception):
                n.stop()
        if self.redis:
            with contextlib.suppress(Exception):
                self.redis.stop()

    def pids(self) -> list[int]:
        procs: list[Any] = [*self.subs, *self.nodes, *([self.redis] if self.redis else [])]
        return [p.proc.pid for p in procs]


def _cpu_ns(pids: list[int]) -> list[int]:
    return [proc_cpu_ns_precise(p) for p in pids]


def _rss_kib(pid: int) -> int:
    try:
        return proc_mem_kib(pid).get("VmRSS", 0)
    except OSError:
        return 0


def _pub(
    port: int,
    count: int,
    *,
    rate: float,
    channel: str | None,
    time_limit: float,
    warm: bool = False,
    seed: int = 1,
    conns: int = 1,
) -> dict[str, Any]:
    """loadgen pub: `count` events to one channel (ch0 by --channels 1, or `channel`), over
    `conns` keep-alive connections (one POST in flight on each)."""
    if channel is None:
        return run_pub(
            port, count, rate=rate, channels=1, rr=True, warm=warm, time_limit=time_limit, seed=seed
        )
    return run_pub(
        port, count, rate=rate, channel=channel, conns=conns, time_limit=time_limit, seed=seed
    )


def settle_until_idle(pids: list[int], cap: float, every: float = 0.5) -> None:
    """Until no process spends more than 2 % of a core over `every` s (at least 1 s, at most
    `cap`): the nodes have read and delivered all that was published."""
    deadline = time.monotonic() + cap
    time.sleep(1.0)
    last = _cpu_ns(pids)
    while time.monotonic() < deadline:
        time.sleep(every)
        now = _cpu_ns(pids)
        if all(b - a < 0.02 * every * 1e9 for a, b in zip(last, now, strict=True)):
            return
        last = now


def run_fleet(
    fleet: Fleet,
    *,
    nodes: int,
    per_node: int,
    heartbeat: float,
    redis_timeout: float,
    hold: float,
    events: int,
    read_events: int,
    read_rate: float,
    read_conns: int,
    max_pending: int,
    connect_timeout: float,
    deadline: float,
) -> dict[str, Any]:
    """The measurement; every wait bounded by its own limit and by `deadline` (monotonic)."""

    def left(cap: float) -> float:
        rest = deadline - time.monotonic()
        if rest <= 5:
            raise TimeoutError("the run's time bound (--max-minutes) is up")
        return min(cap, rest - 5)

    out: dict[str, Any] = {
        "nodes": nodes,
        "per_node": per_node,
        "heartbeat_s": heartbeat,
        "redis_timeout_s": redis_timeout,
    }
    steps: dict[str, float] = {}
    watch = MemWatch()
    watch.start()
    mem0 = meminfo_kib()
    try:
        t = time.monotonic()
        fleet.redis = Redis(fleet.outdir / "redis.log")
        fleet.redis.wait_ready(timeout=left(30))
        for i in range(nodes):
            fleet.nodes.append(
                Node(i, fleet.outdir / f"node{i}.log", fleet.redis.url, heartbeat, redis_timeout)
            )
        for n in fleet.nodes:
            n.wait_health(timeout=left(60 + 5 * nodes))
        steps["start_s"] = time.monotonic() - t
        log(
            f"redis-server (pid {fleet.redis.pid}, port {fleet.redis.port}) and {nodes} nodes "
            f"(pids {' '.join(str(n.pid) for n in fleet.nodes)}) up in {steps['start_s']:.1f}s"
        )
        node_pids = [n.pid for n in fleet.nodes]
        base_rss = [_rss_kib(p) for p in node_pids]
        redis_base = fleet.redis.info()
        mem_base = meminfo_kib()["MemAvailable"]
        tcp_base = tcp_mem_pages()

        # Connect: one load process a node, each from its own source address, all on one "go".
        limit = max(60.0, deadline - time.monotonic())
        per_src = sources_per_node(per_node)
        for i, n in enumerate(fleet.nodes):
            src = ",".join(f"127.0.0.{2 + i * per_src + j}" for j in range(per_src))
            fleet.subs.append(
                LoadSub(
                    n.port,
                    per_node,
                    time_limit=limit,
                    channels=1,
                    expect=events,
                    src=src,
                    max_pending=max_pending,
                    wait_go=True,
                )
            )
        subs = Subs(fleet.subs)
        tcp0 = tcp_ext_counters()
        progress: list[tuple[float, int]] = []
        t = time.monotonic()
        subs.send("go")
        last_log = t
        resolved = False
        while not resolved:
            resolved = subs.wait_all("CONNECTED", left(5.0))
            if not resolved and time.monotonic() - t > connect_timeout:
                break
            if time.monotonic() - last_log > 10:
                st = subs.stat()
                avail = meminfo_kib()["MemAvailable"] // 1024
                tcp = counters_delta(tcp0, tcp_ext_counters())
                log(
                    f"connecting: {st.get('connected', 0)} connected, {st.get('failed', 0)} "
                    f"failed, {time.monotonic() - t:.0f}s, MemAvailable {avail} MiB, {tcp}"
                )
                progress.append((round(time.monotonic() - t, 1), st.get("connected", 0)))
                last_log = time.monotonic()
        steps["connect_wall_s"] = time.monotonic() - t
        tcp_connect = counters_delta(tcp0, tcp_ext_counters())
        st = subs.stat()
        log(
            f"connected {st.get('connected', 0)} (failed {st.get('failed', 0)}) in "
            f"{steps['connect_wall_s']:.1f}s"
        )

        # Warm: one unmeasured event to every stream, so every subscription is live.
        t = time.monotonic()
        warm = False
        for i in range(3):
            _pub(fleet.nodes[0].port, 1, rate=0, channel=None, warm=True, seed=i + 1, time_limit=30)
            if subs.wait_all("WARM", left(60.0)):
                warm = True
                break
        steps["warm_s"] = time.monotonic() - t
        log(f"warm={warm} in {steps['warm_s']:.1f}s")

        # Hold: at least one heartbeat interval; what every process holds then.
        s0 = [s.stat() for s in fleet.subs]
        time.sleep(min(hold, left(hold)))
        s1 = [s.stat() for s in fleet.subs]
        held_rss = [_rss_kib(p) for p in node_pids]
        load_rss = [_rss_kib(s.proc.pid) for s in fleet.subs]
        redis_held = fleet.redis.info()
        mem_held = meminfo_kib()
        tcp_held = tcp_mem_pages()
        fds = []
        for p in node_pids:
            try:
                fds.append(len(os.listdir(f"/proc/{p}/fd")))
            except OSError:
                fds.append(-1)

        # Burst: `events` events back to back to the first node, on the channel everyone reads.
        subs.send("reset")
        for s in fleet.subs:
            s.clear("DONE")
        for s, st1 in zip(fleet.subs, s1, strict=True):
            s.send(f"total {st1.get('open_readers', per_node) * events}")
        pids_all = [*node_pids, fleet.redis.pid]
        c0 = _cpu_ns(pids_all)
        t = time.monotonic()
        pub = _pub(fleet.nodes[0].port, events, rate=0, channel=None, time_limit=left(60))
        complete = subs.wait_delivered(timeout=left(240), stall=20.0)
        steps["burst_s"] = time.monotonic() - t
        c1 = _cpu_ns(pids_all)
        log(f"burst: complete={complete} in {steps['burst_s']:.1f}s")

        # Redis read phase: an idle window, then `read_events` to a channel nobody reads:
        # every node reads each from Redis and delivers it to no one. Both windows last
        # whole heartbeat intervals, so each holds the same heartbeat rounds per second;
        # the idle window's CPU, scaled to the read window's length, is subtracted.
        period = heartbeat if heartbeat > 0 else 1.0
        planned = read_events / read_rate + 2.0 if read_rate else 5.0
        idle_len = math.ceil(planned / period) * period
        ti0, i0 = time.monotonic(), _cpu_ns(pids_all)
        time.sleep(min(idle_len, left(idle_len)))
        ti1, i1 = time.monotonic(), _cpu_ns(pids_all)
        rpub = _pub(
            fleet.nodes[0].port,
            read_events,
            rate=read_rate,
            conns=read_conns,
            channel="nobody",
            time_limit=left(planned + 30),
        )
        settle_until_idle(node_pids, cap=left(60.0))  # until every node has read them all
        spent = time.monotonic() - ti1
        time.sleep(min(math.ceil(spent / period) * period - spent, left(period)))
        tr1, r1 = time.monotonic(), _cpu_ns(pids_all)
        scale = (tr1 - ti1) / (ti1 - ti0)
        redis_end = fleet.redis.info()
        results = subs.quit()
        fleet.subs = []
    finally:
        watch.stop()

    # ------------------------------------------------------------ figures
    per_nodes: list[dict[str, Any]] = []
    hb_per_node: list[int] = []
    for i in range(nodes):
        r = results[i] if i < len(results) else {}
        held = int(r.get("open_readers", 0))
        hb = s1[i].get("comments", 0) - s0[i].get("comments", 0)
        hb_per_node.append(hb)
        conn_s = (
            (r.get("sub_hdr_max_ns", 0) - r.get("sub_t0_ns", 0)) / 1e9
            if r.get("sub_hdr_max_ns")
            else None
        )
        burst_ns = c1[i] - c0[i]
        read_ns = (r1[i] - i1[i]) - (i1[i] - i0[i]) * scale
        per_nodes.append(
            {
                "node": i,
                "held": held,
                "failed": int(r.get("failed", 0)),
                "rss_mib": held_rss[i] / 1024,
                "kib_per_sub": per(held_rss[i] - base_rss[i], held),
                "fds": fds[i],
                "connect_s": conn_s,
                "delivered": int(r.get("events", 0)),
                "delivered_pct": 100.0 * int(r.get("events", 0)) / (held * events) if held else 0.0,
                "complete_subs": int(r.get("readers_complete", 0)),
                "heartbeats": hb,
                "heartbeats_per_sub": per(hb, held),
                "burst_cpu_ms": burst_ns / 1e6,
                "burst_cpu_us_per_delivery": per(burst_ns / 1e3, int(r.get("events", 0))),
                "read_cpu_us_per_event": per(read_ns / 1e3, rpub.get("ok", 0)),
                "read_cpu_raw_ms": (r1[i] - i1[i]) / 1e6,
                "idle_cpu_ms": (i1[i] - i0[i]) / 1e6,
                "load_rss_mib": load_rss[i] / 1024,
                **lat_ms([r]),
            }
        )
    held_total = total(results, "open_readers")
    delivered = total(results, "events")
    t0s = [r["sub_t0_ns"] for r in results if r.get("sub_t0_ns")]
    hdrs = [r["sub_hdr_max_ns"] for r in results if r.get("sub_hdr_max_ns")]
    ri = nodes  # Redis's index in the CPU samples
    mem_drop = mem_base - mem_held["MemAvailable"]
    out.update(
        {
            "per_node": per_nodes,
            "held": held_total,
            "target": nodes * per_node,
            "failed": total(results, "failed"),
            "connect_s": (max(hdrs) - min(t0s)) / 1e9 if hdrs and t0s else None,
            "warm": warm,
            "complete": complete,
            "burst_events": events,
            "published_ok": pub.get("ok"),
            "delivered": delivered,
            "delivered_pct": 100.0 * delivered / (held_total * events) if held_total else 0.0,
            "complete_subs": total(results, "readers_complete"),
            "heartbeats": sum(hb_per_node),
            "hold_s": hold,
            "nodes_rss_mib": sum(held_rss) / 1024,
            "kib_per_sub": per(sum(held_rss) - sum(base_rss), held_total),
            "load_rss_mib": sum(load_rss) / 1024,
            "mem_available_drop_mib": mem_drop / 1024,
            "machine_kib_per_stream": per(mem_drop, held_total),
            # the same from its parts (MemAvailable moves with everything else on the machine):
            # nodes' growth + load generators + kernel slab growth + TCP buffers held
            "parts_kib_per_stream": per(
                sum(held_rss)
                - sum(base_rss)
                + sum(load_rss)
                + mem_held.get("Slab", 0)
                - mem0.get("Slab", 0)
                + (tcp_held - tcp_base) * 4,
                held_total,
            ),
            "slab_mib": (mem_held.get("Slab", 0) - mem0.get("Slab", 0)) / 1024,
            "tcp_mem_mib_held": (tcp_held - tcp_base) * 4 / 1024,
            "tcp_mem_mib_max": (watch.max_tcp_pages - tcp_base) * 4 / 1024,
            "mem_available_min_mib": watch.min_avail // 1024,
            "burst_nodes_cpu_ms": sum(c1[i] - c0[i] for i in range(nodes)) / 1e6,
            "burst_redis_cpu_ms": (c1[ri] - c0[ri]) / 1e6,
            "burst_nodes_cpu_us_per_delivery": per(
                sum(c1[i] - c0[i] for i in range(nodes)) / 1e3, delivered
            ),
            "read_events": rpub.get("ok"),
            "read_rate": read_rate,
            "read_conns": read_conns,
            "read_published_per_s": per(
                rpub.get("ok", 0),
                (rpub.get("last_resp_ns", 0) - rpub.get("first_ns", 0)) / 1e9,
            ),
            "read_window_s": tr1 - ti1,
            "idle_window_s": ti1 - ti0,
            "read_cpu_us_per_event_mean": per(
                sum(p["read_cpu_us_per_event"] or 0 for p in per_nodes), nodes
            ),
            "redis_cpu_us_per_publish_read": per(
                ((r1[ri] - i1[ri]) - (i1[ri] - i0[ri]) * scale) / 1e3, rpub.get("ok", 0)
            ),
            "redis_idle_cpu_pct": 100 * (i1[ri] - i0[ri]) / 1e9 / (ti1 - ti0),
            "redis_used_memory_mib": int(redis_held.get("used_memory", 0)) / 1024**2,
            "redis_rss_mib": int(redis_held.get("used_memory_rss", 0)) / 1024**2,
            "redis_clients": int(redis_held.get("connected_clients", 0)),
            "redis_cpu_total_s": float(redis_end.get("used_cpu_sys", 0))
            + float(redis_end.get("used_cpu_user", 0)),
            "redis_base_used_memory_mib": int(redis_base.get("used_memory", 0)) / 1024**2,
            "steps": steps,
            "connect_progress": progress,
            "tcp_during_connect": tcp_connect,
            **lat_ms(results),
            "_raw": {"pub": pub, "read_pub": rpub, "mem_samples": watch.samples[-2000:]},
        }
    )
    return out
