"""
Idempotent publishing on real `twistd sse` processes (issue 13): a retried
POST /publish with the same key publishes once; with --redis, across nodes.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sse_twisted.parser import EventStreamParser

from ..support.processes import RawSubscriber, SSEServer
from .test_startup import refused, run

pytestmark = [pytest.mark.e2e]

BODY = {"channel": "orders", "event": "created", "data": {"n": 7}}


def data_of(sub: RawSubscriber, marker: str) -> list[tuple[str, str]]:
    """The (data, id) of the events before the text event C{marker}, waited for with a deadline."""
    sub.read_until(f"data: {marker}\n\n".encode())
    events = EventStreamParser().feed(sub.body())
    return [(e.data, e.last_event_id) for e in events if e.data != marker]


def test_retry_with_the_same_key_publishes_once(start: Callable[..., SSEServer]) -> None:
    """
    The same Idempotency-Key twice: one event delivered, the repeat answered
    with its id and "duplicate": true; another body with it is 409; a batch
    item's "idempotency_key" counts the same.
    """
    server = start()
    sub = RawSubscriber(server, "/events?channel=orders")
    sub.read_until(b": connected")
    key = {"Idempotency-Key": "order-7"}
    status, _, first = server.request("POST", "/publish", BODY, key)
    assert status == 200 and first["clients"] == 1 and "duplicate" not in first
    status, _, again = server.request("POST", "/publish", BODY, key)
    assert (status, again) == (200, {"id": first["id"], "clients": 0, "duplicate": True})
    status, _, batch = server.request("POST", "/publish", [{**BODY, "idempotency_key": "order-7"}])
    assert batch == [{"id": first["id"], "clients": 0, "duplicate": True}]
    status, _, conflict = server.request("POST", "/publish", {**BODY, "data": {"n": 8}}, key)
    assert status == 409 and "different event" in conflict["error"]
    server.publish("orders", text="end")
    assert data_of(sub, "end") == [('{"n":7}', first["id"])]


def test_window_zero_refuses_keys(start: Callable[..., SSEServer]) -> None:
    """--idempotency-window 0: a keyed publish is a 400 saying keys are off."""
    server = start("--idempotency-window", "0")
    status, _, answer = server.request("POST", "/publish", BODY, {"Idempotency-Key": "k"})
    assert status == 400 and "turned off" in answer["error"]


def test_bad_window_is_one_line_at_start() -> None:
    """A negative --idempotency-window stops twistd at once with one usage line."""
    refused(run("--idempotency-window", "-5"), r"--idempotency-window must not be negative")
