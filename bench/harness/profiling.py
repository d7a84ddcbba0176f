"""py-spy profile of a Python server during a long burst, summed up by function."""

from __future__ import annotations

import collections
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from .config import DEFAULT_QUEUE, LOAD_CPU, VENV, pinned
from .load import connect, run_pub, warm_up
from .metrics import total
from .servers import Server


def profile(name: str, p: dict[str, Any], outdir: Path, channels: int = 0) -> str:
    """py-spy record of `name` during a long burst (to one of `channels` channels each, if
    given); returns a top-functions report."""
    pyspy = VENV / "bin" / "py-spy"
    if not pyspy.exists():
        return "py-spy not installed in bench/.venv"
    srv = Server(name, outdir / f"profile-{name}.log", queue=DEFAULT_QUEUE)
    raw = outdir / f"profile-{name}{'-channels' if channels else ''}.txt"
    try:
        srv.wait_ready()
        subs, _, _ = connect(
            srv.port,
            p["conns"],
            expect=0 if channels else p["events"],
            channels=channels,
            time_limit=300,
            connect_timeout=120,
        )
        try:
            warm_up(subs, srv.port, channels=channels)
            subs.reset(total=p["events"] * (p["conns"] // channels) if channels else None)
            record = [str(pyspy), "record", "--pid", str(srv.pid), "--rate", "250"]
            record += ["--format", "raw", "--output", str(raw), "--nonblocking"]
            spy = subprocess.Popen(
                pinned(LOAD_CPU, record),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1.0)
            pub = run_pub(srv.port, p["events"], pad=p["pad"], channels=channels, time_limit=120)
            subs.wait_delivered(timeout=120, stall=5.0)
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(20)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait(5)
        finally:
            res = subs.quit()
    finally:
        srv.stop()
    delivered = total(res, "events")
    return summarize_profile(raw, name, p, delivered, pub, channels)


def summarize_profile(
    raw: Path,
    name: str,
    p: dict[str, Any],
    delivered: int,
    pub: dict[str, Any],
    channels: int = 0,
    top: int = 25,
) -> str:
    """The top functions by own and by inclusive time, from py-spy's raw (collapsed) stacks."""
    if not raw.exists():
        return f"py-spy wrote nothing for {name}"
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        k = int(n)
        samples += k
        frames = [_short(f) for f in stack.split(";")]
        if frames:
            self_c[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    idle = sum(
        v for f, v in self_c.items() if "poll (" in f or "epoll" in f.lower() or "select (" in f
    )
    what = f"over {channels} channels, each event to one" if channels else "all on every event"
    out = [
        f"py-spy profile of {name}: {p['events']} events back to back, {p['conns']} subscribers {what}; "
        f"{pub.get('ok')} published, {delivered} delivered; {samples} samples at 250 Hz, {idle} of them "
        "idle in the poller",
        "",
        "top by own time (self):",
        "",
    ]
    for f, v in self_c.most_common(top):
        out.append(f"  {100 * v / samples:5.1f}%  {f}")
    out += ["", "top by inclusive time:", ""]
    for f, v in incl.most_common(top):
        out.append(f"  {100 * v / samples:5.1f}%  {f}")
    return "\n".join(out)


def _short(frame: str) -> str:
    """'write (twisted/web/http.py:1234)' -> 'write (twisted/web/http.py)'; paths shortened."""
    frame = frame.strip()
    if "(" in frame and frame.endswith(")"):
        fn, _, loc = frame[:-1].partition(" (")
        path = loc.rsplit(":", 1)[0]
        for marker in ("site-packages/", "lib/python3.11/", "/work/main/"):
            if marker in path:
                path = path.split(marker, 1)[1]
        return f"{fn} ({path})"
    return frame
