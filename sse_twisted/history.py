"""
The event history: what a resuming subscriber is replayed from.

The broker talks to it through L{IHistory} only, so another store can take
the in-memory ring's place. Lookups are synchronous on purpose: a resume must
be replayed and joined to the live stream in one reactor turn, which is what
makes it free of gaps and duplicates. A remote store (Redis) fits behind it
as a local mirror of the stream that the node reads anyway for fan-out.
"""

from __future__ import annotations

from collections.abc import Container, Iterator, Set
from typing import Any, Protocol

from ._reactor import default_reactor
from .event import Event

__all__ = ["DEFAULT_HISTORY_BYTES", "IHistory", "MemoryHistory"]


class IHistory(Protocol):
    """What the broker needs of a history."""

    def append(self, event: Event) -> None:
        """Remember a published event (it has an id)."""

    def since(
        self, last_id: str, channels: Container[str] | None, limit: int
    ) -> list[Event] | None:
        """
        Up to C{limit} events published after the one with id C{last_id},
        in publish order, only those whose channel is C{in channels} (all if
        C{None}): a subscription's channels, or the channels a subscriber of
        every channel may read.

        @return: C{None} when C{last_id} is unknown (evicted, expired, or from
            another run): the caller must tell the client it lost its place.
        """

    def latest(self, channels: Container[str] | None, limit: int | None) -> list[Event]:
        """
        The newest C{limit} events held (all of them if C{None}) whose
        channel is C{in channels} (all if C{None}), in publish order: what
        C{?replay=} sends, and (with C{limit=1}) the cursor a new stream is
        told in its C{Last-Event-ID} response header.
        """

    @property
    def newest_id(self) -> str | None:
        """The id of the newest event held, or C{None} when none is."""

    def __len__(self) -> int:
        """How many events are held."""


#: Bytes of frames a history keeps by default (4 MiB): 1,000 events of up to
#: 4 KiB each; larger events shorten the window rather than grow the process
#: (the history is most of what a process holds beyond its streams).
DEFAULT_HISTORY_BYTES = 4 << 20


