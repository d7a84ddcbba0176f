"""The local mirror of the stream's tail: the history a resume is answered from."""

from __future__ import annotations

from typing import Any

from ..event import Event
from ..history import MemoryHistory
from .entries import stream_id_key

__all__ = ["StreamHistory"]


class StreamHistory(MemoryHistory):
    """
    The local mirror of the stream's last entries: an L{IHistory} whose
    lookups stay synchronous for the broker.

    Entries are held in stream order; appending an event whose id is not newer
    than the newest held is a no-op, so the reader and the broker's own
    C{dispatch} may both append the same event. With C{ttl}, an entry is
    forgotten C{ttl} seconds after the time in its stream id. C{newest_id}
    (inherited) is the newest entry held, as for any history: one that the
    TTL took is no longer a cursor to resume from.

    @param size: entries kept (the stream's C{MAXLEN}).
    @param ttl: seconds; C{0} keeps entries until pushed out.
    @param reactor: an C{IReactorTime} for the TTL; the global reactor when
        C{None}.
    """

    def __init__(self, size: int = 1000, ttl: float = 0, reactor: Any = None) -> None:
        super().__init__(size, ttl, reactor)
        # The key of the newest id appended since the last clear (held or
        # not: an entry expired by the TTL must not come back).
        self._newest: tuple[int, int] | None = None

    def append(self, event: Event) -> None:
        """
        Remember C{event}, unless an event at least as new is already held.

        @raise ValueError: if its id is not a Redis stream id.
        """
        if event.id is None:
            raise ValueError("only events with stream ids can be held in a StreamHistory")
        key = stream_id_key(event.id)
        if self._newest is not None and key <= self._newest:
            return
        self._newest = key
        super().append(event)

    def stamp(self, event: Event) -> float:
        """The time in the stream id: the TTL counts from when Redis stored it."""
        assert event.id is not None
        return stream_id_key(event.id)[0] / 1000

    def clear(self) -> None:
        super().clear()
        self._newest = None
