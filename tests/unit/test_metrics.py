"""
The metrics' names (Prometheus's naming guide, and the deprecated names kept
for one release), C{sse_build_info}, and the publish latency histogram.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.web.resource import Resource

from sse_twisted import SSEBroker
from sse_twisted._version import __version__
from sse_twisted.metrics import DEPRECATED_METRICS, MetricsResource, metrics_registry
from sse_twisted.publish import PublishResource
from sse_twisted.stats import PUBLISH_DURATION_BUCKETS, Histogram

from ..support.conn import Conn, make_site, post, serve
from .test_relay import LoopRelay

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(body: bytes) -> tuple[Samples, dict[str, str]]:
    """Every sample of a scrape by (name, labels), and each family's type by name."""
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(body.decode()):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples, types


def scrape_broker(broker: SSEBroker, durations: Histogram | None = None) -> tuple[Samples, str]:
    body = generate_latest(metrics_registry(broker, {200: 1}, durations))
    return scrape(body)[0], body.decode()


#: Each broker counter's name (new and, where renamed, old) and the Stats field it reads.
COUNTERS = {
    "sse_events_published_total": "published",
    "sse_events_delivered_total": "delivered",
    "sse_events_replayed_total": "replayed",
    "sse_resets_total": "resets",
    "sse_heartbeats_total": "heartbeats",
    "sse_sent_bytes_total": "bytes_sent",
    "sse_catchups_total": "catchups",
    "sse_write_timeouts_total": "write_timeouts",
    "sse_expired_streams_total": "expired",
    "sse_lifetime_ends_total": "lifetimes",
}


def test_counters_read_their_stats_under_new_and_deprecated_names() -> None:
    """
    Each counter reads its own Stats field; each renamed one is also served
    under its old name (same value) until 0.3.0, and says so in its help.
    """
    broker = SSEBroker(reactor=Clock(), heartbeat=0)
    fields = [f.name for f in dataclasses.fields(broker.stats)]
    for n, field in enumerate(fields):  # distinct values: a swapped field shows
        setattr(broker.stats, field, 1000 + n)
    values, text = scrape_broker(broker)
    for name, field in COUNTERS.items():
        assert values[(name, ())] == getattr(broker.stats, field), name
    assert set(DEPRECATED_METRICS) == {"sse_bytes_sent_total", "sse_expired_total"}
    for old, new in DEPRECATED_METRICS.items():
        assert new in COUNTERS
        assert values[(old, ())] == values[(new, ())], old
        assert re.search(rf"^# HELP {old} Deprecated, removed in 0\.3\.0: use {new}\.", text, re.M)
    dropped = values[("sse_events_dropped_total", (("reason", "queue_full"),))]
    assert dropped == broker.stats.dropped


def test_names_follow_the_naming_guide() -> None:
    """
    Every sse_ metric but the deprecated ones follows Prometheus's naming
    guide: a counter ends in _total, a unit (bytes, seconds) is the suffix
    (before _total), and a histogram is in seconds.
    """
    clock = Clock()
    broker, site = serve(clock, relay=LoopRelay(), id_prefix=None)
    post(site, {"channel": "c", "data": 1})
    body = Conn(site, b"/metrics").head_and_body()[1]
    _, types = scrape(body)
    deprecated = {name.removesuffix("_total") for name in DEPRECATED_METRICS}
    ours = {name: kind for name, kind in types.items() if name.startswith("sse_")}
    assert "sse_relay_up" in ours and "sse_publish_duration_seconds" in ours  # all families seen
    for name, kind in ours.items():
        if name in deprecated:
            continue
        # prometheus-client's parser names a counter family without _total.
        full = f"{name}_total" if kind == "counter" else name
        for unit in ("bytes", "seconds"):
            if unit in name.split("_"):
                assert re.search(rf"_{unit}(_total)?$", full), full
        if kind == "histogram":
            assert name.endswith("_seconds"), name
        assert kind in ("counter", "gauge", "histogram"), (name, kind)
    assert types["sse_sent_bytes"] == "counter" and types["sse_history_bytes"] == "gauge"


def test_build_info() -> None:
    """sse_build_info carries the package's version as a label, with the value 1."""
    values, _ = scrape_broker(SSEBroker(reactor=Clock(), heartbeat=0))
    assert values[("sse_build_info", (("version", __version__),))] == 1
    assert [k for k in values if k[0] == "sse_build_info"] == [
        ("sse_build_info", (("version", __version__),))
    ]


def test_histogram_buckets() -> None:
    """A value lands in the first bucket whose bound is at least it (le); above all: +Inf."""
    h = Histogram((0.001, 0.01, 1.0))
    for value in (0.0, 0.001, 0.0011, 0.01, 0.5, 1.0, 1.5, 99.0):
        h.observe(value)
    assert h.counts == [2, 2, 2, 2]
    assert h.cumulative() == [(0.001, 2), (0.01, 4), (1.0, 6), (math.inf, 8)]
    assert h.count == 8
    assert h.sum == pytest.approx(0.0 + 0.001 + 0.0011 + 0.01 + 0.5 + 1.0 + 1.5 + 99.0)
    with pytest.raises(ValueError, match="increase"):
        Histogram((1.0, 0.5))
    with pytest.raises(ValueError, match="increase"):
        Histogram(())


