"""
L{IRelay}: what carries published events between brokers (e.g.
L{sse_twisted.redis.RedisBus}), as the broker sees it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from twisted.internet.defer import Deferred

from .event import Event, Item
from .history import IHistory

__all__ = ["BatchTooLarge", "IRelay"]


class BatchTooLarge(ValueError):
    """
    A batch with more events than the relay's history holds: its head would
    be trimmed before any node could read it. Nothing was stored; over HTTP
    this is a 413.
    """


class IRelay(Protocol):
    """
    Stores published items, chooses their ids, and hands every event, from
    every node, back to each broker in one global order.

    L{sse_twisted.SSEBroker} wires one given to it: it uses the relay's
    L{history}, sets L{on_event} and L{on_gap}, and starts and stops it with
    itself.
    """

    #: Connected and reading: what a health check reports.
    ready: bool

    @property
    def history(self) -> IHistory:
        """The events a resuming subscriber is replayed from (all nodes' events)."""
        ...

    #: Called once per event, in the global order.
    on_event: Callable[[Event], object] | None
    #: Called with the last id before events that were lost, and why.
    on_gap: Callable[[str, str], object] | None

    def start(self) -> None:
        """Begin connecting and reading (the broker calls it as it starts)."""
        ...

    def stop(self) -> Deferred[None]:
        """Stop reading and close; fire once closed (after the broker drained)."""
        ...

    def publish(self, items: Sequence[Item]) -> Deferred[list[str]]:
        """
        Store C{items} (validated, without ids), all or none; fire with their
        ids. The events come back through L{on_event}, here as on every node.

        @raise BatchTooLarge: for more items than the history holds.
        """
        ...
