"""RedisBus without a server, on a Clock: outage logging and counting, batch bound, metrics."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.logger import LogLevel
from zope.interface import implementer

from sse_twisted.broker import SSEBroker
from sse_twisted.event import Item
from sse_twisted.metrics import metrics_registry
from sse_twisted.redis import BatchTooLarge, RedisBus


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """Every connection attempt is refused at once."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        return fail(ConnectionRefusedError("connection refused"))


def run_retries(clock: Clock, count: int) -> None:
    for _ in range(count):
        (call,) = clock.getDelayedCalls()
        clock.advance(call.getTime() - clock.seconds())


def test_an_outage_logs_one_line_at_any_level(redis_log: list[dict[str, Any]]) -> None:
    """
    However many retries an outage takes, it logs exactly one line (a
    warning), at any level, debug included: twistd writes debug lines, so
    a per-retry debug line would be a line per retry in the log. The
    retries are counted instead, and so is the outage.
    """
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    bus.start()
    run_retries(clock, 25)
    assert bus.connect_attempts == 26
    assert bus.outages == 1
    assert len(redis_log) == 1, [e["log_format"] for e in redis_log]
    assert redis_log[0]["log_level"] == LogLevel.warn
    bus.stop()
    assert clock.getDelayedCalls() == []


def test_a_restarted_bus_logs_its_next_outage_again(redis_log: list[dict[str, Any]]) -> None:
    """stop() then start() begins afresh: the next outage is one more warning and count."""
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    bus.start()
    run_retries(clock, 3)
    bus.stop()
    bus.start()
    run_retries(clock, 3)
    bus.stop()
    assert bus.outages == 2
    assert [e["log_level"] for e in redis_log] == [LogLevel.warn, LogLevel.warn]


def test_batch_over_the_history_is_refused_before_anything_is_sent() -> None:
    """
    A batch with more events than history_size raises BatchTooLarge (a
    ValueError that maps to HTTP 413) at once, connected or not, naming the
    bound; a batch of exactly history_size is not refused for its size.
    """
    clock = Clock()
    endpoint = RefusingEndpoint()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=endpoint, history_size=3)
    items = [Item.create("c", text=str(n)) for n in range(4)]
    with pytest.raises(BatchTooLarge, match="at most 3") as caught:
        bus.publish(items)
    assert isinstance(caught.value, ValueError)
    errors: list[Any] = []
    bus.publish(items[:3]).addErrback(errors.append)  # refused for not being connected
    assert "not connected" in str(errors[0].value)
    assert endpoint.attempts == 0


def test_metrics_expose_the_relay_link_and_its_counters() -> None:
    """
    With a relay, /metrics shows whether it is up and its outage, attempt,
    gap and history-reset counters; without one, none of these appear.
    """
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    broker = SSEBroker(relay=bus, history=bus.history, reactor=clock, heartbeat=0)
    bus.start()
    run_retries(clock, 4)
    bus.gaps, bus.resets = 2, 1
    text = generate_latest(metrics_registry(broker)).decode()
    assert "sse_relay_up 0.0" in text
    assert "sse_relay_outages_total 1.0" in text
    assert "sse_relay_connect_attempts_total 5.0" in text
    assert "sse_relay_gaps_total 2.0" in text
    assert "sse_relay_history_resets_total 1.0" in text
    bus.stop()
    plain = generate_latest(metrics_registry(SSEBroker(reactor=clock, heartbeat=0))).decode()
    assert "sse_relay" not in plain
