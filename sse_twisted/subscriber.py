"""
One open event stream: its request, what it reads, bounded queue, producer
methods and how it ends.

The subscriber registers itself as a streaming producer on its request, so
Twisted's own flow control tells it when the client stops reading
(L{Subscriber.pauseProducing}) and when it can take more
(L{Subscriber.resumeProducing}). While writing freely an event costs one
write; only while paused do events go to the bounded queue, where the
overflow policy decides what a full queue means.
"""

from __future__ import annotations

from collections.abc import Callable, Container
from typing import Any, Literal

from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.server import Request
from zope.interface import implementer

from . import _transport
from .backlog import Backlog
from .event import Event, reset_notice
from .history import IHistory
from .outbox import Outbox
from .stats import Stats

__all__ = ["OVERFLOW_POLICIES", "EndReason", "Overflow", "Subscriber"]

#: What a full queue does: drop the event, disconnect, or catch up from the history.
Overflow = Literal["drop", "disconnect", "catchup"]
#: Every L{Overflow} policy (what C{--overflow} accepts).
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("drop", "disconnect", "catchup")

#: Why a stream ended (L{Subscriber.end_reason}, what C{on_unsubscribe} is
#: told): the client left, the application closed it, the server drained,
#: aborted it (slow, stalled), its token expired, or it reached its lifetime.
EndReason = Literal["gone", "closed", "drained", "aborted", "expired", "lifetime"]

#: Events fetched from the history per step while catching up.
CATCHUP_BATCH = 64


