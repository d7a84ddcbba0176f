"""
A stream's lifetime (C{--max-lifetime}): a stream older than this ends
cleanly with a C{retry:}, and its client reconnects, resumes with
C{Last-Event-ID} and misses nothing. After a deploy, or when a node is added
behind a load balancer, streams spread over the nodes within one lifetime.

Each stream's deadline is jittered by up to ±10% so that the streams opened
together (a reconnection storm) do not all end together. Deadlines are kept
in buckets of C{lifetime / 100} seconds (at most a second), swept by one
C{LoopingCall} per broker: no timer per stream (a C{callLater} each would be a heap entry and
a C{DelayedCall} of ~300 bytes per stream, and cancelled on every early end).
A stream then ends within one bucket of its deadline, and the deadlines are
drawn so that this stays within [0.9, 1.1] x the lifetime.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any

from twisted.internet.task import LoopingCall

from .subscriber import Subscriber

__all__ = ["JITTER", "Lifetimes"]

#: How far a deadline may be from the lifetime, as a fraction of it.
JITTER = 0.1
#: Buckets per lifetime: the sweep's period is C{lifetime / _BUCKETS}...
_BUCKETS = 100
#: ... or at most this, so that streams opened together reconnect a few at a
#: time (a sweep a second costs a look at the heap's top).
_MAX_TICK = 1.0


class Lifetimes:
    """
    The deadlines of one broker's streams, and the sweep that ends them.

    @param lifetime: seconds a stream may stay open (on average).
    @param clock: the broker's C{IReactorTime} (a function: the global
        reactor is only looked up when needed).
    @param end: ends one stream that reached its deadline
        (L{sse_twisted.ending.StreamEnds.retire}).
    @param random: a number in [0, 1) per stream (for tests).
    """

    def __init__(
        self,
        lifetime: float,
        clock: Callable[[], Any],
        end: Callable[[Subscriber], object],
        random: Callable[[], float] = random.random,
    ) -> None:
        if not lifetime > 0:
            raise ValueError(f"max_lifetime must be > 0 seconds, got {lifetime}")
        self.lifetime = lifetime
        self.tick = min(lifetime / _BUCKETS, _MAX_TICK)
        self._clock = clock
        self._end = end
        self._random = random
        # Bucket number (deadline // tick) -> its streams; the heap holds the
        # numbers of the buckets, so a sweep finds the due ones in order.
        self._buckets: dict[int, set[Subscriber]] = {}
        self._due: list[int] = []
        self._where: dict[Subscriber, int] = {}
        self._sweeper: LoopingCall | None = None

    def __len__(self) -> int:
        return len(self._where)

    def deadline(self, now: float) -> float:
        """
        A new stream's deadline: C{now} plus the lifetime, jittered. A stream
        ends at the first sweep whose bucket is at or past its deadline's,
        that is within one bucket of it either way, so the deadline is drawn
        one bucket inside the [0.9, 1.1] band.
        """
        low = self.lifetime * (1 - JITTER) + self.tick
        high = self.lifetime * (1 + JITTER) - self.tick
        return now + low + (high - low) * self._random()

    def add(self, sub: Subscriber) -> None:
        """Give C{sub} its deadline; start the sweep with the first stream."""
        clock = self._clock()
        key = int(self.deadline(clock.seconds()) // self.tick)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = set()
            heapq.heappush(self._due, key)
        bucket.add(sub)
        self._where[sub] = key
        if self._sweeper is None:
            self._sweeper = LoopingCall(self.sweep)
            self._sweeper.clock = clock
            self._sweeper.start(self.tick, now=False)

    def discard(self, sub: Subscriber) -> None:
        """C{sub} ended before its deadline: forget it (its bucket may stay, empty)."""
        key = self._where.pop(sub, None)
        if key is not None:
            bucket = self._buckets.get(key)
            if bucket is not None:
                bucket.discard(sub)

    def sweep(self) -> None:
        """End the streams whose bucket is due (an empty bucket is just dropped)."""
        now = int(self._clock().seconds() // self.tick)
        due = self._due
        while due and due[0] <= now:
            bucket = self._buckets.pop(heapq.heappop(due), None)
            for sub in list(bucket or ()):
                # Ending one may end the last stream, which stops this sweep.
                if self._where.pop(sub, None) is not None and not sub.ended:
                    self._end(sub)

    def stop(self) -> None:
        """No stream is left, or the broker drains: stop the sweep, hold nothing."""
        if self._sweeper is not None and self._sweeper.running:
            self._sweeper.stop()
        self._sweeper = None
        self._buckets = {}
        self._due = []
        self._where = {}
