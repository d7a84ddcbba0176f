"""L{Backlog}: what a paused stream is owed, in order, within its bound."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from .event import Event, dropped_notice

__all__ = ["Backlog"]


class _Gap:
    """C{count} events dropped at this place in the stream."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


class Backlog:
    """
    The events a paused stream is owed, in order, at most C{size} of them,
    with a gap marker wherever events were dropped (overflow policy
    C{drop}): the client is told right where events are missing, with their
    count, and later events can still queue behind the gap.
    """

    __slots__ = ("_items", "dropped", "held", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: deque[Event | _Gap] = deque()
        #: Events (not gaps) held: what C{size} bounds.
        self.held = 0
        #: Events dropped and not yet told of.
        self.dropped = 0

    def __bool__(self) -> bool:
        return bool(self._items)

    def push(self, event: Event) -> bool:
        """Queue C{event} if there is room; say whether there was."""
        if self.held >= self.size:
            return False
        self._items.append(event)
        self.held += 1
        return True

    def last_event(self) -> Event | None:
        """The newest event queued (where a catch-up from the history starts)."""
        for item in reversed(self._items):
            if isinstance(item, Event):
                return item
        return None

    def drop(self) -> bool:
        """Count one event dropped here; say whether it is the first since the last notice."""
        first = self.dropped == 0
        self.dropped += 1
        items = self._items
        last = items[-1] if items else None
        if type(last) is _Gap:
            last.count += 1
        else:
            items.append(_Gap())
        return first

    def write_to(
        self, write: Callable[[bytes], object], stop: Callable[[], bool], envelope: bool = False
    ) -> bool:
        """
        Write what is held, in order (a drop notice for each gap), until
        C{stop()} says the writer is full; as envelopes with C{envelope}.

        @return: whether everything was written.
        """
        items = self._items
        while items and not stop():
            item = items.popleft()
            if type(item) is _Gap:
                self.dropped -= item.count
                write(dropped_notice(item.count, envelope))
            else:
                self.held -= 1
                write(item.envelope if envelope else item.frame)  # type: ignore[union-attr]
        return not items
