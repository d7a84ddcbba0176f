#!/usr/bin/env python3
"""Self-check of the load generator's HTTP and event-stream decoding (no server needed).

A loopback socket server replays hand-made responses, split into 1-byte and
odd-sized writes, and `loadgen sub` must count exactly the events in them:
chunked and identity bodies, chunk extensions, CR / LF / CRLF line ends,
comments, id/event/retry fields, multi-line data, "t"/"s" in any key order
with or without spaces, and strings that merely contain the letters.
Then the per-reader summaries: the "s" sequence (duplicates, gaps, events
missing at the start or end against "published N"), and a "cut": every
stream closed at once and reopened with Last-Event-ID (the id of the last
event dispatched, per the WHATWG rules: an id-only block counts, an
over-long id field is ignored), events published before the new headers
counted as replayed, RECONNECTED reported.
Run: python3 bench/check_loadgen.py  (after run.py has built bench/build/loadgen)
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

LOADGEN = Path(__file__).resolve().parent / "build" / "loadgen"

EVENTS = (
    b": hello\n\nretry: 2000\n\n"
    b'id: 1\nevent: tick\ndata: {"t": 5, "s": 0, "p": "xx"}\n\n'  # Python spacing
    b'event: tick\r\ndata: {"p":"x\\"t\\":9","s":1,"t":6}\r\n\r\n'  # Go key order, escaped quote
    b'data: {"s":2,\rdata: "t":7}\r\r'  # CR line ends, data split over two lines
    b'data: {"w": 1, "p": "ts"}\n\n'  # warm-up event: no t/s
    b": ping\n\n"
    b'id: 4\ndata:{"t":8,"s":3,"q":{"t":"no"}}\n\n'  # no space after colon
)
MEASURED, WARM, COMMENTS = 4, 1, 2


def chunked(body: bytes, sizes: list[int]) -> bytes:
    out, i, k = b"", 0, 0
    while i < len(body):
        n = sizes[k % len(sizes)]
        part = body[i : i + n]
        ext = b";x=y" if k % 3 == 1 else b""
        out += b"%x%s\r\n%s\r\n" % (len(part), ext, part)
        i, k = i + n, k + 1
    return out


def serve(payload: bytes, step: int, conns: int, ready: threading.Event, port: list[int]) -> None:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(conns)
    port.append(srv.getsockname()[1])
    ready.set()
    socks = []
    for _ in range(conns):
        c, _ = srv.accept()
        c.recv(4096)
        socks.append(c)
    for i in range(0, len(payload), step):
        for c in socks:
            c.sendall(payload[i : i + step])
        if step < 8:
            time.sleep(0.0002)
    time.sleep(0.3)
    for c in socks:
        c.close()
    srv.close()


def _result(out: str) -> dict[str, Any] | None:
    return next(
        (json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None
    )


def _check(name: str, out: str, conns: int) -> bool:
    res = _result(out) or {}
    ok = bool(res) and (
        res["events"],
        res["warm_events"],
        res["comments"],
        res["dups"],
        res["gaps"],
        res["sub_readers"],
    ) == (MEASURED * conns, WARM * conns, COMMENTS * conns, 0, 0, conns)
    got = res and (res["events"], res["warm_events"], res["comments"], res["dups"], res["gaps"])
    print(f"{'ok  ' if ok else 'FAIL'} {name}: events, warm, comments, dups, gaps = {got}")
    return ok


def _expect(name: str, res: dict[str, Any] | None, want: dict[str, Any]) -> bool:
    """Every key of `want` has that value in the RESULT; print the difference if not."""
    got = {k: (res or {}).get(k) for k in want}
    ok = got == want
    sys.stdout.flush()
    print(f"{'ok  ' if ok else 'FAIL'} {name}" + ("" if ok else f": got {got}, want {want}"))
    return ok


def _send(p: subprocess.Popen[str], cmd: str) -> None:
    assert p.stdin is not None
    p.stdin.write(cmd + "\n")
    p.stdin.flush()


def _ask(p: subprocess.Popen[str], cmd: str, flag: str, timeout: float = 10) -> str:
    """Send a command to `loadgen sub` and return its first answer line starting with `flag`
    (the load generator's --time-limit bounds a read that gets nothing)."""
    assert p.stdout is not None
    _send(p, cmd)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = p.stdout.readline()
        if not line:
            break
        if line.startswith(flag):
            return line
    raise TimeoutError(f"no {flag} from loadgen after {cmd!r}")


def _wait_events(p: subprocess.Popen[str], n: int, timeout: float = 10) -> None:
    """Poll `stat` until the load generator counted `n` measured events."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stat = dict(kv.split("=") for kv in _ask(p, "stat", "STAT").split()[1:])
        if int(stat["events"]) >= n:
            return
        time.sleep(0.05)
    raise TimeoutError(f"loadgen did not count {n} events")


HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nConnection: close\r\n\r\n"


def _ev(s: int, t: int = 1, id_: bytes | None = None, nl: bytes = b"\n") -> bytes:
    """One measured event with sequence number `s` and publish time `t` (ns)."""
    line = b"id: %s%s" % (id_, nl) if id_ is not None else b""
    return line + b'data: {"t":%d,"s":%d}%s%s' % (t, s, nl, nl)


def _loadgen(port: int, conns: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(LOADGEN), "sub", "--port", str(port), "--conns", str(conns), "--time-limit", "20"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def check_sequence(conns: int = 2) -> bool:
    """s = 0, 1, 1, 3 of 6 published: one duplicate, one gap, two missing at the end."""
    body = _ev(0) + _ev(1) + _ev(1) + _ev(3)
    ready, port = threading.Event(), list[int]()
    t = threading.Thread(target=serve, args=(HEAD + body, 5, conns, ready, port), daemon=True)
    t.start()
    ready.wait(5)
    p = _loadgen(port[0], conns)
    t.join(15)
    time.sleep(0.2)
    out, _ = p.communicate("published 6\nquit\n", timeout=15)
    want = {"events": 4 * conns, "dups": conns, "dup_clients": conns, "gaps": conns}
    want |= {"lost_head": 0, "lost_tail": 2 * conns, "lossy_clients": conns, "published": 6}
    return _expect("sequence summary: duplicate, gap, missing tail", _result(out), want)


def check_cut(conns: int = 3) -> bool:
    """A cut reopens every stream with the last dispatched id; replays count as replayed."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(2 * conns)
    port = srv.getsockname()[1]
    first = HEAD + (
        _ev(0, id_=b"p-1")
        + _ev(1, id_=b"p-2", nl=b"\r\n")
        + b"id: p-3\n\n"  # an id-only block is dispatched: the last id is p-3
        + b"id: "
        + b"x" * 300
        + b'\ndata: {"w":1}\n\n'  # too long: ignored, p-3 stays
    )
    requests: list[bytes] = []
    p = _loadgen(port, conns)
    ok = True
    try:
        socks = []
        for _ in range(conns):
            c, _ = srv.accept()
            requests.append(c.recv(4096))
            socks.append(c)
        for c in socks:
            for i in range(0, len(first), 7):
                c.sendall(first[i : i + 7])
        _wait_events(p, 2 * conns)
        _send(p, "cut")
        again = []
        for _ in range(conns):
            c, _ = srv.accept()
            requests.append(c.recv(4096))
            again.append(c)
        # s=2 and 3 published long ago (replayed), s=4 far in the future (live)
        for c in again:
            replay = _ev(2, t=1, id_=b"p-4") + _ev(3, t=1, id_=b"p-5")
            c.sendall(HEAD + replay + _ev(4, t=1 << 62, id_=b"p-6"))
        reconnected = _ask(p, "stat", "RECONNECTED").split()
        _wait_events(p, 5 * conns)
        out, _ = p.communicate("published 5\nquit\n", timeout=15)
        for c in socks + again:
            c.close()
    finally:
        srv.close()
        if p.poll() is None:
            p.kill()
    lei = [
        next(
            (h.split(b": ", 1)[1] for h in r.split(b"\r\n") if h.startswith(b"Last-Event-ID")), None
        )
        for r in requests
    ]
    want_lei = [None] * conns + [b"p-3"] * conns
    ok = lei == want_lei and reconnected == ["RECONNECTED", str(conns), "0"]
    print(f"{'ok  ' if ok else 'FAIL'} cut: Last-Event-ID sent = {lei}, {' '.join(reconnected)}")
    want = {"cut": conns, "reconnected": conns, "refailed": 0, "replayed": 2 * conns}
    want |= {"replayed_clients": conns, "replayed_max": 2, "dups": 0, "gaps": 0}
    want |= {"lost_head": 0, "lost_tail": 0, "lossy_clients": 0, "events": 5 * conns}
    return _expect("cut: reconnected, replayed, nothing lost", _result(out), want) and ok


def main() -> int:
    if not LOADGEN.exists():
        print(
            "build it first: gcc -O2 -o bench/build/loadgen bench/loadgen.c (run.py does this)",
            file=sys.stderr,
        )
        return 2
    hdr = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
    cases = [
        (
            "chunked, 1-byte writes, 5-byte chunks",
            hdr + b"Transfer-Encoding: chunked\r\n\r\n",
            chunked(EVENTS, [5]),
            1,
        ),
        (
            "chunked, odd chunks, 7-byte writes",
            hdr + b"transfer-encoding: Chunked\r\n\r\n",
            chunked(EVENTS, [1, 13, 64, 3]),
            7,
        ),
        (
            "chunked, one chunk, one write",
            hdr + b"Transfer-Encoding: chunked\r\n\r\n",
            chunked(EVENTS, [4096]),
            65536,
        ),
        ("identity body, 3-byte writes", hdr + b"Connection: close\r\n\r\n", EVENTS, 3),
    ]
    ok = True
    for name, head, body, step in cases:
        ready, port = threading.Event(), list[int]()
        t = threading.Thread(target=serve, args=(head + body, step, 3, ready, port), daemon=True)
        t.start()
        ready.wait(5)
        p = subprocess.Popen(
            [str(LOADGEN), "sub", "--port", str(port[0]), "--conns", "3", "--time-limit", "10"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        t.join(15)
        time.sleep(0.2)
        out, _ = p.communicate("quit\n", timeout=15)
        ok &= _check(name, out, 3)
    ok &= check_sequence()
    ok &= check_cut()
    print("loadgen decoding:", "all ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
