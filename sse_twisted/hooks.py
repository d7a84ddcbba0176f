"""
Subscribe hooks: the application decides who may open a stream, on what,
and is told when each stream ends.

  - C{SSEBroker(on_subscribe=hook)}: C{hook(request, channels, patterns)}
    returns (or returns a Deferred of) an L{Admission}: what to grant, which
    may be fewer channels and patterns than asked, and who holds the stream;
    or raises L{Refused} (401 or 403 with C{{"error": ...}}). Any other
    failure (L{HookFailed}, an exception, a backend that is down) sends the
    client away with a C{200} stream that says C{retry:} and ends, because
    EventSource gives up for good on a 5xx but tries again after an ended
    stream.
  - C{SSEBroker(on_unsubscribe=hook)}: C{hook(ended, reason)} with an
    L{Ended} and an L{sse_twisted.subscriber.EndReason}, called in a later
    reactor turn than the end itself (never inside a publish or a drain).

L{sse_twisted.webhooks} has the standalone server's hooks, which ask an HTTP
backend. This module knows no broker; L{sse_twisted.admission} runs the
subscribe hook in front of L{SSEBroker.subscribe<sse_twisted.broker.SSEBroker.subscribe>}.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from .subscriber import EndReason, Subscriber

__all__ = [
    "Admission",
    "EndReports",
    "Ended",
    "HookFailed",
    "OnSubscribe",
    "OnUnsubscribe",
    "RateLimitedLog",
    "Refused",
    "peer_of",
]


@dataclass(frozen=True)
class Admission:
    """
    What a subscribe hook grants.

    @ivar channels: the channels granted; C{None}: those asked for. Only
        channels asked for (or matching a pattern asked for) are kept; when
        every channel was asked for, the hook may name any (each still
        filtered by what the token may read).
    @ivar patterns: the patterns granted; C{None}: those asked for. Only
        patterns asked for are kept, unless every channel was asked for.
    @ivar user: who holds the stream (replaces the JWT's C{sub}, if any).
    """

    channels: Iterable[str] | None = None
    patterns: Iterable[str] | None = None
    user: str | None = None


class Refused(Exception):
    """
    Raised (or failed with) by a subscribe hook: the client gets C{status}
    (401 or 403) and C{{"error": message}}.
    """

    def __init__(self, status: int = 403, message: str = "not allowed to subscribe") -> None:
        if status not in (401, 403):
            raise ValueError(f"a subscribe hook refuses with 401 or 403, not {status}")
        super().__init__(message)
        self.status = status
        self.message = message


class HookFailed(Exception):
    """
    A hook could not answer (backend down, too slow, a wrong answer): the
    client is sent away to retry later, and this is logged at warn.
    """


@dataclass(frozen=True)
class Ended:
    """
    A stream that ended, as C{on_unsubscribe} is told of it.

    @ivar user: who held it (the subscribe hook's user, or the JWT's C{sub}).
    @ivar channels: its channels, sorted; C{None} for every channel.
    @ivar patterns: its patterns, sorted (empty without).
    @ivar peer: the client's C{host:port}.
    @ivar seconds: how long it was open.
    """

    user: str | None
    channels: tuple[str, ...] | None
    patterns: tuple[str, ...]
    peer: str
    seconds: float


#: C{on_subscribe(request, channels, patterns)}: an L{Admission} or a Deferred of one.
OnSubscribe = Callable[[Any, tuple[str, ...], tuple[str, ...]], "Admission | Deferred[Admission]"]
#: C{on_unsubscribe(ended, reason)}; what it returns is ignored (a failed Deferred is logged).
OnUnsubscribe = Callable[[Ended, EndReason], object]


def peer_of(request: Any) -> str:
    """The client's address as C{host:port} (C{[host]:port} for IPv6)."""
    try:
        address = request.getClientAddress()
    except Exception:  # the request may have lost its channel already
        return "?"
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return str(address)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class RateLimitedLog:
    """
    A warning at most once per C{every} seconds (per key); the ones held back
    are counted and said with the next one. A backend that is down must not
    turn each of thousands of reconnects into a log line.
    """

    def __init__(
        self, log: Logger, every: float = 10.0, now: Callable[[], float] = time.monotonic
    ) -> None:
        self.log = log
        self._now = now
        self.every = every
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, key: str, message: str) -> bool:
        """Log C{message} at warn unless C{key} was logged less than C{every} ago."""
        now = self._now()
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            self._held[key] = self._held.get(key, 0) + 1
            return False
        self._last[key] = now
        held = self._held.pop(key, 0)
        suffix = f" (and {held} more like it in the last {self.every:g}s)" if held else ""
        self.log.warn("{message}{suffix}", message=message, suffix=suffix)
        return True


class EndReports:
    """
    Tells C{on_unsubscribe} of each ended stream, in the reactor turn after
    it ended: an end happens inside a publish (an overflow), a drain or a
    sweep, where the application's code must not run (it might publish).
    One C{callLater} per turn with ends, not one per end.
    """

    log = Logger()

    def __init__(self, hook: OnUnsubscribe, clock: Callable[[], Any]) -> None:
        self.hook = hook
        self._clock = clock
        self._pending: list[tuple[Ended, EndReason]] = []

    def opened(self, sub: Subscriber) -> None:
        """C{sub} opens: note when (for L{Ended.seconds})."""
        sub.opened = self._clock().seconds()

    def ended(self, sub: Subscriber) -> None:
        """C{sub} ended (its L{Subscriber.end_reason} says why): report it soon."""
        clock = self._clock()
        patterns = getattr(sub, "patterns", None) or ()
        info = Ended(
            user=sub.user,
            channels=tuple(sorted(sub.channels)) if sub.channels is not None else None,
            patterns=tuple(sorted(patterns)),
            peer=peer_of(sub.request),
            seconds=max(0.0, clock.seconds() - sub.opened),
        )
        self._pending.append((info, sub.end_reason or "gone"))
        if len(self._pending) == 1:
            clock.callLater(0, self._report)

    def flush(self) -> Deferred[None]:
        """
        Report the ends that wait now, and fire once the hook has them out:
        its own C{flush()} if it has one (L{sse_twisted.webhooks.
        HTTPUnsubscribeHook} sends its batches), else at once.
        """
        self._report()
        flush = getattr(self.hook, "flush", None)
        if flush is None:
            return succeed(None)
        done: Deferred[None] = flush()
        return done

    def _report(self) -> None:
        pending, self._pending = self._pending, []
        for info, reason in pending:
            try:
                result = self.hook(info, reason)
            except Exception:
                self.log.failure("on_unsubscribe hook failed")
                continue
            if isinstance(result, Deferred):
                result.addErrback(lambda f: self.log.failure("on_unsubscribe hook failed", f))
