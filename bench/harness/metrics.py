"""Figures out of the load generator's RESULT objects: counts, spans, latency percentiles."""

from __future__ import annotations

import collections
from typing import Any


def merge_hist(results: list[dict[str, Any]]) -> list[tuple[float, int]]:
    """The processes' latency histograms (µs value, count) added up, sorted by value."""
    c: collections.Counter[float] = collections.Counter()
    for r in results:
        for v, n in r.get("lat_hist_us", []):
            c[v] += n
    return sorted(c.items())


def percentile(hist: list[tuple[float, int]], q: float) -> float | None:
    total = sum(n for _, n in hist)
    if not total:
        return None
    want = q * total
    acc = 0
    for v, n in hist:
        acc += n
        if acc >= want:
            return v
    return hist[-1][0]


def lat_ms(results: list[dict[str, Any]]) -> dict[str, float | None]:
    """p50, p90, p99, p99.9 and max publish-to-receive latency in ms (None without events)."""
    h = merge_hist(results)
    out = {}
    for name, q in (
        ("p50_ms", 0.5),
        ("p90_ms", 0.9),
        ("p99_ms", 0.99),
        ("p999_ms", 0.999),
        ("max_ms", 1.0),
    ):
        v = percentile(h, q)
        out[name] = None if v is None else v / 1000
    return out


def strip(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The results without their histograms, for the JSON's raw part."""
    return [{k: v for k, v in r.items() if k != "lat_hist_us"} for r in results]


def total(results: list[dict[str, Any]], key: str) -> int:
    """A count summed over the load processes."""
    return sum(int(r.get(key, 0)) for r in results)


def span_s(results: list[dict[str, Any]], pub: dict[str, Any]) -> float | None:
    """Seconds from the first publish to the last event received by any stream."""
    last = max((r.get("last_ns", 0) for r in results), default=0)
    return (last - pub["first_ns"]) / 1e9 if last and pub.get("first_ns") else None


def per(x: float | None, n: float) -> float | None:
    """x / n, or None when x is missing or n is 0 (nothing delivered, nothing published)."""
    return x / n if x is not None and n else None
