"""What a subscriber may read: one decision per (subscriber, channel)."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["AllChannels"]


class AllChannels:
    """
    The channels a subscriber of every channel may read: all but the private
    ones, except those its grant covers.

    One decision per (subscriber, channel), taken once and cached (bounded),
    and used wherever an event may reach the subscriber: live dispatch, a
    resume from C{Last-Event-ID}, a catch-up after overflow, and the relay's
    deliveries (which are dispatches). It answers C{in}, like the frozenset
    of an ordinary subscription, so a history filters with it unchanged.

    @param private: which channels are private (e.g. L{JWTAuth.is_private}).
    @param allows: which private channels the subscriber's grant covers;
        C{None}: none.
    """

    __slots__ = ("_allows", "_cache", "_private")

    #: Decisions kept per subscriber before the cache starts over.
    CACHE_SIZE = 256

    def __init__(
        self, private: Callable[[str], bool], allows: Callable[[str], bool] | None = None
    ) -> None:
        self._private = private
        self._allows = allows
        self._cache: dict[str, bool] = {}

    def __contains__(self, channel: object) -> bool:
        if not isinstance(channel, str):
            return False
        cache = self._cache
        decision = cache.get(channel)
        if decision is None:
            allows = self._allows
            decision = not self._private(channel) or (allows is not None and allows(channel))
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[channel] = decision
        return decision
