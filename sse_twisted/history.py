"""
The event history: what a resuming subscriber is replayed from.

The broker talks to it through L{IHistory} only, so another store can take
the in-memory ring's place. Lookups are synchronous on purpose: a resume must
be replayed and joined to the live stream in one reactor turn, which is what
makes it free of gaps and duplicates. A remote store (Redis) fits behind it
as a local mirror of the stream that the node reads anyway for fan-out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Container, Iterator
from itertools import islice
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

    def __len__(self) -> int:
        """How many events are held."""


#: Bytes of frames a history keeps by default (64 MiB).
DEFAULT_HISTORY_BYTES = 64 << 20


class MemoryHistory:
    """
    The last C{size} events in memory, at most C{max_bytes} of frames in all
    (C{0}: no byte bound), each forgotten after C{ttl} seconds (0: kept until
    pushed out).

    The byte bound is what keeps a history of large events from taking the
    machine: 1,000 events of 1 MiB would otherwise hold a gigabyte. The
    newest event is always kept, whatever its size, so the last id a live
    client saw stays resumable.

    Appending is O(1); C{since} is O(position of the id + events returned).
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
        # (sequence number, time published, event), oldest first.
        self._ring: deque[tuple[int, float, Event]] = deque()
        self._by_id: dict[str, int] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._ring)

    def append(self, event: Event) -> None:
        """L{IHistory.append}: keep C{event}, then forget what is over the bounds."""
        assert event.id is not None, "only events with ids can be resumed from"
        self._seq += 1
        self._ring.append((self._seq, self.stamp(event) if self.ttl else 0.0, event))
        self._by_id[event.id] = self._seq
        self.bytes += len(event.frame)
        if len(self._ring) > self.size:
            self._forget_oldest()
        if self.max_bytes:
            while self.bytes > self.max_bytes and len(self._ring) > 1:
                self._forget_oldest()
        if self.ttl:
            self._expire()

    def stamp(self, event: Event) -> float:
        """When C{event} was published, in the reactor's seconds (for the TTL)."""
        return float(default_reactor(self._reactor).seconds())

    def clear(self) -> None:
        """Forget everything: every id held so far becomes unknown."""
        self._ring.clear()
        self._by_id.clear()
        self.bytes = 0

    def _forget_oldest(self) -> None:
        seq, _, old = self._ring.popleft()
        assert old.id is not None
        self.bytes -= len(old.frame)
        if self._by_id.get(old.id) == seq:
            del self._by_id[old.id]

    def _expire(self) -> None:
        if not self.ttl:
            return
        horizon = default_reactor(self._reactor).seconds() - self.ttl
        while self._ring and self._ring[0][1] <= horizon:
            self._forget_oldest()

    def since(
        self, last_id: str, channels: Container[str] | None, limit: int
    ) -> list[Event] | None:
        """L{IHistory.since}, from the ring (expired events forgotten first)."""
        self._expire()
        seq = self._by_id.get(last_id)
        if seq is None:
            return None
        start = seq - self._ring[0][0] + 1
        out: list[Event] = []
        for _, _, event in islice(self._ring, start, None):
            if channels is None or event.channel in channels:
                out.append(event)
                if len(out) >= limit:
                    break
        return out

    def __iter__(self) -> Iterator[Event]:
        self._expire()
        return (event for _, _, event in self._ring)
