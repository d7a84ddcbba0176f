"""
Prometheus metrics for a broker, through prometheus-client.

A collector reads the broker's plain integer counters at scrape time, so
publishing pays nothing for metrics. No label takes values that users
choose (no channel or client labels): cardinality is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from twisted.web.server import Request

from .broker import SSEBroker
from .resource import ReadResource

__all__ = ["BrokerCollector", "MetricsResource", "metrics_registry"]


class BrokerCollector:
    """Exposes an L{SSEBroker}'s counters (and publish answers by status)."""

    def __init__(self, broker: SSEBroker, publish_statuses: Mapping[int, int] | None = None):
        self.broker = broker
        self.publish_statuses = publish_statuses if publish_statuses is not None else {}

    def describe(self) -> list[Any]:
        """Nothing: the registry learns the names by collecting once."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metrics, read from the broker's counters at scrape time."""
        b = self.broker.stats
        broker = self.broker
        yield GaugeMetricFamily(
            "sse_subscribers", "Open event streams.", value=broker.client_count()
        )
        for name, help_text, value in [
            ("sse_events_published", "Events published.", b.published),
            (
                "sse_events_delivered",
                "Events handed to subscribers (written or queued).",
                b.delivered,
            ),
            ("sse_events_replayed", "Events replayed from the history.", b.replayed),
            (
                "sse_resets",
                "sse.reset signals sent (unknown Last-Event-IDs, relay gaps).",
                b.resets,
            ),
            ("sse_heartbeats", "Heartbeat comments written.", b.heartbeats),
            ("sse_bytes_sent", "Event bytes handed to subscribers.", b.bytes_sent),
            (
                "sse_catchups",
                "Queue overflows turned into a catch-up from the history.",
                b.catchups,
            ),
            (
                "sse_write_timeouts",
                "Streams aborted because their socket took no byte for --write-timeout.",
                b.write_timeouts,
            ),
            ("sse_expired", "Streams ended because their token expired.", b.expired),
        ]:
            yield CounterMetricFamily(name, help_text, value=value)
        dropped = CounterMetricFamily(
            "sse_events_dropped", "Events a slow subscriber lost, by reason.", labels=["reason"]
        )
        dropped.add_metric(["queue_full"], b.dropped)
        dropped.add_metric(["slow_disconnect"], b.slow_disconnects)
        yield dropped
        requests = CounterMetricFamily(
            "sse_publish_requests", "Publish requests answered, by HTTP status.", labels=["status"]
        )
        for status, count in sorted(self.publish_statuses.items()):
            requests.add_metric([str(status)], count)
        yield requests
        history = broker.history
        yield GaugeMetricFamily(
            "sse_history_events",
            "Events held for resuming clients.",
            value=len(history) if history is not None else 0,
        )
        yield GaugeMetricFamily(
            "sse_history_bytes",
            "Bytes of events held for resuming clients.",
            value=getattr(history, "bytes", 0),
        )
        relay = broker.relay
        if relay is not None:
            yield from _relay_metrics(relay)


def _relay_metrics(relay: Any) -> Iterator[Any]:
    """
    The relay's (Redis's) link state and fault counters, where it keeps them:
    the relay interface promises only C{ready}, so the counters are read
    when present.
    """
    yield GaugeMetricFamily(
        "sse_relay_up", "1 while the relay (Redis) is connected and read.", value=int(relay.ready)
    )
    for attr, name, help_text in [
        ("outages", "sse_relay_outages", "Times the relay (Redis) went away or was unreachable."),
        (
            "connect_attempts",
            "sse_relay_connect_attempts",
            "Connection attempts to the relay (Redis), the first included.",
        ),
        (
            "gaps",
            "sse_relay_gaps",
            "Times unread relay entries were found trimmed or lost (streams got sse.reset).",
        ),
        (
            "resets",
            "sse_relay_history_resets",
            "Times the relay's history was rebuilt because Redis lost this node's place.",
        ),
    ]:
        value = getattr(relay, attr, None)
        if isinstance(value, int):
            yield CounterMetricFamily(name, help_text, value=value)


def metrics_registry(
    broker: SSEBroker, publish_statuses: Mapping[int, int] | None = None
) -> CollectorRegistry:
    """A registry of its own (so several brokers never clash): broker and process metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, publish_statuses))
    ProcessCollector(registry=registry)
    return registry


class MetricsResource(ReadResource):
    """The Prometheus text format."""

    def __init__(self, registry: CollectorRegistry) -> None:
        super().__init__()
        self.registry = registry

    def read(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(b"content-type", [CONTENT_TYPE_LATEST.encode()])
        return generate_latest(self.registry)
