"""
One open event stream: its request, channel filter, bounded queue and
producer methods.

The subscriber registers itself as a streaming producer on its request, so
Twisted's own flow control tells it when the client stops reading
(L{pauseProducing}) and when it can take more (L{resumeProducing}). While
writing freely an event costs one C{write} call; only while paused do events
go to the bounded queue, where the overflow policy decides what a full queue
means.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Container
from typing import TYPE_CHECKING, Any, Literal

from twisted.internet import tcp
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.web.http import HTTPChannel
from twisted.web.server import Request
from zope.interface import implementer

from .event import Event, encode_json
from .event import frame as _frame

if TYPE_CHECKING:
    from .broker import SSEBroker
    from .history import IHistory

__all__ = [
    "OVERFLOW_POLICIES",
    "AllChannels",
    "Overflow",
    "Subscriber",
    "dropped_notice",
    "pending_bytes",
]

Overflow = Literal["drop", "disconnect", "catchup"]
OVERFLOW_POLICIES: tuple[Overflow, ...] = ("drop", "disconnect", "catchup")

#: Name of the event that tells a client how many events it missed.
DROPPED_EVENT = "sse.dropped"
#: Name of the event that tells a resuming client its last id is unknown.
RESET_EVENT = "sse.reset"
#: Outcomes of L{Subscriber.send}.
DELIVERED, SKIPPED, REMOVE = 1, 0, -1

#: Events fetched from the history per step while catching up.
CATCHUP_BATCH = 64


def dropped_notice(count: int) -> bytes:
    """
    The block that tells a client it missed C{count} events.

    A named event (not a comment) so that EventSource code can listen for it;
    it carries no id, so the client's last event id is left as it was.
    """
    return _frame(f'{{"dropped":{count}}}', event=DROPPED_EVENT)


def reset_notice(last_id: str, reason: str = "unknown-id") -> bytes:
    """
    The block that tells a client its C{last_id} is not in the history (evicted,
    expired, or from an earlier run): what follows is live, and events in
    between may be lost. No id, so the client's last event id stays as it was.
    """
    return _frame(encode_json({"lastEventId": last_id, "reason": reason}), event=RESET_EVENT)


def write_through(transport: Any, data: bytes) -> None:
    """
    Write C{data} to C{transport}, sending at once when nothing is waiting in
    its buffer.

    Twisted's C{write} buffers the bytes and asks the reactor to watch the
    socket for writability, then sends on the next loop and stops watching:
    a send plus two C{epoll_ctl} calls per event per subscriber. Writing
    through costs one C{send}; whatever the kernel does not take goes to
    C{transport.write} as before, so ordering, buffering, flow control
    (pauseProducing) and error handling stay Twisted's. Only for plain TCP
    connections, whose buffer fields we know; any other transport (TLS,
    HTTP/2, tests) gets its own C{write}. A function, not a closure per
    subscriber: that would cost ~250 bytes per idle stream.
    """
    if (
        type(transport) is not _TCPServer
        or transport._tempDataLen
        or transport.offset < len(transport.dataBuffer)
        or transport.disconnecting
        or not transport.connected
    ):
        transport.write(data)
        return
    try:
        sent = transport.socket.send(data)
    except BlockingIOError:
        sent = 0
    except OSError:
        transport.write(data)  # Twisted finds and reports the error as it writes
        return
    if sent < len(data):
        transport.write(data[sent:])


_TCPServer = tcp.Server


try:
    from fcntl import ioctl as _ioctl
    from termios import TIOCOUTQ as _TIOCOUTQ
except ImportError:  # pragma: no cover - not POSIX: only Twisted's buffer counts
    _ioctl = None  # type: ignore[assignment]
    _TIOCOUTQ = 0  # type: ignore[misc]


def _kernel_unsent(sock: Any) -> int:
    """Bytes in the socket's kernel send queue not yet acknowledged (Linux); 0 elsewhere."""
    if _ioctl is None:
        return 0
    try:
        raw = _ioctl(sock.fileno(), _TIOCOUTQ, b"\0\0\0\0")
    except (OSError, ValueError, AttributeError):
        return 0
    return int(struct.unpack("i", raw)[0])


