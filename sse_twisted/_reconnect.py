"""
When an L{sse_twisted.client.EventSource} connects again: after the server's
C{retry:} delay, doubled after each consecutive attempt that failed before a
stream opened (the spec allows the extra wait), and never sooner.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["Reconnection"]

# Exponent cap so that the backoff arithmetic cannot overflow a float.
_MAX_DOUBLINGS = 64
# A floor for delays after failed attempts, so that a server saying
# "retry: 0" cannot make the client hammer a host that refuses connections.
_MIN_FAILURE_DELAY = 0.1


class Reconnection:
    """
    The reconnection policy of one source, and its pending reconnection.

    @ivar reconnection_time: the delay in seconds before any backoff: the
        initial C{retry} until the server sends C{retry:}.
    @ivar max_backoff: the longest delay, in seconds, that doubling may
        reach (a server's own longer C{retry:} is still honoured).
    @ivar failures: attempts that failed in a row since a stream last opened.
    """

    def __init__(self, retry: float, max_backoff: float) -> None:
        """@raise ValueError: for a negative delay."""
        if retry < 0 or max_backoff < 0:
            raise ValueError(
                f"retry and max_backoff must be non-negative seconds, got {retry}, {max_backoff}"
            )
        self.reconnection_time = float(retry)
        self.max_backoff = float(max_backoff)
        self.failures = 0
        self._pending: IDelayedCall | None = None

    def server_retry(self, milliseconds: int) -> None:
        """The server sent C{retry:}: the new delay before any backoff."""
        self.reconnection_time = milliseconds / 1000

    def attempt_failed(self) -> None:
        """An attempt failed before a stream opened: the next delay doubles."""
        self.failures += 1

    def opened(self) -> None:
        """A stream opened: the backoff starts over."""
        self.failures = 0

    def delay(self) -> float:
        """Seconds to wait before the next attempt."""
        base = self.reconnection_time
        if self.failures == 0:
            return base
        base = max(base, _MIN_FAILURE_DELAY)
        backoff = base * 2.0 ** min(self.failures - 1, _MAX_DOUBLINGS)
        return max(base, min(backoff, self.max_backoff))

    def schedule(self, clock: IReactorTime, connect: Callable[[], None]) -> float:
        """Call C{connect} after L{delay} seconds on C{clock}; return the delay."""
        delay = self.delay()
        self._pending = clock.callLater(delay, self._due, connect)
        return delay

    def _due(self, connect: Callable[[], None]) -> None:
        self._pending = None
        connect()

    def cancel(self) -> None:
        """Forget the pending reconnection, if any (idempotent)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            if pending.active():
                pending.cancel()
