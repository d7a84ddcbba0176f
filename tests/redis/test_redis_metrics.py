"""
The Redis path's metrics against a real redis-server: connected, reconnects,
entries read, read lag and round trips move as the bus works and as Redis
goes away and comes back.
"""

from __future__ import annotations

import re
from typing import Any

import pytest_twisted
from prometheus_client import generate_latest

from sse_twisted import SSEBroker
from sse_twisted.event import Item
from sse_twisted.metrics import metrics_registry

from ..support.redis_server import Node, RedisServer, global_reactor, wait_until


def scrape(broker: SSEBroker) -> dict[str, float]:
    """The exposition's samples, by name (with labels, if any)."""
    text = generate_latest(metrics_registry(broker)).decode()
    return {
        m[1]: float(m[2]) for m in re.finditer(r"^(sse_redis_\S+) (\S+)$", text, flags=re.MULTILINE)
    }


@pytest_twisted.ensureDeferred
async def test_redis_metrics_move(redis_servers: list[RedisServer], nodes: Any) -> None:
    """
    With Redis up: connected is 1, every entry read is counted, the read lag
    is that of a fresh read (well under a second here), and the round trips
    (log in, catch up, publish, checks) fill the histogram. Redis killed:
    connected turns 0. Back: connected 1 and one reconnect counted.
    """
    server = RedisServer()
    redis_servers.append(server)
    await server.start()
    a: Node = await nodes(server.url, max_backoff=0.2).ready()
    broker = SSEBroker(relay=a.bus, history=a.bus.history, reactor=global_reactor(), heartbeat=0)
    before = scrape(broker)
    assert before["sse_redis_connected"] == 1
    assert before["sse_redis_reconnects_total"] == 0
    assert before["sse_redis_read_events_total"] == 0
    assert "sse_redis_read_lag_seconds" not in before  # nothing read yet
    assert before["sse_redis_roundtrip_seconds_count"] >= 2  # logged in, caught up

    await a.bus.publish([Item.create("c", text=str(n)) for n in range(5)])
    # The broker took on_event over: wait on what the metrics say.
    await wait_until(lambda: scrape(broker)["sse_redis_read_events_total"] >= 5, 10, "5 read")
    after = scrape(broker)
    assert after["sse_redis_read_events_total"] == 5
    assert 0 <= after["sse_redis_read_lag_seconds"] < 1
    assert after["sse_redis_roundtrip_seconds_count"] > before["sse_redis_roundtrip_seconds_count"]
    assert (
        after['sse_redis_roundtrip_seconds_bucket{le="+Inf"}']
        == (after["sse_redis_roundtrip_seconds_count"])
    )

    server.kill()
    await wait_until(lambda: scrape(broker)["sse_redis_connected"] == 0, 10, "disconnected")
    await server.start()
    await a.ready()
    back = scrape(broker)
    assert back["sse_redis_connected"] == 1
    assert back["sse_redis_reconnects_total"] == 1