@implementer(IPushProducer)
class Subscriber:
    """
    An open stream.

    Three states, and a flag (C{_live}) that makes the common one cheap:
      - live: reading and caught up; an event is one write (through C{fast},
        the transport, when the response is plain HTTP/1.1 chunked);
      - paused: the transport is full; events wait in the bounded queue;
      - catching up (C{_cursor} set): the events after C{_cursor} come from
        the history, in order, as fast as the client reads; live events are
        not queued meanwhile, since the history has them too. A resume with
        C{Last-Event-ID} starts here, and so does the C{catchup} overflow
        policy. Catching up ends, in the same reactor turn as the last history
        read, by joining the live stream: no gap, no duplicate.

    Every way the stream ends (L{close}, L{abort}, the client leaving) goes
    through L{end} first, which calls C{on_end} (the broker takes it out of
    its index): once a stream is ending it is sent nothing more.

    @param readable: what it may read: its channels, or (a subscriber of
        every channel) an L{sse_twisted.access.AllChannels}; C{None}:
        everything.
    @param stats: the broker's counters, which it counts into.
    @param on_end: called once, when the stream starts to end.
    @param user: who holds the stream (a JWT's C{sub}), if known.
    @param patterns: the channel patterns it receives besides C{channels}
        (then C{readable} is an L{sse_twisted.access.Matching}).
    @param envelope: send every event as an envelope (L{Event.envelope}),
        notices too.
    @param outbox: where the broker's fan-out leaves this stream's chunks
        while it is on the fast path; every other write to the connection
        sends them first, so the order on the connection is the order
        written.
    """

    log = Logger()

    __slots__ = (
        "_channel",
        "_chunk_writer",
        "_closing",
        "_cursor",
        "_ended",
        "_history",
        "_live",
        "_on_end",
        "_outbox",
        "_paused",
        "_queue",
        "_stats",
        "_write",
        "channels",
        "end_reason",
        "envelope",
        "fast",
        "opened",
        "overflow",
        "patterns",
        "queue_size",
        "readable",
        "request",
        "transport",
        "user",
    )

    def __init__(
        self,
        request: Request,
        channels: frozenset[str] | None,
        *,
        queue_size: int,
        overflow: Overflow,
        history: IHistory | None,
        stats: Stats,
        on_end: Callable[[Subscriber], object],
        readable: Container[str] | None = None,
        user: str | None = None,
        patterns: frozenset[str] | None = None,
        envelope: bool = False,
        outbox: Outbox | None = None,
    ) -> None:
        self.request = request
        #: Who holds the stream (a JWT's C{sub}), if known.
        self.user = user
        #: The channels this subscriber receives, or C{None} for all of them.
        self.channels = channels
        #: The patterns it receives (besides C{channels}), or C{None}.
        self.patterns = patterns
        #: Whether it gets envelopes (C{?envelope=1}) rather than the frames.
        self.envelope = envelope
        self.readable: Container[str] | None = channels if readable is None else readable
        self.queue_size = queue_size
        self.overflow = overflow
        #: The transport to hand pre-built chunks to while live, else None.
        self.fast: Any = None
        self._history = history
        self._stats = stats
        self._on_end = on_end
        self._outbox = outbox
        self._paused = False
        self._live = True
        self._chunk_writer: Any = None
        self._closing = False
        self._ended = False
        self._cursor: str | None = None
        # Created on first use: an idle deque costs ~600 bytes per subscriber.
        self._queue: Backlog | None = None
        self._write = request.write
        # Kept because the request forgets its channel once it finishes.
        self._channel = request.channel
        self.transport = getattr(self._channel, "transport", None)
        #: Why it ended (set by L{end}); C{None} while open.
        self.end_reason: EndReason | None = None
        #: When it opened (the broker's clock), set only where someone asks (hooks).
        self.opened = 0.0

    def __repr__(self) -> str:
        return f"<Subscriber channels={sorted(self.channels or ())!r} paused={self._paused}>"

    @property
    def paused(self) -> bool:
        """Whether the client has stopped reading (the transport is full)."""
        return self._paused

    @property
    def catching_up(self) -> bool:
        """Whether the subscriber is being fed from the history."""
        return self._cursor is not None

    @property
    def queued(self) -> int:
        """How many events wait in the queue."""
        return self._queue.held if self._queue is not None else 0

    @property
    def held(self) -> int:
        """
        Bytes the outbox holds for the connection: a fan-out's later slices,
        sent within a few reactor turns.
        """
        outbox = self._outbox
        if outbox is None or self._chunk_writer is None:
            return 0
        return outbox.held_bytes(self._chunk_writer)

    @property
    def ended(self) -> bool:
        """Whether the stream is ending or gone: it is sent nothing more."""
        return self._ended

    def may_read(self, channel: str) -> bool:
        """Whether an event on C{channel} may reach this subscriber."""
        readable = self.readable
        return readable is None or channel in readable

    def peer(self) -> str:
        """The client's address, for logs."""
        try:
            return str(self.request.getClientAddress())
        except Exception:  # the request may have lost its channel already
            return "?"

    # Sending

    def send(self, event: Event) -> bool:
        """
        Write, queue, or (while catching up) leave to the history one event.

        @return: whether it was written or queued (not dropped, left to the
            history, or refused because the stream is ending).
        """
        if self._live:
            self._write(event.envelope if self.envelope else event.frame)
            return True
        if self._cursor is not None or self._ended:
            return False
        queue = self._queue
        if queue is None:
            queue = self._queue = Backlog(self.queue_size)
        if queue.push(event):
            return True
        self._overflowed(queue)
        return False

    def send_unqueued(self, data: bytes) -> bool:
        """Write C{data} only if the client is reading (heartbeats: never queued)."""
        if self._paused or self._ended:
            return False
        self._write(data)
        return True

    def notify_gap(self, last_id: str, reason: str) -> bool:
        """
        Tell the client that events after C{last_id} may be lost (C{sse.reset}
        with C{reason}); queued and owed events stay as they are.

        @return: whether it was written (an ending stream is told nothing).
        """
        if self._ended:
            return False
        self._write(reset_notice(last_id, reason, self.envelope))
        return True

    def _overflowed(self, queue: Backlog) -> None:
        stats = self._stats
        last = queue.last_event()
        if self.overflow == "catchup" and self._history is not None and last is not None:
            stats.catchups += 1
            # Keep what is queued; everything after it comes from the history.
            self._cursor = last.id
            return
        if self.overflow == "disconnect":
            stats.slow_disconnects += 1
            self.log.warn(
                "Slow SSE client {peer} disconnected: its queue of {size} events is full",
                peer=self.peer(),
                size=self.queue_size,
            )
            self.abort()
            return
        stats.dropped += 1
        if queue.drop():
            self.log.warn(
                "Slow SSE client {peer}: queue of {size} events full, dropping events",
                peer=self.peer(),
                size=self.queue_size,
            )

    # The live state

    def start(self, last_event_id: str | None = None, replay: int | None = 0) -> None:
        """
        Once the response head and opening are written: take the fast path
        where the response allows it, and resume after C{last_event_id}, or
        else replay the newest C{replay} events it may read (C{None}: all
        the history holds; C{0}: none).
        """
        self._chunk_writer = _transport.chunk_writer(self.request)
        if self._chunk_writer is not None and self._outbox is not None:
            self._write = self._write_in_order
        self._set_live(self._live)
        if last_event_id:
            self._resume_from(last_event_id)
        elif replay != 0 and self._history is not None:
            self._replay(replay)

    def _write_in_order(self, data: bytes) -> None:
        """C{request.write}, once what the outbox holds for the connection is sent."""
        self._flush_outbox()
        self.request.write(data)

    def _flush_outbox(self) -> None:
        outbox = self._outbox
        if outbox is not None and self._chunk_writer is not None:
            outbox.flush(self._chunk_writer)

    def _set_live(self, live: bool) -> None:
        live = live and not self._ended
        self._live = live
        # The fan-out's shared chunk holds the frame: envelopes take send().
        self.fast = self._chunk_writer if live and not self.envelope else None

    def _replay(self, count: int | None) -> None:
        """
        Write the newest C{count} events it may read (filtered by
        C{readable}, as every path is), in this reactor turn, so the live
        stream joins right after them. Should the client stop reading
        midway, the rest take the resume's path: from the history after the
        last one written, as it reads again.
        """
        assert self._history is not None
        write = self._write
        stats = self._stats
        envelope = self.envelope
        for event in self._history.latest(self.readable, count):
            write(event.envelope if envelope else event.frame)
            stats.replayed += 1
            if self._paused:
                assert event.id is not None
                self._resume_from(event.id)
                return

    def _resume_from(self, last_id: str) -> None:
        """Replay the events after C{last_id}, then join the live stream."""
        self._cursor = last_id
        self._set_live(False)
        if self._paused and (
            self._history is None or self._history.since(last_id, self.readable, 1) is None
        ):
            # Decided now, not when the client reads: the events published
            # from now on must be queued, not left to a history that cannot
            # be read from this id.
            self._cursor = None
            self._stats.resets += 1
            self._write(reset_notice(last_id, envelope=self.envelope))
            return
        self._flush()

    # IPushProducer

    def pauseProducing(self) -> None:
        """The transport's buffer is full: queue from now on."""
        self._paused = True
        self._set_live(False)

    def resumeProducing(self) -> None:
        """The transport drained: flush the queue in order, then catch up."""
        self._paused = False
        if not self._ended:
            self._flush()

    def stopProducing(self) -> None:
        """The connection is going away: the stream ends here."""
        self._paused = True
        self.end()

    def _flush(self, force: bool = False) -> None:
        """
        Write what is owed in order: the queue (with a drop notice wherever
        events were dropped), then the history after the cursor. Stops when
        the transport pauses, unless C{force} (the stream is closing and must
        get all it is owed).
        """
        queue = self._queue
        if queue is not None:
            if not queue.write_to(
                self._write, lambda: self._paused and not force, envelope=self.envelope
            ):
                return
            self._queue = None
        while self._cursor is not None and (force or not self._paused):
            self._catch_up(force)
        self._set_live(not self._paused and self._cursor is None)

    def _catch_up(self, force: bool = False) -> None:
        """Write the next batch from the history; clear the cursor when caught up."""
        cursor = self._cursor
        assert cursor is not None
        batch = (
            self._history.since(cursor, self.readable, CATCHUP_BATCH)
            if self._history is not None
            else None
        )
        if batch is None:
            self._cursor = None
            self._stats.resets += 1
            self._write(reset_notice(cursor, envelope=self.envelope))
            return
        if not batch:
            self._cursor = None
            return
        write = self._write
        stats = self._stats
        envelope = self.envelope
        for event in batch:
            write(event.envelope if envelope else event.frame)
            stats.replayed += 1
            self._cursor = event.id
            if self._paused and not force:
                return

    # Ending the stream

    def end(self, reason: EndReason = "gone") -> bool:
        """
        The one door every end of the stream goes through: leave the broker's
        index before anything else, so nothing more is sent.

        @param reason: why, kept in L{end_reason} (the first one counts).
        @return: whether this call ended it (later calls are no-ops).
        """
        if self._ended:
            return False
        self._ended = True
        self.end_reason = reason
        self._live = False
        self.fast = None
        # Nothing joins the outbox for this stream from now on, and whatever
        # still writes (close) sends what the outbox holds first. Dropping
        # the bound method of its own breaks the stream's one reference
        # cycle; with the request and channel letting go of it as the
        # connection closes, all of the connection is freed then, not at the
        # collector's next full collection.
        self._write = self.request.write
        self._on_end(self)
        return True

    def request_lost(self) -> None:
        """
        The connection is gone: called by a request that tells its producer
        (L{sse_twisted.bounded.BoundedRequest}) instead of C{notifyFinish}.
        """
        self.end()

    def close(self, last: bytes = b"", reason: EndReason = "closed") -> None:
        """
        End the stream cleanly: everything queued or owed from the history,
        then C{last}, then the end of the response, then close the connection
        once it is written.

        All of it is written even while the client is not reading (a clean
        end must never hide a gap), so memory stays bounded by the queue and
        the history, which hold it anyway; whoever closes aborts the stream
        if its bytes have not gone by a deadline, and the client then
        resumes with C{Last-Event-ID}.
        """
        if self._closing:
            return
        self._closing = True
        # The history is read now, while the cursor still means something;
        # nothing published after this reaches the stream.
        owed = self._cursor is not None or bool(self._queue)
        self.end(reason)
        request = self.request
        if _transport.request_gone(request):  # finish() would raise
            return
        self._flush_outbox()
        if owed:
            self._flush(force=True)
        if last:
            self._write(last)
        request.unregisterProducer()
        request.finish()
        lose = getattr(self._channel, "loseConnection", None)
        if lose is not None:
            lose()

    def closed(self) -> bool:
        """Whether the stream's bytes are out (so draining can stop waiting for it)."""
        return _transport.stream_flushed(self._channel, self.transport)

    def close_idle_connection(self) -> None:
        """Close an HTTP/2 connection none of whose streams is left."""
        _transport.close_idle_h2(self._channel)

    def abort(self, reason: EndReason = "aborted") -> None:
        """
        Drop the connection now, without flushing: for slow or stuck clients.

        The client sees a broken stream, not an end, so EventSource
        reconnects and resumes from the history with C{Last-Event-ID}.
        """
        self._closing = True
        self.end(reason)
        self._cursor = None
        self._queue = None
        if self._outbox is not None and self._chunk_writer is not None:
            self._outbox.discard(self._chunk_writer)
        _transport.abort(self._channel, self.transport)
