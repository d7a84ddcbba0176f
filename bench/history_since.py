"""
Micro-benchmark of C{MemoryHistory.since()}: the lookup behind every resume
(C{Last-Event-ID}) and every catch-up step.

A reconnect storm resumes thousands of clients against a full history, each
from an id near its tail (they missed a few events). With a lookup that
walks from the oldest event, each costs O(history); this measures 5,000
lookups against a history of 1,000 events, from ids at the tail (the storm),
spread over the whole history, and at the oldest event, each asking for up
to 64 events (the catch-up batch).

Run: C{.venv/bin/python bench/history_since.py}. Not a test: a figure for a
note, printed as one line per case.
"""

from __future__ import annotations

import time

from sse_twisted.event import Event
from sse_twisted.history import MemoryHistory

HISTORY = 1000
CALLS = 5000
LIMIT = 64
ROUNDS = 5


def build() -> tuple[MemoryHistory, list[str]]:
    history = MemoryHistory(HISTORY)
    # More than the history holds, so the ring has wrapped, as it has in a
    # server that has been up for a while.
    for n in range(3 * HISTORY):
        history.append(Event.create("c", "e", n, id=f"r-{n}"))
    ids = [e.id for e in history if e.id is not None]
    return history, ids


def case(history: MemoryHistory, ids: list[str]) -> float:
    """Best of L{ROUNDS}: seconds for L{CALLS} lookups cycling over C{ids}."""
    best = float("inf")
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for n in range(CALLS):
            got = history.since(ids[n % len(ids)], None, LIMIT)
            assert got is not None
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    history, ids = build()
    cases = {
        "tail (missed 1-5 events)": ids[-6:-1],
        "spread over the history": ids,
        "oldest event": ids[:1],
    }
    for name, wanted in cases.items():
        seconds = case(history, wanted)
        print(
            f"{CALLS} since() calls, history {HISTORY}, {name}: "
            f"{seconds * 1000:.1f} ms ({seconds / CALLS * 1e6:.2f} us per call)"
        )
    latest = getattr(history, "latest", None)
    if latest is None:  # before latest() existed
        return
    # The cursor each new stream is told (its Last-Event-ID header): one
    # lookup per subscribe, on a channel that published once, 999 events ago.
    history.append(Event.create("quiet", "e", 0, id="q-0"))
    for n in range(HISTORY - 1):
        history.append(Event.create("c", "e", n, id=f"s-{n}"))
    for name, channels in {
        "every channel": None,
        "a quiet channel (a set)": frozenset({"quiet"}),
        "a quiet channel (a filter, scanned)": ["quiet"],
    }.items():
        best = float("inf")
        for _ in range(ROUNDS):
            start = time.perf_counter()
            for _ in range(CALLS):
                latest(channels, 1)
            best = min(best, time.perf_counter() - start)
        print(
            f"{CALLS} latest(_, 1) calls, history {HISTORY}, {name}: "
            f"{best * 1000:.1f} ms ({best / CALLS * 1e6:.2f} us per call)"
        )


if __name__ == "__main__":
    main()
