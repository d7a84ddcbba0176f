"""
What a subscriber may read: one decision per (subscriber, channel); and
what a pattern subscription matches.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from fnmatch import fnmatchcase

from .event import validate_channel

__all__ = ["GLOB_CHARACTERS", "AllChannels", "Matching", "literal_prefix", "validate_pattern"]


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


#: The characters that make a pattern more than a channel name (as C{fnmatchcase}).
GLOB_CHARACTERS = "*?["


def validate_pattern(pattern: object) -> str:
    """
    Return C{pattern} if it is an acceptable channel pattern: what a channel
    name may be (1 to 200 characters, no control character, valid Unicode),
    matched as C{fnmatchcase} does, as a JWT grant's patterns are (C{*}, C{?},
    C{[seq]}, C{[!seq]}; a C{[} without its C{]} is an ordinary character).

    @raise TypeError: if it is not a C{str}.
    @raise ValueError: otherwise, saying what is wrong.
    """
    if not isinstance(pattern, str):
        raise TypeError(f"pattern must be a str, not {type(pattern).__name__}")
    try:
        validate_channel(pattern)
    except ValueError as e:
        raise ValueError(str(e).replace("channel", "pattern", 1)) from None
    return pattern


def literal_prefix(pattern: str) -> str:
    """The part of C{pattern} before its first glob character: every match starts with it."""
    for index, character in enumerate(pattern):
        if character in GLOB_CHARACTERS:
            return pattern[:index]
    return pattern


class Matching:
    """
    What a pattern subscriber reads: its channels, and the channels its
    patterns match that C{allowed} lets it read (a pattern never widens what
    a token allows: C{allowed} is an L{AllChannels} when some channels are
    private). It answers C{in}, so the history filters with it on every
    path, as it does with a frozenset of channels.

    It keeps no cache of its own (one per subscriber would cost more than
    the rest of an idle stream): C{fnmatchcase} compiles each pattern once
    for the process, C{allowed} caches its own decisions, and live delivery
    does not ask it (the broker's index knows which patterns matched).

    @param channels: channels named outright (authorised by whoever
        subscribed: C{allowed} does not apply to them).
    @param patterns: the glob patterns.
    @param allowed: the channels the patterns may bring in; C{None}: any.
    """

    __slots__ = ("allowed", "channels", "patterns")

    def __init__(
        self,
        channels: frozenset[str],
        patterns: frozenset[str],
        allowed: Container[str] | None = None,
    ) -> None:
        self.channels = channels
        self.patterns = patterns
        self.allowed = allowed

    def __repr__(self) -> str:
        return f"<Matching channels={sorted(self.channels)!r} patterns={sorted(self.patterns)!r}>"

    def __contains__(self, channel: object) -> bool:
        if not isinstance(channel, str):
            return False
        if channel in self.channels:
            return True
        allowed = self.allowed
        return any(fnmatchcase(channel, p) for p in self.patterns) and (
            allowed is None or channel in allowed
        )