def pending_bytes(transport: Any) -> int | None:
    """
    Bytes written to C{transport} that the peer has not taken yet (Twisted's
    buffer plus the kernel's send queue), or L{None} where that cannot be
    known (TLS, HTTP/2, test transports).

    Lets a stalled stream be told from a slow one: while a stream is paused
    nothing new is written to its transport, so this number falls exactly
    when the peer reads. The kernel's part matters: Linux grows a socket's
    send buffer to megabytes and reports it writable only once much of it
    has drained, so a slow reader can leave Twisted's buffer untouched for
    seconds while it reads all the time.
    """
    if type(transport) is not _TCPServer:
        return None
    buffered = len(transport.dataBuffer) - transport.offset + transport._tempDataLen
    return int(buffered) + _kernel_unsent(transport.socket)


def _transport_closed(transport: Any) -> bool:
    """Whether a TCP-like transport has really gone (its buffer flushed or lost)."""
    return bool(getattr(transport, "disconnected", False)) or not getattr(
        transport, "connected", True
    )


class AllChannels:
    """
    The channels a subscriber of every channel may read: all but the private
    ones, except those its grant covers.

    One decision per (subscriber, channel), taken once and cached (bounded),
    and used wherever an event may reach the subscriber: live dispatch, a
    resume from C{Last-Event-ID}, a catch-up after overflow, and the relay's
    deliveries (which are dispatches). It answers C{in}, like the frozenset
    of an ordinary subscription, so a history filters with it unchanged.
    """

    __slots__ = ("_allows", "_cache", "_private")

    #: Decisions kept per subscriber before the cache starts over.
    CACHE_SIZE = 256

    def __init__(
        self, private: Callable[[str], bool], allows: Callable[[str], bool] | None
    ) -> None:
        self._private = private
        self._allows = allows
        self._cache: dict[str, bool] = {}

    def __contains__(self, channel: object) -> bool:
        if not isinstance(channel, str):
            return False
        cache = self._cache
        decision = cache.get(channel)
        if decision is None:
            allows = self._allows
            decision = not self._private(channel) or (allows is not None and allows(channel))
            if len(cache) >= self.CACHE_SIZE:
                cache.clear()
            cache[channel] = decision
        return decision


class _Gap:
    """
    Where a slow client's queue overflowed (policy C{drop}): C{count} events
    were dropped at this place in the stream. Kept in the queue, so the
    client is told right where the events are missing, and later events can
    still queue behind it.
    """

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 1


