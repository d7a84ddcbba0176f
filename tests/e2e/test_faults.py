"""
Faults on real `twistd sse` processes (issue 9, "Faults on real processes";
issue 10, item 2): connection churn with resets, peers that stop reading,
and a stream that outlives its token. Each test counts what the process
holds (/proc: file descriptors, RSS) and what it says (/metrics) before and
after, and reads its log for tracebacks. Loopback only; every loop bounded
in count and time.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ..servers import SSEServer
from .faults_support import (
    BackgroundPublisher,
    Crowd,
    Member,
    MiB,
    Publisher,
    open_fds,
    poll,
    raise_fd_limit,
    rss,
    settled_fds,
    subscribers,
    text_of,
)

pytestmark = pytest.mark.e2e


def assert_clean_log(server: SSEServer) -> None:
    log = server.output()
    for word in ("Traceback", "Unhandled"):
        assert word not in log, log[-5000:]


@pytest.fixture
def servers() -> Iterator[list[SSEServer]]:
    """Servers a test starts; each is stopped (by PID) and its log checked."""
    started: list[SSEServer] = []
    yield started
    for server in started:
        server.stop()
    for server in started:
        assert_clean_log(server)


# Churn

WAVES = 20
WARM_UP_WAVES = 5
PER_WAVE = 100
WAVE_SECONDS = 1.0


def churn(server: SSEServer, crowd: Crowd, waves: int) -> None:
    """C{waves} waves of subscribers, each open while the next one joins, then gone."""
    previous: list[Member] = []
    for _ in range(waves):
        wave_start = time.monotonic()
        wave = crowd.open_wave(PER_WAVE, timeout=15)
        assert subscribers(server) >= len(wave) + len(previous), "an open stream is not counted"
        crowd.leave(previous, timeout=15)
        previous = wave
        crowd.pump(max(0.0, wave_start + WAVE_SECONDS - time.monotonic()))
    crowd.leave(previous, timeout=15)


@pytest.mark.timeout(90)
def test_churn_leaves_no_trace(servers: list[SSEServer]) -> None:
    """
    2,000 subscribers connect and leave in waves of 100 (two waves open at
    once), half with a TCP reset and half with a normal close, every tenth
    with a small receive buffer so that some are stalled when they go, while
    events are published throughout: afterwards the server holds exactly its
    baseline of file descriptors and streams, its RSS is within 10 MiB of the
    baseline taken after a warm-up of the same churn (500 subscribers, to
    reach the allocator's working size), every publish was answered 200, and
    its log holds no traceback.
    """
    raise_fd_limit(4096)
    server = SSEServer()
    servers.append(server)
    pid = server.pid
    paths = ["/events?channel=churn", "/events", "/events?channel=churn&channel=other"]
    crowd = Crowd(server, paths)

    # Warm-up: fill the history (1,000 events) and churn a little.
    warm = Publisher(server)
    for n in range(10):
        warm.publish([{"channel": "churn", "text": text_of(n * 100 + k, 512)} for k in range(100)])
    warm.close()
    publisher = BackgroundPublisher(server, "churn", rate=100, size=512, limit=60)
    publisher.start()
    churn(server, crowd, WARM_UP_WAVES)
    warmed_up = publisher.finish()
    poll(lambda: subscribers(server) == 0, 10, "streams back to 0 after the warm-up")
    base_fds = settled_fds(pid)
    base_rss = rss(pid)
    warm_joined = crowd.joined

    publisher = BackgroundPublisher(server, "churn", rate=100, size=512, limit=60)
    publisher.start()
    start = time.monotonic()
    churn(server, crowd, WAVES)
    churned = time.monotonic() - start
    published = publisher.finish()

    settle = poll(lambda: subscribers(server) == 0, 10, "sse_subscribers back to 0")
    poll(lambda: open_fds(pid) <= base_fds, 10, f"open fds back to {base_fds}")
    end_fds = open_fds(pid)
    end_rss = rss(pid)
    print(
        f"churn: {crowd.joined - warm_joined} subscribers after {warm_joined} in warm-up "
        f"({crowd.resets} resets, {crowd.fins} closes in all), peak {crowd.peak} open, "
        f"{churned:.1f}s; {published} events published (+{warmed_up} in warm-up); "
        f"streams at 0 after {settle:.2f}s; fds {base_fds} -> {end_fds}; "
        f"RSS {base_rss / MiB:.1f} -> {end_rss / MiB:.1f} MiB"
    )
    assert crowd.joined - warm_joined == WAVES * PER_WAVE
    assert crowd.resets == crowd.fins
    assert end_fds == base_fds
    assert abs(end_rss - base_rss) < 10 * MiB
    assert_clean_log(server)
