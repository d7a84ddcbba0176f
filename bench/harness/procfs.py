"""CPU and memory of a process, read from /proc (Linux only)."""

from __future__ import annotations

import os
import resource
import threading
import time

from .config import CLK_TCK


def proc_cpu_s(pid: int) -> float:
    """utime + stime of the whole process (all threads), from /proc/PID/stat."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_ns_precise(pid: int) -> int:
    """On-CPU nanoseconds summed over threads, from /proc/PID/task/*/schedstat (cross-check)."""
    total = 0
    try:
        for t in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                    total += int(f.read().split()[0])
            except (FileNotFoundError, ProcessLookupError):
                pass
    except FileNotFoundError:
        pass
    return total


def proc_mem_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, VmSize and RssAnon in KiB, from /proc/PID/status."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmRSS:", "VmHWM:", "VmSize:", "RssAnon:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


def proc_fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def children_cpu_s() -> float:
    """CPU of this harness's finished children: the publisher, which runs to completion."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


class Usage:
    """CPU and memory of a server at one instant."""

    def __init__(self, pid: int) -> None:
        self.t = time.monotonic()
        self.cpu = proc_cpu_s(pid)
        self.cpu_ns = proc_cpu_ns_precise(pid)
        self.mem = proc_mem_kib(pid)


class RssSampler(threading.Thread):
    """Peak VmRSS of a process, sampled every `every` s in a thread until stop()."""

    def __init__(self, pid: int, every: float = 0.02) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak, self.stop_flag = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            try:
                self.peak = max(self.peak, proc_mem_kib(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            time.sleep(self.every)

    def stop(self) -> int:
        self.stop_flag.set()
        self.join(2)
        return self.peak


#: Kernel counters that say whether a connection storm lost time to a full listen queue.
TCP_STORM_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPReqQFullDoCookies")


def tcp_ext_counters(names: tuple[str, ...] = TCP_STORM_COUNTERS) -> dict[str, int]:
    """TcpExt counters of this network namespace from /proc/net/netstat (machine-wide: any
    other load on the machine adds to them too). A dropped SYN costs the client a 1 s
    retransmit, so ListenOverflows and TCPSynRetrans tell a backlog from a slow server."""
    try:
        with open("/proc/net/netstat") as f:
            lines = [line.split() for line in f if line.startswith("TcpExt:")]
    except OSError:
        return {}
    if len(lines) < 2:
        return {}
    row = dict(zip(lines[0][1:], lines[1][1:], strict=False))
    return {n: int(row[n]) for n in names if n in row}


def counters_delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: b[k] - a[k] for k in a if k in b}
