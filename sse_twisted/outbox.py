"""
A fan-out's writes, coalesced per connection and sent a slice per reactor turn.

Writing every subscriber in the publish call blocks the reactor for the
whole fan-out (7 ms for 1,000 streams, 140 ms for 20,000) and costs one
C{send()} per subscriber per event, since nothing can arrive while it runs.
The outbox keeps, per connection, the chunks it has not sent yet, and sends
them a slice of connections at a time: the first slice before the publish
returns, the next ones in the following reactor turns, with input read in
between. An event published meanwhile (a POST read between two slices, the
items of a batch, the entries of one Redis read) joins what each connection
is still owed, so a connection reached later gets several events in one
C{send()}. A lone event is never held for a timer: its slices follow each
other as fast as the reactor turns.

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
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from . import _transport

__all__ = ["HELD_BYTES", "SLICE", "Outbox", "held"]

#: Connections sent to per slice (per reactor turn): ~0.4 ms of C{send()}s.
SLICE = 64
#: About the most bytes held for one connection: more is sent at once.
HELD_BYTES = 32 * 1024

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

    @param call_later: the broker's reactor's C{callLater}, for the slices
        after the first.
    """

    __slots__ = ("_call", "_call_later", "_order", "_pending", "_waiting", "slice_size")

    def __init__(self, call_later: Any, slice_size: int = SLICE) -> None:
        if slice_size < 1:
            raise ValueError(f"slice_size must be at least 1, got {slice_size}")
        self._call_later = call_later
        #: Connections sent to per slice.
        self.slice_size = slice_size
        self._pending: dict[Any, list[bytes]] = {}
        # Connections in the order they were owed; one flushed early stays
        # here and is skipped when its turn comes.
        self._order: deque[Any] = deque()
        self._call: Any = None
        self._waiting = False

    def __len__(self) -> int:
        """How many connections are owed something."""
        return len(self._pending)

    def add(self, transport: Any, data: bytes) -> None:
        """Owe C{data} to C{transport}; sent by a later L{kick} or L{flush}."""
        parts = self._pending.get(transport)
        if parts is None:
            self._pending[transport] = [data]
            self._order.append(transport)
            return
        parts.append(data)
        if len(parts) * len(data) >= HELD_BYTES:
            self.flush(transport)

    def held_bytes(self, transport: Any) -> int:
        """How many bytes are owed to C{transport}."""
        return sum(map(len, self._pending.get(transport, ())))

    def flush(self, transport: Any) -> None:
        """Send what C{transport} is owed, now: before anything else is written to it."""
        parts = self._pending.pop(transport, None)
        if parts is not None:
            _transport.send(transport, parts[0] if len(parts) == 1 else b"".join(parts))

    def discard(self, transport: Any) -> None:
        """Forget what C{transport} is owed (its connection is being dropped)."""
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
            self._send_slice()
            self._schedule()

    def _turn(self) -> None:
        self._call = None
        self._send_slice()
        self._schedule()

    def _schedule(self) -> None:
        if self._pending and self._call is None:
            self._call = self._call_later(0, self._turn)

    def _send_slice(self) -> None:
        pending = self._pending
        order = self._order
        send = _transport.send
        # Connections on the same channels are owed the same chunks: join once.
        last_parts: list[bytes] | None = None
        last_data = b""
        left = self.slice_size
        while left and order:
            transport = order.popleft()
            parts = pending.pop(transport, None)
            if parts is None:
                continue  # flushed or discarded already
            left -= 1
            if len(parts) == 1:
                data = parts[0]
            elif parts == last_parts:
                data = last_data
            else:
                data = last_data = b"".join(parts)
                last_parts = parts
            send(transport, data)
