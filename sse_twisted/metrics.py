"""
Prometheus metrics for a broker, through prometheus-client.

A collector reads the broker's plain integer counters at scrape time, so
publishing pays nothing for metrics but the publish latency histogram's one
observation per POST (two clock reads, a bisect, two adds). No label takes
values that users choose (no channel or client labels): cardinality is fixed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.utils import floatToGoString
from twisted.web.server import Request

from ._version import __version__
from .broker import SSEBroker
from .resource import ReadResource
from .stats import Histogram

__all__ = ["DEPRECATED_METRICS", "BrokerCollector", "MetricsResource", "metrics_registry"]

#: Metrics renamed in 0.2.0 to follow Prometheus's naming guide (the unit as
#: the suffix, before C{_total}; a counter named for what it counts), old
#: name to new. Each old name is still served, with the same value, until
#: 0.3.0, so that dashboards and alerts can move over.
DEPRECATED_METRICS = {
    "sse_bytes_sent_total": "sse_sent_bytes_total",
    "sse_expired_total": "sse_expired_streams_total",
}
#: The same, as the counter families are named (without C{_total}): new to old.
_RENAMED = {
    new.removesuffix("_total"): old.removesuffix("_total")
    for old, new in DEPRECATED_METRICS.items()
}


class BrokerCollector:
    """
    Exposes an L{SSEBroker}'s counters, and the publish resource's answers
    by status and its latency histogram when given.
    """

    def __init__(
        self,
        broker: SSEBroker,
        publish_statuses: Mapping[int, int] | None = None,
        publish_durations: Histogram | None = None,
    ):
        self.broker = broker
        self.publish_statuses = publish_statuses if publish_statuses is not None else {}
        self.publish_durations = publish_durations

    def describe(self) -> list[Any]:
        """Nothing: the registry learns the names by collecting once."""
        return []

    def collect(self) -> Iterator[Any]:
        """The metrics, read from the broker's counters at scrape time."""
        b = self.broker.stats
        broker = self.broker
        build = GaugeMetricFamily(
            "sse_build_info", "The running sse_twisted's version (always 1).", labels=["version"]
        )
        build.add_metric([__version__], 1)
        yield build
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
            ("sse_sent_bytes", "Event bytes handed to subscribers.", b.bytes_sent),
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
            ("sse_expired_streams", "Streams ended because their token expired.", b.expired),
            ("sse_lifetime_ends", "Streams ended at --max-lifetime.", b.lifetimes),
        ]:
            yield CounterMetricFamily(name, help_text, value=value)
            old = _RENAMED.get(name)
            if old is not None:  # the same value under the name it had before 0.2.0
                yield CounterMetricFamily(
                    old, f"Deprecated, removed in 0.3.0: use {name}_total. {help_text}", value=value
                )
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
        if self.publish_durations is not None:
            yield _histogram(
                "sse_publish_duration_seconds",
                "Seconds from handling a POST to the publish path (its body read) to its "
                "answer, for requests that reached publishing (200, or 503 from the relay).",
                self.publish_durations,
            )
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
        commits = getattr(history, "commits", None)
        if commits is not None:  # a durable history (--history-db)
            yield CounterMetricFamily(
                "sse_history_commits", "Transactions committed to the history's file.", commits
            )
            yield CounterMetricFamily(
                "sse_history_committed_events",
                "Events committed to the history's file.",
                getattr(history, "committed_events", 0),
            )
        relay = broker.relay
        if relay is not None:
            yield from _relay_metrics(relay)


def _histogram(name: str, help_text: str, histogram: Histogram) -> HistogramMetricFamily:
    """C{histogram}'s buckets, summed now (the scrape pays, not the observer)."""
    return HistogramMetricFamily(
        name,
        help_text,
        buckets=[(floatToGoString(le), n) for le, n in histogram.cumulative()],
        sum_value=histogram.sum,
    )


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
    roundtrips = getattr(relay, "roundtrips", None)
    if isinstance(roundtrips, Histogram):  # a RedisBus
        yield from _redis_metrics(relay, roundtrips)


def _redis_metrics(bus: Any, roundtrips: Histogram) -> Iterator[Any]:
    """A L{sse_twisted.redis.RedisBus}'s link: connected, reconnects, reads, lag, round trips."""
    yield GaugeMetricFamily(
        "sse_redis_connected",
        "1 while both Redis connections (publishing, reading) are up and logged in.",
        value=int(bus.connected),
    )
    yield CounterMetricFamily(
        "sse_redis_reconnects",
        "Times this node connected to Redis again after a connected period ended.",
        value=bus.reconnects,
    )
    yield CounterMetricFamily(
        "sse_redis_read_events", "Stream entries read from Redis.", value=bus.read_events
    )
    if bus.read_lag is not None:
        yield GaugeMetricFamily(
            "sse_redis_read_lag_seconds",
            "Age of the newest entry of the last read from Redis when read (Redis's clock"
            " against this node's): how far behind the stream this node reads.",
            value=bus.read_lag,
        )
    yield _histogram(
        "sse_redis_roundtrip_seconds",
        "Seconds from sending a Redis command (or a transaction) to its reply; blocking reads"
        " excluded.",
        roundtrips,
    )


def metrics_registry(
    broker: SSEBroker,
    publish_statuses: Mapping[int, int] | None = None,
    publish_durations: Histogram | None = None,
) -> CollectorRegistry:
    """
    A registry of its own (so several brokers never clash): broker and
    process metrics; C{sse_publish_duration_seconds} when C{publish_durations}
    (a L{sse_twisted.publish.PublishResource}'s C{durations}) is given.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(broker, publish_statuses, publish_durations))
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
