"""
C{?replay=} in a browser's own EventSource (headless Chromium) against a
real `twistd sse` process: the last N events, then live ones; a reconnect
after the stream is cut carries Last-Event-ID and is not replayed again.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ..support.clients import subscribe, wait_open, wait_seen
from ..support.processes import SSEServer
from ..support.proxy import Proxy

pytestmark = pytest.mark.interop


def test_eventsource_replay_then_live_and_no_replay_on_reconnect(
    page: Any, start_server: Callable[..., SSEServer], start_proxy: Callable[..., Proxy]
) -> None:
    """
    An EventSource on /events?channel=x&replay=3 receives the last 3 events
    of x, then live ones, each once; a fetch on the same origin reads the
    stream's Last-Event-ID header (the newest id of x). When the connection
    is cut, the browser reconnects to the same URL with Last-Event-ID, and
    gets only what it missed: the Last-Event-ID takes precedence over
    replay=3, so nothing is replayed twice.
    """
    server = start_server("--retry", "300")
    proxy = start_proxy(server.port)
    old = [server.publish("x", "tick", {"n": n})["id"] for n in range(1, 6)]
    server.publish("other", "tick", {"n": 0})  # another channel: never replayed here
    page.goto(f"{proxy.base}/health")
    cursor = page.evaluate(
        """async () => {
          const stop = new AbortController();
          const r = await fetch('/events?channel=x', { signal: stop.signal });
          const id = r.headers.get('last-event-id');
          stop.abort();
          return id;
        }"""
    )
    assert cursor == old[-1]
    subscribe(page, "x", "/events?channel=x&replay=3")
    wait_open(page, "x")
    wait_seen(page, "x", "(es) => es.length === 3")
    live = server.publish("x", "tick", {"n": 6})["id"]
    got = wait_seen(page, "x", f"(es) => es.some((e) => e.id === {json.dumps(live)})")
    assert [e["id"] for e in got] == [*old[2:], live]

    assert proxy.cut(hold=True) > 0
    page.wait_for_function("window.conns.x.errors >= 1", timeout=10_000)
    missed = [server.publish("x", "tick", {"n": n})["id"] for n in (7, 8)]
    proxy.release()
    wait_open(page, "x", opens=2)
    after = server.publish("x", "tick", {"n": 9})["id"]
    got = wait_seen(page, "x", f"(es) => es.some((e) => e.id === {json.dumps(after)})")

    assert [e["id"] for e in got] == [*old[2:], live, *missed, after]
    assert [json.loads(e["data"])["n"] for e in got] == [3, 4, 5, 6, 7, 8, 9]
    reconnect = proxy.heads[-1].decode("latin-1").lower()
    assert reconnect.startswith("get /events?channel=x&replay=3 ")
    assert f"last-event-id: {live}\r\n".lower() in reconnect
