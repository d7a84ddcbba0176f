#!/usr/bin/env python3
"""Self-check of the load generator's HTTP and event-stream decoding (no server needed).

A loopback socket server replays hand-made responses, split into 1-byte and
odd-sized writes, and `loadgen sub` must count exactly the events in them:
chunked and identity bodies, chunk extensions, CR / LF / CRLF line ends,
comments, id/event/retry fields, multi-line data, "t"/"s" in any key order
with or without spaces, and strings that merely contain the letters.
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


def _check(name: str, out: str, conns: int) -> bool:
    res = next(
        (json.loads(line[7:]) for line in out.splitlines() if line.startswith("RESULT ")), None
    )
    ok = bool(res) and (res["events"], res["warm_events"], res["comments"]) == (
        MEASURED * conns,
        WARM * conns,
        COMMENTS * conns,
    )
    got = res and (res["events"], res["warm_events"], res["comments"], res["connected"])
    print(f"{'ok  ' if ok else 'FAIL'} {name}: events, warm, comments, connected = {got}")
    return ok


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
        ready, port = threading.Event(), []
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
    print("loadgen decoding:", "all ok" if ok else "FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
