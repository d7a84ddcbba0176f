"""
Presence across nodes: two real `twistd sse --redis` nodes on one real
redis-server; presence from either shows both, a node killed with SIGKILL
drops out within the report TTL, and join/leave are the deployment's.
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
import pytest_twisted

from sse_twisted.presence import PresenceTracker
from sse_twisted.redis.presence import REPORT_INTERVAL, REPORT_TTL, RedisPresence

from ..support.processes import RawSubscriber, SSEServer, presence_events, wait
from ..support.redis_server import RedisServer, redis_command, wait_until

pytestmark = pytest.mark.redis

SECRET = "redis-presence-secret-0123456789abcdef"


def token(sub: str) -> str:
    return jwt.encode(
        {"sse": {}, "sub": sub, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )


def presence(srv: SSEServer, channel: str = "room") -> Any:
    status, _, body = srv.request("GET", f"/presence?channel={channel}")
    assert status == 200, (status, body)
    return body


def test_presence_covers_every_node_and_a_killed_node_drops_out(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    A stream on each node: presence asked of either node counts both and
    lists both users (and an all-channels stream counts too). After one node
    is killed with SIGKILL (no clean stop), the other's answer drops its
    streams within REPORT_TTL (+ one report interval of slack).
    """
    a = node(redis, "--jwt-secret", SECRET)
    b = node(redis, "--jwt-secret", SECRET)
    on_a = RawSubscriber(a, f"/events?channel=room&token={token('ada')}")
    on_b = RawSubscriber(b, f"/events?channel=room&token={token('bob')}")
    everything = RawSubscriber(b, f"/events?token={token('cy')}")
    for s in (on_a, on_b, everything):
        s.read_until(b": connected")
    both = {"channel": "room", "clients": 3, "users": ["ada", "bob", "cy"]}
    wait(lambda: presence(a) == both, "a sees both nodes", timeout=REPORT_INTERVAL + 5)
    wait(lambda: presence(b) == both, "b sees both nodes", timeout=REPORT_INTERVAL + 5)
    assert presence(a, "other") == {"channel": "other", "clients": 1, "users": ["cy"]}
    b.stop(signal.SIGKILL)
    killed = time.monotonic()
    alone = {"channel": "room", "clients": 1, "users": ["ada"]}
    wait(lambda: presence(a) == alone, "b dropped out", timeout=REPORT_TTL + REPORT_INTERVAL)
    took = time.monotonic() - killed
    print(f"\nkilled node dropped out after {took:.1f}s (REPORT_TTL {REPORT_TTL}s)")
    assert took <= REPORT_TTL + 0.5
    on_a.close()


def test_join_and_leave_are_the_deployments(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """
    A user with a stream on each node joined once; their stream on one node
    ending is no leave while the other holds one; the last one ending is the
    one sse.leave. Both published through the relay, so a watcher on either
    node sees them.
    """
    args = ("--jwt-secret", SECRET, "--presence-events", "--leave-grace", "0.5")
    a = node(redis, *args)
    b = node(redis, *args)
    watcher = RawSubscriber(b, "/events?channel=room")
    watcher.read_until(b": connected")
    on_a = RawSubscriber(a, f"/events?channel=room&token={token('ada')}")
    watcher.read_until(b"event: sse.join")
    on_b = RawSubscriber(b, f"/events?channel=room&token={token('ada')}")
    on_b.read_until(b": connected")
    on_a.close()
    wait(lambda: presence(a)["clients"] == 2, "ada's stream on a gone", timeout=10)
    time.sleep(1.5)  # past the grace period: proving that no leave comes needs time
    a.publish("room", "marker", 1)
    watcher.read_until(b"event: marker")
    assert [name for name, _ in presence_events(watcher)] == ["sse.join"]
    on_b.close()
    watcher.read_until(b"event: sse.leave", timeout=10)
    assert [name for name, _ in presence_events(watcher)] == ["sse.join", "sse.leave"]
    assert presence_events(watcher)[-1][1]["user"] == "ada"
    watcher.close()


class _Sub:
    """The parts of a subscriber the tracker reads."""

    def __init__(self, channels: frozenset[str] | None, user: str | None) -> None:
        self.channels = channels
        self.user = user
        self.readable = channels

    def may_read(self, channel: str) -> bool:
        return self.readable is None or channel in self.readable


@pytest_twisted.ensureDeferred
async def test_a_report_redis_lost_is_written_whole_again(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    Reports send only what changed, yet a node whose hash Redis lost (expired
    while away, or Redis restarted empty) writes all of it again at its next
    report; a clean stop deletes it at once.
    """
    n = await nodes(redis_server.url).ready()
    tracker = PresenceTracker()
    tracker.add(_Sub(frozenset({"x", "y"}), "ada"))  # type: ignore[arg-type]
    reporter = RedisPresence(n.bus, tracker, interval=0.1, ttl=1.0)
    reporter.start()
    await wait_until(lambda: reporter.reports >= 2, what="two reports")
    fields = await redis_command(redis_server.port, "HKEYS", reporter.key)
    assert sorted(fields) == ["c:x", "c:y", "w"]
    await redis_command(redis_server.port, "DEL", reporter.key)
    done = reporter.reports
    await wait_until(lambda: reporter.reports >= done + 3, what="reports after the loss")
    fields = await redis_command(redis_server.port, "HKEYS", reporter.key)
    assert sorted(fields) == ["c:x", "c:y", "w"]
    ttl = int(await redis_command(redis_server.port, "PTTL", reporter.key))
    assert 0 < ttl <= 1000
    await reporter.stop()
    assert int(await redis_command(redis_server.port, "EXISTS", reporter.key)) == 0


def test_a_node_that_stops_cleanly_drops_out_at_once(
    redis: RedisServer, node: Callable[..., SSEServer]
) -> None:
    """A node stopped with SIGTERM deletes its report: the other node's answer drops it at once."""
    a = node(redis)
    b = node(redis)
    on_b = RawSubscriber(b, "/events?channel=room")
    on_b.read_until(b": connected")
    wait(lambda: presence(a)["clients"] == 1, "a sees b's stream", timeout=REPORT_INTERVAL + 5)
    b.stop(signal.SIGTERM)
    assert "Traceback" not in b.output(), b.output()[-3000:]
    took = wait(lambda: presence(a)["clients"] == 0, "b dropped out", timeout=REPORT_TTL + 2)
    assert took < 1.0, took