class MemoryHistory:
    """
    The last C{size} events in memory, at most C{max_bytes} of frames in all
    (C{0}: no byte bound), each forgotten after C{ttl} seconds (0: kept until
    pushed out).

    The byte bound is what keeps a history of large events from taking the
    machine: 1,000 events of 1 MiB would otherwise hold a gigabyte. The
    newest event is always kept, whatever its size, so the last id a live
    client saw stays resumable.

    Appending is O(1) amortised; C{since} is O(1) to find the id, plus the
    events it looks at (those returned, and with a channel filter those it
    skips); C{latest} with C{limit=1} (the cursor every stream is told) is
    O(channels held) at worst, never O(history).

    How: events sit in a list with a moving head (C{_head}, the oldest held)
    rather than a deque, so that an event's sequence number gives its index
    by arithmetic (C{seq - _base}); a deque can only be walked from one end,
    which made every resume O(history): 5,000 reconnects against a history
    of 1,000 were 5 M steps. A forgotten event's slot is emptied at once (its
    frame freed, so the byte bound holds), and the dead prefix is cut off
    once it is half the list, which keeps appending O(1) amortised.
    Subclasses hook in with L{append}, L{stamp}, L{clear} and
    C{_forget_oldest} (drop the oldest event held).
    """

    def __init__(
        self,
        size: int = 1000,
        ttl: float = 0,
        reactor: Any = None,
        *,
        max_bytes: int = DEFAULT_HISTORY_BYTES,
    ) -> None:
        if size < 1:
            raise ValueError(f"history size must be at least 1, got {size}")
        if ttl < 0:
            raise ValueError(f"history ttl must be >= 0 seconds, got {ttl}")
        if max_bytes < 0:
            raise ValueError(f"history max_bytes must be >= 0, got {max_bytes}")
        self.size = size
        self.ttl = ttl
        self.max_bytes = max_bytes
        #: Bytes of the frames held now.
        self.bytes = 0
        self._reactor = reactor
        self._seq = 0
        # Oldest first; slots before _head are forgotten (None). The event at
        # index i has sequence number _base + i, and _stamps[i] is the time
        # it was published (0.0 without a ttl).
        self._events: list[Event | None] = []
        self._stamps: list[float] = []
        self._head = 0
        self._base = 1
        self._by_id: dict[str, int] = {}
        # Channel -> sequence number of the newest event held on it.
        self._newest_on: dict[str, int] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._events) - self._head

    def append(self, event: Event) -> None:
        """L{IHistory.append}: keep C{event}, then forget what is over the bounds."""
        assert event.id is not None, "only events with ids can be resumed from"
        self._seq += 1
        seq = self._seq
        self._events.append(event)
        self._stamps.append(self.stamp(event) if self.ttl else 0.0)
        self._by_id[event.id] = seq
        self._newest_on[event.channel] = seq
        self.bytes += len(event.frame)
        if len(self._events) - self._head > self.size:
            self._forget_oldest()
        if self.max_bytes:
            while self.bytes > self.max_bytes and len(self._events) - self._head > 1:
                self._forget_oldest()
        if self.ttl:
            self._expire()

    def stamp(self, event: Event) -> float:
        """When C{event} was published, in the reactor's seconds (for the TTL)."""
        return float(default_reactor(self._reactor).seconds())

    def clear(self) -> None:
        """Forget everything: every id held so far becomes unknown."""
        self._events.clear()
        self._stamps.clear()
        self._head = 0
        self._base = self._seq + 1
        self._by_id.clear()
        self._newest_on.clear()
        self.bytes = 0

    def _forget_oldest(self) -> None:
        events = self._events
        head = self._head
        old = events[head]
        assert old is not None and old.id is not None
        events[head] = None
        seq = self._base + head
        self._head = head = head + 1
        self.bytes -= len(old.frame)
        if self._by_id.get(old.id) == seq:
            del self._by_id[old.id]
        if self._newest_on.get(old.channel) == seq:
            del self._newest_on[old.channel]
        if head * 2 >= len(events):
            # Half the list is dead: cut it off (O(held), once per as many
            # forgets, so O(1) amortised).
            del events[:head]
            del self._stamps[:head]
            self._base += head
            self._head = 0

    def _expire(self) -> None:
        if not self.ttl:
            return
        horizon = default_reactor(self._reactor).seconds() - self.ttl
        stamps = self._stamps
        while self._head < len(stamps) and stamps[self._head] <= horizon:
            self._forget_oldest()

    def since(
        self, last_id: str, channels: Container[str] | None, limit: int
    ) -> list[Event] | None:
        """L{IHistory.since}, from the ring (expired events forgotten first)."""
        self._expire()
        seq = self._by_id.get(last_id)
        if seq is None:
            return None
        events = self._events
        start = seq - self._base + 1
        if channels is None:
            return events[start : start + limit]  # type: ignore[return-value]  # held: never None
        out: list[Event] = []
        for index in range(start, len(events)):
            event = events[index]
            assert event is not None
            if event.channel in channels:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def latest(self, channels: Container[str] | None, limit: int | None) -> list[Event]:
        """The newest C{limit} events held on C{channels}, oldest first (L{IHistory.latest})."""
        self._expire()
        events = self._events
        head = self._head
        if limit is not None and limit < 1:
            return []
        if channels is None:
            first = head if limit is None else max(head, len(events) - limit)
            return events[first:]  # type: ignore[return-value]  # held: never None
        if limit == 1:
            # The cursor every new stream is told: never O(history) on a
            # quiet channel, whatever the others published since.
            newest = self._newest_seq(channels)
            if newest is None:
                return []
            event = events[newest - self._base]
            assert event is not None
            return [event]
        out: list[Event] = []
        for index in range(len(events) - 1, head - 1, -1):
            event = events[index]
            assert event is not None
            if event.channel in channels:
                out.append(event)
                if limit is not None and len(out) >= limit:
                    break
        out.reverse()
        return out

    def _newest_seq(self, channels: Container[str]) -> int | None:
        """
        The sequence number of the newest event held on C{channels}: O(the
        smaller of C{channels} and the channels held) for a set; for any
        other filter (L{sse_twisted.access.AllChannels}) a look back over as
        many events as there are channels held, then over those channels.
        """
        newest_on = self._newest_on
        if type(channels) is frozenset or isinstance(channels, Set):
            if len(channels) <= len(newest_on):
                seqs = [newest_on[c] for c in channels if c in newest_on]
            else:
                seqs = [seq for c, seq in newest_on.items() if c in channels]
            return max(seqs) if seqs else None
        events = self._events
        stop = max(self._head, len(events) - len(newest_on)) - 1
        for index in range(len(events) - 1, stop, -1):
            event = events[index]
            assert event is not None
            if event.channel in channels:
                return self._base + index
        seqs = [seq for c, seq in newest_on.items() if c in channels]
        return max(seqs) if seqs else None

    @property
    def newest_id(self) -> str | None:
        """The id of the newest event held (the TTL applied), or C{None}."""
        self._expire()
        if len(self._events) == self._head:
            return None
        newest = self._events[-1]
        assert newest is not None
        return newest.id

    def __iter__(self) -> Iterator[Event]:
        self._expire()
        return iter(self._events[self._head :])  # type: ignore[arg-type]  # held: never None
