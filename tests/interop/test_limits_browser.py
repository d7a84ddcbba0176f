"""
Chromium's own EventSource against `--max-clients 1`: a browser that is
turned away keeps retrying (it never gives up), and gets in by itself once
the slot is free.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from ..support.clients import seen, subscribe, wait_open, wait_seen
from ..support.processes import SSEServer
from .conftest import PAGE_TIMEOUT_MS

pytestmark = pytest.mark.interop

#: Records the readyState each error leaves an EventSource in (0: CONNECTING, 2: CLOSED).
ERROR_STATES_JS = """
(k) => {
  const conn = window.conns[k];
  conn.states = [];
  conn.es.addEventListener('error', () => conn.states.push(conn.es.readyState));
}
"""


def _clients(server: SSEServer) -> int:
    return int(server.request("GET", "/health")[2]["clients"])


def _wait_clients(server: SSEServer, n: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while _clients(server) != n:
        assert time.monotonic() < deadline, f"expected {n} open streams"
        time.sleep(0.05)


def test_turned_away_browser_retries_and_gets_in(
    page: Any, browser: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    Page A's EventSource takes the only slot. Page B's is turned away (200,
    a comment, a retry hint, the end): it sees no events and each error
    leaves it CONNECTING, never CLOSED, while it keeps reconnecting. Once A
    closes its EventSource, B gets in by itself within seconds and receives
    the next event.
    """
    server = start_server("--max-clients", "1", "--retry", "300", "--heartbeat", "1")
    page.goto(f"{server.base}/health")
    subscribe(page, "a", "/events")
    wait_open(page, "a")
    _wait_clients(server, 1)

    context_b = browser.new_context()
    try:
        context_b.set_default_timeout(PAGE_TIMEOUT_MS)
        page_b = context_b.new_page()
        page_b.goto(f"{server.base}/health")
        subscribe(page_b, "b", "/events")
        page_b.evaluate(ERROR_STATES_JS, "b")
        # Turned away at least three times, reconnecting by itself each time.
        page_b.wait_for_function("() => window.conns.b.errors >= 3", timeout=10_000)
        first = server.publish("news", "tick", {"n": 1})
        assert first["clients"] == 1  # A only
        wait_seen(page, "a", f"(es) => es.some((e) => e.id === {first['id']!r})")
        page_b.wait_for_function("() => window.conns.b.errors >= 4", timeout=10_000)
        assert seen(page_b, "b") == []
        states = page_b.evaluate("() => window.conns.b.states")
        assert states and set(states) == {0}, states  # CONNECTING, never CLOSED
        assert page_b.evaluate("() => window.conns.b.es.readyState") != 2

        page.evaluate("() => window.conns.a.es.close()")
        _wait_clients(server, 1, timeout=5)  # B took the slot by itself
        wait_open(page_b, "b")
        second = server.publish("news", "tick", {"n": 2})
        assert second["clients"] == 1
        got = wait_seen(page_b, "b", "(es) => es.length >= 1", timeout_ms=5_000)
        assert got == [{"type": "tick", "data": '{"n":2}', "id": second["id"]}]
        assert page_b.evaluate("() => window.conns.b.es.readyState") == 1
        assert not any(e["id"] == second["id"] for e in seen(page, "a"))
    finally:
        context_b.close()
