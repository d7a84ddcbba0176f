"""
A fan-out's writes, coalesced per connection and sent a slice per reactor turn.

Writing every subscriber in the publish call blocks the reactor for the
whole fan-out (7 ms for 1,000 streams, 140 ms for 20,000) and costs one
C{send()} per subscriber per event, since nothing can arrive while it runs.
The outbox keeps, per connection, the chunks it has not sent yet, and sends
them a slice of connections at a time: the first slice before the publish
returns (and its answer is written), the next ones in the following reactor
turns, with input read in between; while nothing waits to be read or
written, one slice follows another in the same turn. An event published
meanwhile (a POST read between two slices, the items of a batch, the
entries of one Redis read) joins what each connection is still owed, so a
connection reached later gets several events in one C{send()}. A lone event
is never held for a timer.

Ordering is per connection: every other write to a stream's connection
(heartbeats, notices, catch-up, the end of the response) first sends what
the outbox holds for it (L{Outbox.flush}); an abort drops it
(L{Outbox.discard}). Memory stays bounded: a connection holds at most
about L{HELD_BYTES} here before it is sent, so a stalled client gets past
its transport's mark by that much at most, after which it is paused and
queues as before.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from . import _transport

__all__ = ["FIRST_SLICE", "HELD_BYTES", "QUIET", "SLICE", "Outbox", "held"]

#: Connections sent to before a publish returns (and its answer is written):
#: ~0.4 ms of C{send()}s, so a publisher hears back, and publishes again,
#: while the rest of the fan-out goes on.
FIRST_SLICE = 64
#: Connections sent to per later reactor turn: ~0.8 ms of C{send()}s. Fewer
#: turns cost a burst its coalescing, more cost a lone event latency: 64/128
#: measured 2.6 µs of CPU per delivered event in the burst against 4.1 at
#: 64/256 and 1.6 at 64/64, with the paced p99 equal to the unsliced one's.
SLICE = 128
#: About the most bytes held for one connection: more is sent at once.
HELD_BYTES = 32 * 1024
#: Seconds since the last fan-out's end after which a lone event goes out
#: whole, as it is published: nothing came close enough to join it, and
#: slicing would only add reactor turns to its latency.
QUIET = 0.005

#: Outer L{held} blocks running, and the outboxes that wait for their end.
_holding = 0
_waiting: list[Outbox] = []


@contextmanager
def held() -> Iterator[None]:
    """
    Send nothing until the block ends: the events of a batch published in
    it (or of one Redis read) reach each connection as one write. Nested
    blocks join the outermost one.
    """
    global _holding
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
        if not _holding:
            waiting = _waiting[:]
            del _waiting[:]
            for outbox in waiting:
                outbox.kick()


class Outbox:
    """
    The chunks owed to each fast-path connection of one broker, in the order
    the connections were first owed something.

    Two forms, one meaning: while nothing else is owed, a fan-out is kept
    as it came (one chunk, the list of its connections, how far it got),
    so a lone event costs no bookkeeping per connection; once anything
    more is owed, or one connection must be told apart (a flush, a
    discard), what is left of it becomes a chunk per connection.

    @param call_later: the broker's reactor's C{callLater}, for the slices
        after the first.
    @param input_waiting: whether the reactor has input (or output) ready to
        handle: a later slice is followed by another at once while it has
        none, so a lone event's fan-out takes few reactor turns. C{None}
        (cannot tell): a turn after every slice.
    @param seconds: the reactor's clock: a fan-out that starts L{QUIET}
        seconds or more after the last one ended is sent whole, at once.
        C{None}: always sliced.
    """

    __slots__ = (
        "_call",
        "_call_later",
        "_input_waiting",
        "_order",
        "_pending",
        "_run",
        "_run_at",
        "_run_chunk",
        "_seconds",
        "_waiting",
        "ended",
        "first_slice",
        "slice_size",
    )

    def __init__(
        self,
        call_later: Any,
        slice_size: int = SLICE,
        first_slice: int = FIRST_SLICE,
        input_waiting: Callable[[], bool] | None = None,
        seconds: Callable[[], float] | None = None,
    ) -> None:
        if slice_size < 1 or first_slice < 1:
            raise ValueError(f"slices must be at least 1, got {first_slice} and {slice_size}")
        self._call_later = call_later
        self._input_waiting = input_waiting
        self._seconds = seconds
        #: When the last fan-out was all sent (the reactor's clock).
        self.ended = float("-inf")
        #: Connections sent to per later reactor turn.
        self.slice_size = slice_size
        #: Connections sent to by L{kick}, before the publish returns.
        self.first_slice = first_slice
        # What each connection is owed: one chunk, or a list of them.
        self._pending: dict[Any, bytes | list[bytes]] = {}
        # Connections in the order they were owed; one flushed early stays
        # here and is skipped when its turn comes.
        self._order: deque[Any] = deque()
        # A fan-out kept as it came: its connections from _run_at on are
        # owed _run_chunk, and nothing else is owed (_pending is empty).
        self._run: list[Any] | None = None
        self._run_at = 0
        self._run_chunk = b""
        self._call: Any = None
        self._waiting = False

    def __len__(self) -> int:
        """How many connections are owed something."""
        run = self._run
        return len(self._pending) + (len(run) - self._run_at if run is not None else 0)

    def add_all(self, transports: list[Any], data: bytes) -> None:
        """
        Owe C{data} to each of C{transports} (each once; the list is kept):
        one event's fan-out.
        """
        if self._run is None and not self._pending and not _holding:
            self._run, self._run_at, self._run_chunk = transports, 0, data
            return
        self._spread()
        add = self.add
        for transport in transports:
            add(transport, data)

    def _spread(self) -> None:
        """What is left of the kept fan-out, as a chunk owed per connection."""
        run = self._run
        if run is None:
            return
        self._run = None
        left = run[self._run_at :]
        data = self._run_chunk
        self._run_chunk = b""
        self._pending.update(dict.fromkeys(left, data))
        self._order.extend(left)

    def add(self, transport: Any, data: bytes) -> None:
        """Owe C{data} to C{transport}; sent by a later L{kick} or L{flush}."""
        if self._run is not None:
            self._spread()
        pending = self._pending
        owed = pending.get(transport)
        if owed is None:
            # The common case (a lone event) allocates no container: a list
            # per connection per event would wake the cyclic GC every event,
            # and its full collections are tens of milliseconds of latency.
            pending[transport] = data
            self._order.append(transport)
            return
        if isinstance(owed, bytes):
            owed = pending[transport] = [owed, data]
        else:
            owed.append(data)
        if len(owed) * len(data) >= HELD_BYTES:
            self.flush(transport)

    def held_bytes(self, transport: Any) -> int:
        """How many bytes are owed to C{transport}."""
        owed = self._pending.get(transport)
        if owed is None:
            run = self._run
            if run is not None and transport in run[self._run_at :]:
                return len(self._run_chunk)
            return 0
        return len(owed) if isinstance(owed, bytes) else sum(map(len, owed))

    def flush(self, transport: Any) -> None:
        """Send what C{transport} is owed, now: before anything else is written to it."""
        if self._run is not None:
            self._spread()
        owed = self._pending.pop(transport, None)
        if owed is not None:
            _transport.send(transport, owed if isinstance(owed, bytes) else b"".join(owed))

    def discard(self, transport: Any) -> None:
        """Forget what C{transport} is owed (its connection is being dropped)."""
        if self._run is not None:
            self._spread()
        self._pending.pop(transport, None)

    def kick(self) -> None:
        """
        After a fan-out: send one slice now, and the rest in the next turns
        (once the outermost L{held} block ends, inside one).
        """
        if _holding:
            if not self._waiting:
                self._waiting = True
                _waiting.append(self)
            return
        self._waiting = False
        if self._call is None:
            seconds = self._seconds
            run = self._run
            if seconds is not None and run is not None and seconds() - self.ended >= QUIET:
                self._send_slice(len(run))  # a lone event after a quiet spell
            else:
                self._send_slice(self.first_slice)
            self._schedule()

    def _turn(self) -> None:
        # The first slice went before the publish's answer was written; a
        # later one goes on with the next while nothing else waits (the
        # answer, a new request, a stream that drained), else yields a turn.
        self._call = None
        waiting = self._input_waiting
        self._send_slice(self.slice_size)
        while (self._pending or self._run is not None) and waiting is not None and not waiting():
            self._send_slice(self.slice_size)
        self._schedule()

    def _schedule(self) -> None:
        if self._pending or self._run is not None:
            if self._call is None:
                self._call = self._call_later(0, self._turn)
        elif self._seconds is not None:
            self.ended = self._seconds()

    def _send_slice(self, left: int) -> None:
        run = self._run
        if run is not None:
            # Nothing else is owed: straight from the fan-out's list.
            start = self._run_at
            end = min(start + left, len(run))
            data = self._run_chunk
            send = _transport.send
            for transport in run[start:end]:
                send(transport, data)
            if end == len(run):
                self._run = None
                self._run_chunk = b""
            else:
                self._run_at = end
            return
        pending = self._pending
        order = self._order
        send = _transport.send
        # Connections on the same channels are owed the same chunks: join once.
        last_parts: list[bytes] | None = None
        last_data = b""
        while left and order:
            transport = order.popleft()
            owed = pending.pop(transport, None)
            if owed is None:
                continue  # flushed or discarded already
            left -= 1
            if isinstance(owed, bytes):
                data = owed
            elif owed == last_parts:
                data = last_data
            else:
                data = last_data = b"".join(owed)
                last_parts = owed
            send(transport, data)
