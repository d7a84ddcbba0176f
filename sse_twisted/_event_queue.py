"""
The queue behind C{async for event in source}: items wait in order until
asked for, a waiting reader gets the next one at once, and once closed the
reader meets C{StopAsyncIteration} after the last item.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed

__all__ = ["EventQueue"]

T = TypeVar("T")


class EventQueue(Generic[T]):
    """
    A closable queue read with Deferreds: a deque, not Twisted's
    C{DeferredQueue}, whose list pops from the front in O(n) each time a
    slow reader catches up.
    """

    def __init__(self) -> None:
        self._items: deque[T] = deque()
        self._waiters: deque[Deferred[T]] = deque()
        self._closed = False

    def put(self, item: T) -> None:
        """Hand C{item} to the first waiting reader, or keep it for the next."""
        if self._waiters:
            self._waiters.popleft().callback(item)
        else:
            self._items.append(item)

    def get(self) -> Deferred[T]:
        """
        Fire with the next item; fail with C{StopAsyncIteration} once closed
        and empty. Cancelling the Deferred gives up its place.
        """
        if self._items:
            return succeed(self._items.popleft())
        if self._closed:
            return fail(StopAsyncIteration())
        d: Deferred[T] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def close(self) -> None:
        """No more items: the waiting readers stop now, the others once they read the rest."""
        self._closed = True
        waiters, self._waiters = self._waiters, deque()
        for waiter in waiters:
            waiter.errback(StopAsyncIteration())