def test_histogram_exposition() -> None:
    """The histogram is served cumulative, with every fixed bucket, +Inf, _count and _sum."""
    h = Histogram()
    h.observe(0.0003)
    h.observe(7.0)
    values, _ = scrape_broker(SSEBroker(reactor=Clock(), heartbeat=0), h)
    name = "sse_publish_duration_seconds"
    buckets = {
        float(dict(labels)["le"]): v for (n, labels), v in values.items() if n == f"{name}_bucket"
    }
    assert sorted(buckets) == [*PUBLISH_DURATION_BUCKETS, math.inf]
    assert buckets[0.00025] == 0 and buckets[0.0005] == 1
    assert buckets[5.0] == 1 and buckets[10.0] == 2 and buckets[math.inf] == 2
    assert values[(f"{name}_count", ())] == 2
    assert values[(f"{name}_sum", ())] == pytest.approx(7.0003)


def timed_site(clock: Clock, **broker: Any) -> tuple[PublishResource, Any]:
    """/publish and /metrics for a broker on C{clock}, the publish latency read from it too."""
    b = SSEBroker(reactor=clock, heartbeat=0, **broker)
    publish = PublishResource(b)
    publish.timer = clock.seconds
    root = Resource()
    root.putChild(b"publish", publish)
    root.putChild(
        b"metrics", MetricsResource(metrics_registry(b, publish.statuses, publish.durations))
    )
    return publish, make_site(root, clock)


def test_publish_duration_with_a_relay() -> None:
    """
    With a relay, a publish is timed from its handling to its answer, so
    the wait for the relay (Redis) shows: answered 0.3 s later, it lands in
    the 0.5 s bucket; one failed by the relay 2 s later (503) is timed too.
    """
    clock = Clock()
    relay = LoopRelay()
    relay.hold = True
    publish, site = timed_site(clock, relay=relay)
    slow = post(site, {"channel": "c", "data": 1})
    clock.advance(0.3)
    relay.pending.pop().callback(["1000-0"])
    assert slow.status == 200
    failed = post(site, {"channel": "c", "data": 2})
    clock.advance(2)
    relay.pending.pop().errback(ConnectionError("lost Redis"))
    assert failed.status == 503
    cumulative = dict(publish.durations.cumulative())
    assert [cumulative[le] for le in (0.25, 0.5, 1.0, 2.5)] == [0, 1, 1, 2]
    assert publish.durations.count == 2
    assert publish.durations.sum == pytest.approx(2.3)
    values = scrape(Conn(site, b"/metrics").head_and_body()[1])[0]
    assert values[("sse_publish_duration_seconds_bucket", (("le", "0.5"),))] == 1
    assert values[("sse_publish_duration_seconds_sum", ())] == pytest.approx(2.3)


def test_publish_duration_counts_only_requests_that_reached_publishing() -> None:
    """
    A publish answered from memory is timed (no time passes on the clock: the
    first bucket); refusals (bad JSON, wrong method, relay down) are not, so
    they cannot hide a slow relay behind fast 4xx answers.
    """
    clock = Clock()
    relay = LoopRelay()
    publish, site = timed_site(clock, relay=relay)
    assert post(site, {"channel": "c", "data": 1}).status == 200
    assert post(site, None, raw=b"{").status == 400
    assert Conn(site, b"/publish").status == 405
    relay.ready = False
    assert post(site, {"channel": "c", "data": 1}).status == 503
    assert publish.durations.counts[0] == 1 and publish.durations.count == 1
    assert publish.statuses == {200: 1, 400: 1, 405: 1, 503: 1}


def test_publish_duration_without_relay() -> None:
    """Without a relay the answer is ready within render: timed once per 200."""
    clock = Clock()
    publish, site = timed_site(clock)
    ticks = iter([10.0, 10.002])  # render starts, then the answer is ready
    publish.timer = lambda: next(ticks)
    assert post(site, [{"channel": "c", "data": 1}, {"channel": "d", "data": 2}]).status == 200
    cumulative = dict(publish.durations.cumulative())
    assert (cumulative[0.001], cumulative[0.0025], cumulative[math.inf]) == (0, 1, 1)


def test_standalone_routes_serve_the_histogram() -> None:
    """The standalone routes (make_resource) wire the publish resource's histogram into /metrics."""
    clock = Clock()
    _, site = serve(clock)
    post(site, {"channel": "c", "data": 1})
    post(site, {"channel": "c", "data": 2})
    values = scrape(Conn(site, b"/metrics").head_and_body()[1])[0]
    assert values[("sse_publish_duration_seconds_count", ())] == 2
    assert values[("sse_publish_duration_seconds_bucket", (("le", "+Inf"),))] == 2
