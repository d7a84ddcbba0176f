"""Limits that keep one process serviceable: subscribers in all and per peer, publish rate."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request

from ._reactor import default_reactor

__all__ = ["DEFAULT_MAX_CHANNELS", "RateLimiter", "SubscriberLimits", "peer_key"]

#: Channels one subscription may name by default. Each costs an index entry
#: and a set membership (about 250 bytes); 1,400 channels made one stream cost
#: 50 times a normal one. Real pages subscribe to a handful.
DEFAULT_MAX_CHANNELS = 64


def peer_key(request: Request) -> str:
    """The peer's address without its port (what per-peer limits count)."""
    address = request.getClientAddress()
    return str(getattr(address, "host", address))


class SubscriberLimits:
    """
    Caps on open streams: in all (C{max_clients}) and per peer address
    (C{max_per_ip}), and on channels per subscription (C{max_channels},
    L{DEFAULT_MAX_CHANNELS} unless said otherwise); 0 means no cap. Counting
    is done here, not in the broker, so streams of embedded apps that set no
    limits pay nothing.
    """

    def __init__(
        self, max_clients: int = 0, max_per_ip: int = 0, max_channels: int = DEFAULT_MAX_CHANNELS
    ) -> None:
        self.max_clients = max_clients
        self.max_per_ip = max_per_ip
        self.max_channels = max_channels
        self.open = 0
        self._per_ip: dict[str, int] = {}

    def __bool__(self) -> bool:
        return bool(self.max_clients or self.max_per_ip or self.max_channels)

    def refusal(self, request: Request) -> str | None:
        """Why C{request} may not subscribe now, or C{None} if it may."""
        if self.max_clients and self.open >= self.max_clients:
            return f"server full: {self.max_clients} clients (--max-clients)"
        if self.max_per_ip and self._per_ip.get(peer_key(request), 0) >= self.max_per_ip:
            return f"too many streams from your address: {self.max_per_ip} (--max-clients-per-ip)"
        return None

    def track(self, request: Request) -> None:
        """Count C{request}'s stream until it finishes (only if a stream cap is set)."""
        if not (self.max_clients or self.max_per_ip):
            return
        key = peer_key(request)
        self.open += 1
        self._per_ip[key] = self._per_ip.get(key, 0) + 1

        def release(result: object) -> None:
            self.open -= 1
            left = self._per_ip[key] - 1
            if left:
                self._per_ip[key] = left
            else:
                del self._per_ip[key]

        request.notifyFinish().addBoth(release)


class RateLimiter:
    """
    A token bucket per key (a verified publisher identity): C{rate}
    requests a second on average, bursts up to C{burst}. Idle buckets are
    forgotten, so memory follows the active publishers.
    """

    def __init__(self, rate: float, burst: int | None = None, reactor: Any = None) -> None:
        if rate <= 0:
            raise ValueError(f"rate must be > 0 per second, got {rate}")
        self.rate = rate
        self.burst = float(burst if burst is not None else max(1, round(rate)))
        self._reactor = reactor
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """Take one token for C{key}: 0.0 if allowed, else seconds until one is free."""
        now: float = default_reactor(self._reactor).seconds()
        tokens, last = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            if len(self._buckets) > 10_000:
                self._forget_idle(now)
            return 0.0
        self._buckets[key] = (tokens, now)
        return (1 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        full = self.burst / self.rate
        for key, (_, last) in list(self._buckets.items()):
            if now - last >= full:
                del self._buckets[key]
