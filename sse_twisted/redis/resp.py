"""
RESP, the Redis protocol, over Twisted: commands pipelined on one
connection, replies parsed by C{hiredis.Reader} (the C parser that Redis
maintains) and matched to their commands in order.

Why our own rather than a client library: the bus needs a small part of one
(a handful of commands, C{MULTI}/C{EXEC} in one write, a blocking C{XREAD})
and needs it cheap on the read path. Every byte of a C{dataReceived} goes to
the parser at once, so a whole C{XREAD} reply of hundreds of entries is
parsed in one reactor turn, in C; the replies then fire their Deferreds in
the order the commands were sent (Redis answers each connection in order).
Connecting, logging in and retrying are not this module's: see
L{sse_twisted.redis.link} and L{sse_twisted.redis.bus}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import hiredis
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionClosed, ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

__all__ = ["ReplyError", "RespFactory", "RespProtocol", "encode_command"]


class ReplyError(Exception):
    """
    An error reply from Redis (C{-ERR ...}, C{-WRONGTYPE ...}): the exception
    a command's Deferred fails with, and the value an error inside an
    C{EXEC} reply's list takes.
    """


def _arg(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bool):
        # Redis has no booleans; an int() of one is a bug in the caller.
        raise TypeError(f"not a Redis argument: {value!r}")
    if isinstance(value, int | float):
        return str(value).encode("ascii")
    raise TypeError(f"not a Redis argument: {value!r}")


def encode_command(args: Sequence[Any]) -> bytes:
    """One command as a RESP array of bulk strings (C{str}, C{bytes}, numbers)."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = _arg(arg)
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class RespProtocol(Protocol):
    """
    One Redis connection: L{execute} and L{pipeline} write commands at once
    and return Deferreds that fire with their replies, in order.

    Replies are decoded as UTF-8 (what this package writes; bytes that are
    not UTF-8, from another writer, become U+FFFD rather than breaking the
    connection), C{nil} is C{None}, and an error reply fails its command's
    Deferred with L{ReplyError} (inside an array, it is a L{ReplyError}
    value). A reply the parser cannot read aborts the connection: what
    follows could not be matched to its command. When the connection is
    lost, every command still waiting fails with the reason (a
    C{ConnectionClosed}), before L{on_lost} is called.

    @ivar on_lost: called once with the reason, after the waiting commands
        have failed.
    @ivar on_reply: called as C{on_reply(sent)} for each reply whose command
        was sent with a C{sent} time (the round-trip measure).
    @ivar closed: the connection is gone.
    """

    def __init__(self) -> None:
        self._reader = hiredis.Reader(encoding="utf-8", errors="replace", replyError=ReplyError)
        # Per command sent and not yet answered: its Deferred and when it was
        # sent (None: not timed, e.g. a blocking read).
        self._pending: deque[tuple[Deferred[Any], float | None]] = deque()
        self.on_lost: Callable[[Failure], object] | None = None
        self.on_reply: Callable[[float], object] | None = None
        self.closed = False

    @property
    def waiting(self) -> int:
        """Commands sent and not yet answered."""
        return len(self._pending)

    def execute(self, *args: Any, sent: float | None = None) -> Deferred[Any]:
        """Send one command; a Deferred of its reply."""
        return self.pipeline([args], sent=sent)[0]

    def pipeline(
        self, commands: Iterable[Sequence[Any]], sent: float | None = None
    ) -> list[Deferred[Any]]:
        """
        Send C{commands} in one write; a Deferred per command, in order.
        C{sent} (a clock reading) is reported to L{on_reply} with the last
        reply only: a pipeline is one round trip.
        """
        data = [encode_command(args) for args in commands]
        if self.closed or self.transport is None:
            reason = Failure(ConnectionDone("not connected to Redis"))
            return [fail(reason) for _ in data]
        deferreds: list[Deferred[Any]] = [Deferred() for _ in data]
        last = len(deferreds) - 1
        self._pending.extend((d, sent if i == last else None) for i, d in enumerate(deferreds))
        self.transport.write(b"".join(data))
        return deferreds

    def dataReceived(self, data: bytes) -> None:
        reader = self._reader
        try:
            reader.feed(data)
            while not self.closed:
                reply = reader.gets()
                if reply is False:
                    return
                self._answer(reply)
        except hiredis.ProtocolError:
            # Nothing after this can be matched to its command.
            self.closed = True
            if self.transport is not None:
                self.transport.abortConnection()  # type: ignore[attr-defined]  # ITCPTransport

    def _answer(self, reply: Any) -> None:
        if not self._pending:
            # A reply nobody asked for: out of step; give the connection up.
            raise hiredis.ProtocolError("a reply without a command")
        d, sent = self._pending.popleft()
        if sent is not None and self.on_reply is not None:
            self.on_reply(sent)
        if isinstance(reply, ReplyError):
            d.errback(reply)
        else:
            d.callback(reply)

    def connectionLost(self, reason: Failure = Failure(ConnectionDone())) -> None:  # noqa: B008
        self.closed = True
        if not reason.check(ConnectionClosed):
            reason = Failure(ConnectionDone(str(reason.value)))
        pending, self._pending = self._pending, deque()
        for d, _sent in pending:
            d.errback(reason)
        on_lost = self.on_lost
        if on_lost is not None:
            on_lost(reason)


class RespFactory(Factory):
    """Builds L{RespProtocol}s, quietly (no line per connection attempt)."""

    noisy = False
    protocol = RespProtocol
