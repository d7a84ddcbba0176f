"""
sse.join and sse.leave in a browser's own EventSource (headless Chromium)
against a real `twistd sse --presence-events`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from ..support.clients import subscribe, wait_open, wait_seen
from ..support.processes import SSEServer

pytestmark = pytest.mark.interop

SECRET = "browser-presence-secret-0123456789abcdef"


def token(sub: str) -> str:
    return jwt.encode(
        {"sse": {}, "sub": sub, "exp": int(time.time()) + 3600}, SECRET, algorithm="HS256"
    )


def test_eventsource_sees_join_and_leave(page: Any, start_server: Callable[..., SSEServer]) -> None:
    """
    A page's EventSource listening for sse.join and sse.leave on a channel
    sees another user's first stream open (join, with the channel's clients)
    and, once that EventSource is closed and the grace period has passed, the
    leave; the events carry ids, like every published event.
    """
    server = start_server(
        "--heartbeat", "1", "--jwt-secret", SECRET, "--presence-events", "--leave-grace", "0.5"
    )
    page.goto(f"{server.base}/health")  # same origin as the stream
    names = ["sse.join", "sse.leave"]
    subscribe(page, "watcher", f"/events?channel=room&token={token('ada')}", names)
    wait_open(page, "watcher")
    subscribe(page, "bob", f"/events?channel=room&token={token('bob')}", names)
    wait_open(page, "bob")
    joined = wait_seen(
        page, "watcher", "(es) => es.some((e) => e.type === 'sse.join' && e.data.includes('bob'))"
    )
    bob_join = next(e for e in joined if "bob" in e["data"])
    assert json.loads(bob_join["data"]) == {"user": "bob", "clients": 2}
    assert bob_join["id"]
    page.evaluate("() => window.conns.bob.es.close()")
    left = wait_seen(page, "watcher", "(es) => es.some((e) => e.type === 'sse.leave')")
    leave = next(e for e in left if e["type"] == "sse.leave")
    assert json.loads(leave["data"]) == {"user": "bob", "clients": 1}
    assert leave["id"] and leave["id"] != bob_join["id"]