@implementer(IPushProducer)
class Subscriber:
    """
    An open stream held by an L{SSEBroker}.

    Three states, and a flag (C{_live}) that makes the common one cheap:
      - live: reading and caught up; L{send} is one C{write};
      - paused: the transport is full; events wait in the bounded queue;
      - catching up (C{_cursor} set): the events after C{_cursor} come from
        the history, in order, as fast as the client reads; live events are
        not queued meanwhile, since the history has them too. A resume with
        C{Last-Event-ID} starts here, and so does the C{catchup} overflow
        policy. Catching up ends, in the same reactor turn as the last history
        read, by joining the live stream: no gap, no duplicate.

    Every way the stream ends (L{close}, L{abort}, the client leaving) goes
    through L{_end} first, which takes it out of the broker's index: once a
    stream is ending it is sent nothing more.
    """

    log = Logger()

    __slots__ = (
        "_broker",
        "_channel",
        "_chunk_writer",
        "_closing",
        "_cursor",
        "_ended",
        "_fast",
        "_held",
        "_history",
        "_live",
        "_paused",
        "_queue",
        "_stall",
        "_write",
        "channels",
        "dropped",
        "overflow",
        "queue_size",
        "readable",
        "request",
        "transport",
    )

    def __init__(
        self,
        broker: SSEBroker,
        request: Request,
        channels: frozenset[str] | None,
        queue_size: int,
        overflow: Overflow,
        history: IHistory | None = None,
        readable: Container[str] | None = None,
    ) -> None:
        self._broker = broker
        self.request = request
        #: The channels this subscriber receives, or L{None} for all of them.
        self.channels = channels
        #: What it may read (L{AllChannels} for a subscriber of every channel
        #: when some are private); L{None}: everything it subscribed to.
        self.readable: Container[str] | None = channels if readable is None else readable
        self.queue_size = queue_size
        self.overflow = overflow
        #: Events dropped since the client was last told about drops.
        self.dropped = 0
        self._history = history
        self._paused = False
        self._live = True
        #: The transport while live and HTTP/1.1-chunked, else None: the broker
        #: hands it the event's pre-built chunk with L{write_through}.
        self._fast: Any = None
        self._chunk_writer: Any = None
        self._closing = False
        self._ended = False
        self._cursor: str | None = None
        #: While paused: (when it paused or last made progress, pending bytes then).
        self._stall: tuple[float, int | None] | None = None
        # Created on first use: an idle deque costs ~600 bytes per subscriber.
        # Events, and a _Gap wherever events were dropped between them.
        self._queue: deque[Event | _Gap] | None = None
        #: Events (not gaps) in the queue: what queue_size bounds.
        self._held = 0
        self._write = request.write
        # Kept because the request forgets its channel once it finishes.
        self._channel = request.channel
        self.transport = getattr(self._channel, "transport", None)

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
        return self._held

    @property
    def ended(self) -> bool:
        """Whether the stream is ending or gone: it is sent nothing more."""
        return self._ended

    @property
    def owed(self) -> bool:
        """Whether events are owed to it beyond what its transport holds."""
        return bool(self._queue) or self._cursor is not None or self.dropped > 0

    def send(self, event: Event) -> int:
        """
        Write, queue, or (while catching up) leave to the history one event.

        @return: L{DELIVERED} (written or queued), L{SKIPPED} (dropped, left
            to the history, or the stream is ending), or L{REMOVE} (the queue
            overflowed under the C{disconnect} policy and the stream was
            aborted).
        """
        if self._live:
            self._write(event.frame)
            return DELIVERED
        if self._cursor is not None or self._ended:
            return SKIPPED
        queue = self._queue
        if queue is None:
            queue = self._queue = deque()
        if self._held < self.queue_size:
            queue.append(event)
            self._held += 1
            return DELIVERED
        return self._overflowed(queue)

    def send_unqueued(self, data: bytes) -> bool:
        """Write C{data} only if the client is reading (heartbeats: never queued)."""
        if self._paused or self._ended:
            return False
        self._write(data)
        return True

    def _overflowed(self, queue: deque[Event | _Gap]) -> int:
        broker = self._broker
        last = queue[-1]
        if self.overflow == "catchup" and self._history is not None:
            assert isinstance(last, Event)  # gaps are made under "drop" only
            broker.catchups += 1
            # Keep what is queued; everything after it comes from the history.
            self._cursor = last.id
            return SKIPPED
        if self.overflow == "disconnect":
            broker.slow_disconnects += 1
            self.log.warn(
                "Slow SSE client {peer} disconnected: its queue of {size} events is full",
                peer=self._peer(),
                size=self.queue_size,
            )
            self.abort()
            return REMOVE
        broker.dropped += 1
        if self.dropped == 0:
            self.log.warn(
                "Slow SSE client {peer}: queue of {size} events full, dropping events",
                peer=self._peer(),
                size=self.queue_size,
            )
        self.dropped += 1
        if type(last) is _Gap:
            last.count += 1
        else:
            queue.append(_Gap())
        return SKIPPED

    def _peer(self) -> str:
        try:
            return str(self.request.getClientAddress())
        except Exception:  # the request may have lost its channel already
            return "?"

    def enable_fast_path(self) -> None:
        """
        Once headers are out: on an HTTP/1.1 chunked response the broker may
        write pre-built chunks straight to the transport, the same bytes that
        C{request.write} would produce, without its per-call work.
        """
        request = self.request
        if (
            isinstance(self._channel, HTTPChannel)
            and getattr(request, "chunked", False)
            and self.transport is not None
        ):
            self._chunk_writer = self.transport
            self._set_live(self._live)

    def _set_live(self, live: bool) -> None:
        live = live and not self._ended
        self._live = live
        self._fast = self._chunk_writer if live else None

    def resume_from(self, last_id: str) -> None:
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
            self._broker.resets += 1
            self._write(reset_notice(last_id))
            return
        self._flush()

    # IPushProducer

    def pauseProducing(self) -> None:
        """The transport's buffer is full: queue from now on."""
        if not self._paused:
            self._stall = None
        self._paused = True
        self._set_live(False)

    def resumeProducing(self) -> None:
        """The transport drained: flush the queue in order, then catch up."""
        self._paused = False
        self._stall = None
        if not self._ended:
            self._flush()

    def stopProducing(self) -> None:
        """The connection is going away: the stream ends here."""
        self._paused = True
        self._end()

    def stalled_for(self, now: float) -> float:
        """
        Seconds its socket has taken no byte while paused (0 while it reads).

        Progress is what the transport reports as pending; where it cannot
        say, the whole time paused counts as stalled.
        """
        if not self._paused or self._ended:
            return 0.0
        pending = pending_bytes(self.transport) if self.transport is not None else None
        stall = self._stall
        if stall is None or (pending is not None and stall[1] is not None and pending < stall[1]):
            self._stall = (now, pending)  # the first look, or the peer read something
            return 0.0
        return now - stall[0]

    def _flush(self, force: bool = False) -> None:
        """
        Write what is owed in order: the queue (with a drop notice wherever
        events were dropped), then the history after the cursor. Stops when
        the transport pauses, unless C{force} (the stream is closing and must
        get all it is owed).
        """
        queue = self._queue
        write = self._write
        if queue is not None:
            while queue and (force or not self._paused):
                item = queue.popleft()
                if type(item) is _Gap:
                    self.dropped -= item.count
                    write(dropped_notice(item.count))
                else:
                    self._held -= 1
                    write(item.frame)  # type: ignore[union-attr]
            if queue:
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
            self._broker.resets += 1
            self._write(reset_notice(cursor))
            return
        if not batch:
            self._cursor = None
            return
        write = self._write
        for event in batch:
            write(event.frame)
            self._broker.replayed += 1
            self._cursor = event.id
            if self._paused and not force:
                return

    def notify_gap(self, last_id: str, reason: str) -> bool:
        """
        Tell the client that events after C{last_id} may be lost (C{sse.reset}
        with C{reason}); queued and owed events stay as they are.

        @return: whether it was written (an ending stream is told nothing).
        """
        if self._ended:
            return False
        self._write(reset_notice(last_id, reason))
        return True

    # Ending the stream

    def _end(self) -> bool:
        """
        The one door every end of the stream goes through: leave the broker's
        index before anything else, so nothing more is sent.

        @return: whether this call ended it (later calls are no-ops).
        """
        if self._ended:
            return False
        self._ended = True
        self._live = False
        self._fast = None
        self._broker._remove(self)
        return True

    def close(self, last: bytes = b"") -> None:
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
        owed_first = self._cursor is not None or bool(self._queue) or self.dropped > 0
        self._end()
        request = self.request
        # Request has no public "is the connection gone?"; finish() would raise.
        if getattr(request, "_disconnected", False):
            return
        if owed_first:
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
        if self.transport is not None:
            return _transport_closed(self.transport)
        h2 = getattr(self._channel, "_conn", None)  # an HTTP/2 stream's connection
        if h2 is None:
            return True
        # HTTP/2: a stream has no transport of its own. Its frames are out once
        # the connection has forgotten it and, all its streams ended (as when
        # draining), has flushed and closed its TCP connection.
        if self._channel.streamID in h2.streams:  # type: ignore[attr-defined]
            return False
        if not h2.streams and not getattr(h2.transport, "disconnecting", True):
            h2.transport.loseConnection()
        return _transport_closed(h2.transport)

    def abort(self) -> None:
        """
        Drop the connection now, without flushing: for slow or stuck clients.

        The client sees a broken stream, not an end, so EventSource
        reconnects and resumes from the history with C{Last-Event-ID}.
        """
        self._closing = True
        self._end()
        self._cursor = None
        self._queue = None
        self._held = 0
        self.dropped = 0
        transport = self.transport
        if transport is None:
            # HTTP/2: reset this stream only (RST_STREAM), not the connection.
            reset = getattr(self._channel, "abortConnection", None)
            if reset is not None:
                reset()
            return
        abort = getattr(transport, "abortConnection", None)
        if abort is not None:
            abort()
        else:
            transport.loseConnection()
