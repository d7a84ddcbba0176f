"""
L{SubscriberIndex}: who receives an event on a channel, found without
walking the subscribers that do not match; and L{deliver}, the fan-out of
one event to them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from fnmatch import fnmatchcase
from typing import Any, cast

from .access import Matching, literal_prefix
from .event import Event
from .subscriber import Subscriber

__all__ = ["PatternIndex", "SubscriberIndex", "deliver"]


def deliver(
    groups: Iterable[Collection[Subscriber] | None],
    event: Event,
    fast: list[Any],
) -> int:
    """
    Hand C{event} to every subscriber in C{groups}: the transports of those
    on the fast path are appended to C{fast} (the caller sends them one
    HTTP/1.1 chunk of the frame, L{sse_twisted.outbox.Outbox.add_all}); the
    others get it through L{Subscriber.send}.

    @return: how many it went to (written or queued; not those it was
        dropped for, nor those that will read it from the history).
    """
    append = fast.append
    sent = 0
    for group in groups:
        if not group:
            continue
        sent += len(group)
        for sub in group:
            transport = sub.fast
            if transport is not None:
                append(transport)
            elif not sub.send(event):
                sent -= 1
    return sent


class PatternIndex:
    """
    Which distinct patterns match a channel: found without trying every
    pattern (only those whose literal prefix the channel starts with), and
    remembered per channel in a bounded cache, forgotten whenever a pattern
    comes or goes (so the cache never answers for a set of patterns that
    has changed).
    """

    __slots__ = ("_by_prefix", "_cache", "_lengths", "users")

    #: Channels whose matching patterns are remembered before the cache starts over.
    CACHE_SIZE = 4096

    def __init__(self) -> None:
        #: Subscribers per distinct pattern (both kinds).
        self.users: dict[str, int] = {}
        self._by_prefix: dict[str, list[str]] = {}
        # How many patterns have a literal prefix of each length.
        self._lengths: dict[int, int] = {}
        self._cache: dict[str, tuple[str, ...]] = {}

    def __len__(self) -> int:
        return len(self.users)

    def add(self, pattern: str) -> None:
        """One more subscriber of C{pattern}."""
        users = self.users.get(pattern, 0)
        self.users[pattern] = users + 1
        if users:
            return
        prefix = literal_prefix(pattern)
        self._by_prefix.setdefault(prefix, []).append(pattern)
        self._lengths[len(prefix)] = self._lengths.get(len(prefix), 0) + 1
        self._cache.clear()

    def remove(self, pattern: str) -> None:
        """One subscriber of C{pattern} fewer."""
        users = self.users.get(pattern, 0) - 1
        if users > 0:
            self.users[pattern] = users
            return
        self.users.pop(pattern, None)
        prefix = literal_prefix(pattern)
        same = self._by_prefix.get(prefix)
        if same is not None and pattern in same:
            same.remove(pattern)
            if not same:
                del self._by_prefix[prefix]
            left = self._lengths[len(prefix)] - 1
            if left:
                self._lengths[len(prefix)] = left
            else:
                del self._lengths[len(prefix)]
        self._cache.clear()

    def match(self, channel: str) -> tuple[str, ...]:
        """The distinct patterns that match C{channel}."""
        cache = self._cache
        found = cache.get(channel)
        if found is None:
            by_prefix = self._by_prefix
            size = len(channel)
            matched = []
            for length in self._lengths:
                if length <= size:
                    for pattern in by_prefix.get(channel[:length], ()):
                        if fnmatchcase(channel, pattern):
                            matched.append(pattern)
            found = tuple(matched)
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[channel] = found
        return found


class SubscriberIndex:
    """
    Open streams by channel, plus the subscribers of every channel: those
    that may read all of them, and those whose reading is decided per
    channel (some channels are private); plus the pattern subscribers.

    Pattern subscribers are grouped by distinct pattern (L{PatternIndex}
    says which patterns match a channel), so a publish costs a few look-ups
    and the subscribers it reaches, however many patterns there are. Those
    with exactly one pattern, no channel and nothing private to keep out
    (C{by_pattern}) are written to as they are, like a channel's; the
    others (C{mixed_by_pattern}, C{mixed_by_channel}) may match one event
    more than once, or may not read every channel their patterns match:
    each is checked with L{Subscriber.may_read}, and collected once.

    Removing a subscriber while L{deliver} walks the index is deferred until
    the walk is done (a slow client aborted by its overflow policy, say).

    @param on_empty: called when the last subscriber leaves (the broker
        stops its timers).
    """

    def __init__(self, on_empty: Callable[[], object]) -> None:
        self.subscribers: set[Subscriber] = set()
        self.everything: set[Subscriber] = set()
        self.checked: set[Subscriber] = set()
        self.by_channel: dict[str, set[Subscriber]] = {}
        self.patterns = PatternIndex()
        self.by_pattern: dict[str, set[Subscriber]] = {}
        self.mixed_by_pattern: dict[str, set[Subscriber]] = {}
        self.mixed_by_channel: dict[str, set[Subscriber]] = {}
        self._on_empty = on_empty
        self._walking = False
        self._removals: list[Subscriber] = []

    def __len__(self) -> int:
        return len(self.subscribers)

    def __iter__(self) -> Iterator[Subscriber]:
        """A snapshot: the index may change while the caller goes through it."""
        return iter(list(self.subscribers))

    @staticmethod
    def _simple(sub: Subscriber) -> bool:
        """One pattern, no channel, nothing kept out: matched means delivered."""
        patterns = sub.patterns
        readable = sub.readable
        return (
            patterns is not None
            and len(patterns) == 1
            and not sub.channels
            and isinstance(readable, Matching)
            and readable.allowed is None
        )

    def add(self, sub: Subscriber) -> None:
        """Index C{sub} under each of its channels and patterns, or with the every-channel ones."""
        self.subscribers.add(sub)
        patterns = sub.patterns
        if patterns is not None:
            simple = self._simple(sub)
            by_pattern = self.by_pattern if simple else self.mixed_by_pattern
            for pattern in patterns:
                self.patterns.add(pattern)
                by_pattern.setdefault(pattern, set()).add(sub)
            if not simple:
                for channel in sub.channels or ():
                    self.mixed_by_channel.setdefault(channel, set()).add(sub)
        elif sub.channels is None:
            (self.everything if sub.readable is None else self.checked).add(sub)
        else:
            for channel in sub.channels:
                self.by_channel.setdefault(channel, set()).add(sub)

    def remove(self, sub: Subscriber) -> None:
        """Take C{sub} out (at once, or as soon as L{deliver} is done)."""
        if sub not in self.subscribers:
            return
        if self._walking:
            self._removals.append(sub)
            return
        self.subscribers.discard(sub)
        patterns = sub.patterns
        if patterns is not None:
            simple = self._simple(sub)
            by_pattern = self.by_pattern if simple else self.mixed_by_pattern
            for pattern in patterns:
                self.patterns.remove(pattern)
                _discard(by_pattern, pattern, sub)
            if not simple:
                for channel in sub.channels or ():
                    _discard(self.mixed_by_channel, channel, sub)
        elif sub.channels is None:
            self.everything.discard(sub)
            self.checked.discard(sub)
        else:
            for channel in sub.channels:
                _discard(self.by_channel, channel, sub)
        if not self.subscribers:
            self._on_empty()

    def receivers(self, channel: str) -> list[Collection[Subscriber] | None]:
        """
        The subscribers that receive C{channel}, in groups no subscriber is
        in twice (for L{deliver}).
        """
        groups: list[Collection[Subscriber] | None] = [
            self.everything,
            self.by_channel.get(channel),
        ]
        if self.checked:
            # The one authorisation decision, as on every other path.
            groups.append([s for s in self.checked if s.may_read(channel)])
        if self.patterns.users:
            matched = self.patterns.match(channel)
            by_pattern = self.by_pattern
            for pattern in matched:
                groups.append(by_pattern.get(pattern))
            if self.mixed_by_pattern or self.mixed_by_channel:
                groups.append(self._mixed(channel, matched))
        return groups

    def _mixed(self, channel: str, matched: tuple[str, ...]) -> list[Subscriber]:
        """
        The mixed pattern subscribers that receive C{channel}: each once,
        however many of its patterns and channels match; those that name it
        outright, and those a matching pattern brings in if their
        L{Matching.allowed} lets it in (the decision every other path takes
        through L{Subscriber.may_read}).
        """
        named = self.mixed_by_channel.get(channel)
        mixed = self.mixed_by_pattern
        groups = [group for group in map(mixed.get, matched) if group]
        out = list(named) if named else []
        if not groups:
            return out
        seen = set(out) if out or len(groups) > 1 else None
        for group in groups:
            for sub in group:
                if seen is not None:
                    if sub in seen:
                        continue
                    seen.add(sub)
                allowed = cast(Matching, sub.readable).allowed
                if allowed is None or channel in allowed:
                    out.append(sub)
        return out

    def count(self, channel: str | None = None) -> int:
        """Open streams in all, or those that receive C{channel} (by name, pattern or all)."""
        if channel is None:
            return len(self.subscribers)
        return sum(len(group) for group in self.receivers(channel) if group)

    def deliver(self, event: Event, fast: list[Any]) -> int:
        """
        Hand C{event} to every subscriber that receives its channel, once
        (the transports of those on the fast path appended to C{fast}).

        @return: how many it went to (see L{sse_twisted.index.deliver}).
        """
        groups = self.receivers(event.channel)
        self._walking = True
        try:
            return deliver(groups, event, fast)
        finally:
            self._walking = False
            if self._removals:
                removals, self._removals = self._removals, []
                for sub in removals:
                    self.remove(sub)


def _discard(groups: dict[str, set[Subscriber]], key: str, sub: Subscriber) -> None:
    members = groups.get(key)
    if members is not None:
        members.discard(sub)
        if not members:
            del groups[key]
