"""
L{SubscriberIndex}: who receives an event on a channel, found without
walking the subscribers that do not match; and L{deliver}, the fan-out of
one event to them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator

from . import _transport
from .event import Event
from .subscriber import Subscriber

__all__ = ["SubscriberIndex", "deliver"]


def deliver(groups: Iterable[Collection[Subscriber] | None], event: Event) -> int:
    """
    Write C{event} to every subscriber in C{groups}: the same frame for all,
    framed as one HTTP/1.1 chunk once for those on the fast path.

    @return: how many it went to (written or queued; not those it was
        dropped for, nor those that will read it from the history).
    """
    frame = event.frame
    chunk: bytes | None = None
    write_through = _transport.write_through
    sent = 0
    for group in groups:
        if not group:
            continue
        sent += len(group)
        for sub in group:
            fast = sub.fast
            if fast is not None:
                if chunk is None:
                    chunk = _transport.chunk(frame)
                write_through(fast, chunk)
            elif not sub.send(event):
                sent -= 1
    return sent


class SubscriberIndex:
    """
    Open streams by channel, plus the subscribers of every channel: those
    that may read all of them, and those whose reading is decided per
    channel (some channels are private).

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
        self._on_empty = on_empty
        self._walking = False
        self._removals: list[Subscriber] = []

    def __len__(self) -> int:
        return len(self.subscribers)

    def __iter__(self) -> Iterator[Subscriber]:
        """A snapshot: the index may change while the caller goes through it."""
        return iter(list(self.subscribers))

    def add(self, sub: Subscriber) -> None:
        """Index C{sub} under each of its channels, or with the every-channel ones."""
        self.subscribers.add(sub)
        if sub.channels is None:
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
        if sub.channels is None:
            self.everything.discard(sub)
            self.checked.discard(sub)
        else:
            for channel in sub.channels:
                members = self.by_channel.get(channel)
                if members is not None:
                    members.discard(sub)
                    if not members:
                        del self.by_channel[channel]
        if not self.subscribers:
            self._on_empty()

    def count(self, channel: str | None = None) -> int:
        """Open streams in all, or those that receive C{channel}."""
        if channel is None:
            return len(self.subscribers)
        checked = sum(1 for s in self.checked if s.may_read(channel))
        return len(self.everything) + checked + len(self.by_channel.get(channel, ()))

    def deliver(self, event: Event) -> int:
        """
        Hand C{event} to every subscriber that receives its channel.

        @return: how many it went to (see L{sse_twisted.index.deliver}).
        """
        channel = event.channel
        groups: list[Collection[Subscriber] | None] = [
            self.everything,
            self.by_channel.get(channel),
        ]
        if self.checked:
            # The one authorisation decision, as on every other path.
            groups.append([s for s in self.checked if s.may_read(channel)])
        self._walking = True
        try:
            return deliver(groups, event)
        finally:
            self._walking = False
            if self._removals:
                removals, self._removals = self._removals, []
                for sub in removals:
                    self.remove(sub)
