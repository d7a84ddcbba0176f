"""The broker's counters, in one small object that whoever counts is handed."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Stats"]


@dataclass(slots=True)
class Stats:
    """
    Plain integers: the hot path pays one add, and L{sse_twisted.metrics}
    reads them at scrape time. The broker owns one and hands it to its
    subscribers, which count what happens to their own streams.
    """

    #: Events published (dispatched to this broker's subscribers).
    published: int = 0
    #: Events handed to subscribers (written or queued).
    delivered: int = 0
    #: Bytes of events handed to subscribers, HTTP framing excluded.
    bytes_sent: int = 0
    #: Events dropped for a slow client (overflow policy drop).
    dropped: int = 0
    #: Slow clients disconnected (overflow policy disconnect).
    slow_disconnects: int = 0
    #: Queue overflows turned into a catch-up from the history.
    catchups: int = 0
    #: Events replayed from the history (resumes, ?replay= and catch-ups).
    replayed: int = 0
    #: sse.reset signals sent.
    resets: int = 0
    #: Heartbeat comments written.
    heartbeats: int = 0
    #: Streams aborted because their socket took no byte for write_timeout.
    write_timeouts: int = 0
    #: Streams ended because their token expired.
    expired: int = 0
