"""
How the server ends streams: at a token's expiry, when a socket has taken
no byte for too long, and when draining. Each goes through the stream's one
door (L{Subscriber.end}), and each either writes everything the stream is
owed or aborts it, so that a stream never ends cleanly over a gap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from ._transport import pending_bytes
from .stats import Stats
from .subscriber import Subscriber

__all__ = ["StreamEnds"]

_DRAIN_POLL = 0.05


class StreamEnds:
    """
    Ends streams for a broker.

    @param clock: the broker's C{IReactorTime} (a function, so that the
        global reactor is only looked up when needed).
    @param write_timeout: seconds a paused stream's socket may take no byte
        (C{0}: never checked).
    @param close_timeout: seconds a stream ended at its token's expiry has
        to take its last bytes.
    @param retry: the jittered C{retry:} hint written to a drained stream.
    """

    log = Logger()

    def __init__(
        self,
        stats: Stats,
        clock: Callable[[], Any],
        *,
        write_timeout: float,
        close_timeout: float,
        retry: Callable[[], int],
    ) -> None:
        self.stats = stats
        self._clock = clock
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self._retry = retry
        # Paused streams: when each was first seen stalled, and its pending bytes then.
        self._stalls: dict[Subscriber, tuple[float, int | None]] = {}

    # Token expiry

    def expire_at(self, sub: Subscriber, when: float) -> None:
        """End C{sub} when its authority ends, C{when} (the clock's seconds)."""
        clock = self._clock()
        call = clock.callLater(max(0.0, when - clock.seconds()), self.expire, sub)

        def cancel(result: object) -> None:
            if call.active():
                call.cancel()

        sub.request.notifyFinish().addBoth(cancel)

    def expire(self, sub: Subscriber) -> None:
        """
        The stream's token expired: nothing more is sent to it. What it was
        owed from before goes out and the stream ends, unless it must be read
        from the history (the client then resumes with a fresh token) or its
        bytes do not go out within C{close_timeout}: then it is aborted.
        """
        if sub.ended:
            return
        self.stats.expired += 1
        if sub.catching_up:
            sub.abort("expired")
            return
        sub.close(reason="expired")
        if not sub.closed():
            self._clock().callLater(self.close_timeout, self._abort_if_open, sub)

    def retire(self, sub: Subscriber) -> None:
        """
        The stream reached its lifetime (L{sse_twisted.lifetime}): end it as
        a drain does, with everything it is owed and a jittered C{retry:}, so
        its client reconnects (to any node) and resumes with no loss; aborted
        if its bytes have not gone within C{close_timeout}.
        """
        if sub.ended:
            return
        self.stats.lifetimes += 1
        sub.close(b"retry: %d\n\n" % self._retry(), reason="lifetime")
        if not sub.closed():
            self._clock().callLater(self.close_timeout, self._abort_if_open, sub)

    def _abort_if_open(self, sub: Subscriber) -> None:
        if not sub.closed():
            self.log.info(
                "SSE client {peer} did not take its last bytes in {timeout}s: aborted",
                peer=sub.peer(),
                timeout=self.close_timeout,
            )
            sub.abort()

    # Stalled sockets

    def sweep(self, subscribers: Iterable[Subscriber]) -> None:
        """
        Abort the streams whose socket has taken no byte for C{write_timeout}.

        A paused stream is stalled from the first sweep that sees it paused
        until its transport's pending bytes change (nothing is written to a
        paused stream, so any change means the peer read). Where the
        transport cannot say (TLS, HTTP/2), the whole time paused counts.
        """
        now = self._clock().seconds()
        limit = self.write_timeout
        stalls: dict[Subscriber, tuple[float, int | None]] = {}
        for sub in subscribers:
            if not sub.paused or sub.ended:
                continue
            transport = sub.transport
            pending = pending_bytes(transport) if transport is not None else None
            seen = self._stalls.get(sub)
            if seen is None or pending != seen[1]:
                stalls[sub] = (now, pending)  # the first look, or the peer read something
            elif now - seen[0] >= limit:
                self.stats.write_timeouts += 1
                self.log.info(
                    "SSE client {peer} took no byte for {timeout}s: aborted",
                    peer=sub.peer(),
                    timeout=limit,
                )
                sub.abort()
            else:
                stalls[sub] = seen
        self._stalls = stalls

    def forget(self) -> None:
        """No stream is left: hold on to none of them."""
        self._stalls = {}

    # Draining

    def drain(self, subscribers: Iterable[Subscriber], timeout: float) -> Deferred[None]:
        """
        End every stream cleanly: what is queued or owed for it, a jittered
        C{retry:} hint, the end of its response; its connection closes once
        its bytes are written. What is still open after C{timeout} seconds is
        aborted. Fires when all are gone.
        """
        subs = list(subscribers)
        for sub in subs:
            try:
                sub.close(b"retry: %d\n\n" % self._retry(), reason="drained")
            except Exception:
                self.log.failure("Error while closing an SSE stream")
        waiting = [s for s in subs if not s.closed()]
        if not waiting:
            return succeed(None)
        drained: Deferred[None] = Deferred()
        clock = self._clock()
        deadline = clock.seconds() + timeout

        def poll() -> None:
            nonlocal waiting
            for sub in waiting:
                sub.close_idle_connection()
            waiting = [s for s in waiting if not s.closed()]
            if waiting and clock.seconds() < deadline:
                clock.callLater(_DRAIN_POLL, poll)
                return
            for sub in waiting:
                self.log.warn(
                    "SSE client {peer} still open at drain deadline: aborted", peer=sub.peer()
                )
                sub.abort()
            drained.callback(None)

        clock.callLater(0, poll)
        return drained
