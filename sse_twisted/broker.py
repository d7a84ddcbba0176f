"""
L{SSEBroker}: the subscriber index, event ids, the one publish path,
heartbeats, and how streams end (drain, token expiry, stalled sockets).

The broker knows twisted.web requests but nothing of routing or of HTTP
framing: resources hand it requests, anything in the process hands it
events, and L{sse_twisted.index.deliver} writes them. Publishing frames
an event once and writes the same bytes to each matching subscriber, found
through an index from channel to subscribers (plus the subscribers of every
channel), so it never walks subscribers that do not match.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Container, Iterable, Sequence
from contextlib import nullcontext
from typing import Any, Literal

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.server import NOT_DONE_YET, Request

from ._reactor import default_reactor
from ._transport import chunk, input_waiting
from .access import Matching, validate_pattern
from .ending import StreamEnds
from .event import Event, InvalidItem, Item
from .history import DEFAULT_HISTORY_BYTES, IHistory, MemoryHistory
from .hooks import EndReports, OnSubscribe, OnUnsubscribe
from .idempotency import DEFAULT_WINDOW, IIdempotency, MemoryIdempotency, publish_once
from .index import SubscriberIndex
from .lifetime import Lifetimes
from .outbox import Outbox, held
from .presence import Presence, PresenceTracker
from .publishing import Published, Publishing
from .relay import IRelay
from .response import set_stream_headers, turn_away
from .stats import Stats
from .subscriber import OVERFLOW_POLICIES, Overflow, Subscriber

__all__ = ["HEARTBEAT", "SSEBroker"]

#: The comment block written to every subscriber on each heartbeat.
HEARTBEAT = b": heartbeat\n\n"

_DRAIN_POLL = 0.05


def _run_prefix() -> str:
    """A prefix that differs between runs, so ids never repeat across restarts."""
    stamp = time.time_ns() // 1_000_000
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while stamp:
        stamp, r = divmod(stamp, 36)
        out = digits[r] + out
    return out + "".join(digits[b % 36] for b in os.urandom(2))


class SSEBroker(Publishing, Service):
    """
    Holds open event streams and publishes events to them.

    A Twisted service: with a relay, starting it starts the relay, and
    stopping it drains every stream and then stops the relay, so embedding
    with Redis is one argument and C{setServiceParent}.

    @param queue_size: events kept per paused subscriber before the overflow
        policy applies.
    @param overflow: what a full queue does: C{"drop"} (drop the event for
        that client, count it, tell the client where and how many it missed),
        C{"disconnect"} (abort the slow client's stream; EventSource
        reconnects and resumes) or C{"catchup"} (stop queueing; once the
        client reads again, feed it from the history).
    @param heartbeat: seconds between heartbeat comments; C{0} turns them off.
    @param retry: the reconnection delay (ms) sent as each stream opens.
    @param reactor: an C{IReactorTime} (and C{IReactorThreads} for
        L{publish_threadsafe<Publishing.publish_threadsafe>}); the global reactor when C{None}.
    @param id_prefix: the per-run part of generated ids; random when C{None}.
    @param history: how many recent events to keep for resuming subscribers
        (C{0} or C{None}: none), or an L{IHistory} to keep them in. With a
        relay, the relay's history is used.
    @param history_ttl: seconds after which the in-memory history forgets an
        event (C{0}: never).
    @param history_bytes: the most bytes of frames the in-memory history
        holds (C{0}: no byte bound); the oldest events go first.
    @param relay: an L{IRelay} to publish through (several nodes): the
        broker uses its history, receives its events, and starts and stops
        it. Ids are then the relay's.
    @param log_clients: log each subscriber's connect and disconnect at debug
        level (off by default: at thousands of clients it is most of the log).
    @param write_timeout: seconds a paused stream's socket may take no byte
        before the stream is aborted and its slot freed (C{0}: never).
    @param close_timeout: seconds a stream ended by the server (its token
        expired) has to take its last bytes before it is aborted.
    @param drain_timeout: seconds L{stopService} lets streams finish.
    @param idempotency: seconds a publish's idempotency key is remembered
        in memory (C{0} or C{None}: keys are refused), or an
        L{sse_twisted.idempotency.IIdempotency} to keep them in (in Redis
        to share them between nodes).
    @param on_subscribe: decides what each stream opened by a
        L{StreamResource<sse_twisted.resource.StreamResource>} may receive,
        and who holds it (L{sse_twisted.hooks}).
    @param on_unsubscribe: told of each stream that ends, and why
        (L{sse_twisted.hooks}).
    @param max_lifetime: seconds after which a stream ends cleanly with a
        C{retry:} so its client reconnects and resumes (jittered by ±10%;
        C{0}: never; L{sse_twisted.lifetime}).
    """

    log = Logger()

    def __init__(
        self,
        *,
        queue_size: int = 64,
        overflow: Overflow = "drop",
        heartbeat: float = 15.0,
        retry: int | None = 2000,
        reactor: Any = None,
        id_prefix: str | None = None,
        history: int | IHistory | None = 1000,
        history_ttl: float = 0,
        history_bytes: int = DEFAULT_HISTORY_BYTES,
        relay: IRelay | None = None,
        log_clients: bool = False,
        write_timeout: float = 0,
        close_timeout: float = 5.0,
        drain_timeout: float = 5.0,
        idempotency: float | IIdempotency | None = DEFAULT_WINDOW,
        on_subscribe: OnSubscribe | None = None,
        on_unsubscribe: OnUnsubscribe | None = None,
        max_lifetime: float = 0,
    ) -> None:
        if queue_size < 1:
            raise ValueError(f"queue_size must be at least 1, got {queue_size}")
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW_POLICIES)}")
        if heartbeat < 0:
            raise ValueError(f"heartbeat must be >= 0 seconds, got {heartbeat}")
        if retry is not None and retry < 0:
            raise ValueError(f"retry must be >= 0 ms, got {retry}")
        if not write_timeout >= 0:
            raise ValueError(f"write_timeout must be >= 0 seconds, got {write_timeout}")
        if not close_timeout > 0:
            raise ValueError(f"close_timeout must be > 0 seconds, got {close_timeout}")
        if relay is not None:
            history = relay.history
            relay.on_event = self.dispatch
            relay.on_gap = self.notify_gap
        elif isinstance(history, int):
            history = (
                MemoryHistory(history, history_ttl, reactor, max_bytes=history_bytes)
                if history > 0
                else None
            )
        if overflow == "catchup" and history is None:
            raise ValueError("overflow='catchup' needs a history to catch up from")
        if history is not None and not callable(getattr(history, "latest", None)):
            raise TypeError(f"{history!r} is not an IHistory: it has no latest() (for ?replay=)")
        self.history: IHistory | None = history
        if isinstance(idempotency, (int, float)):
            idempotency = MemoryIdempotency(idempotency, reactor=reactor) if idempotency else None
        self.idempotency: IIdempotency | None = idempotency
        self.relay = relay
        self.log_clients = log_clients
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self.heartbeat_interval = heartbeat
        self.retry = retry
        self.drain_timeout = drain_timeout
        #: The counters (read by L{sse_twisted.metrics} at scrape time).
        self.stats = Stats()
        self._reactor = reactor
        self._prefix = _run_prefix() if id_prefix is None else id_prefix
        self._seq = 0
        self._index = SubscriberIndex(on_empty=self._stop_timers)
        #: The fast path's writes, coalesced per connection and sent in slices.
        self.outbox = Outbox(
            self._call_later, input_waiting=self._input_waiting, seconds=self._seconds
        )
        # One bound method shared by every subscriber (64 bytes each otherwise).
        self._end_hook = self._on_end
        # Read by tests (the index's own collections, never replaced).
        self._subscribers = self._index.subscribers
        self._all = self._index.everything
        self._by_channel = self._index.by_channel
        #: Who holds the open streams, by channel (L{presence}).
        self.presence_tracker = PresenceTracker()
        self._ends = StreamEnds(
            self.stats,
            lambda: self.reactor,
            write_timeout=write_timeout,
            close_timeout=close_timeout,
            retry=self.jittered_retry,
        )
        #: The subscribe hook (L{sse_twisted.admission.admit} runs it).
        self.on_subscribe = on_subscribe
        self._reports = EndReports(on_unsubscribe, lambda: self.reactor) if on_unsubscribe else None
        self._lifetimes = (
            Lifetimes(max_lifetime, lambda: self.reactor, self._ends.retire)
            if max_lifetime
            else None
        )
        self._heartbeat: LoopingCall | None = None
        self._sweeper: LoopingCall | None = None
        self._draining = False
        self._drained: Deferred[None] | None = None
        opening = b": connected\n"
        if retry is not None:
            opening += b"retry: %d\n" % retry
        self._opening = opening + b"\n"

    @property
    def reactor(self) -> Any:
        """The reactor given to the constructor, or the global one (resolved late)."""
        return default_reactor(self._reactor)

    @property
    def draining(self) -> bool:
        """Whether L{drain} has been called: no new subscribers are taken."""
        return self._draining

    # The service

    def startService(self) -> None:
        """Start the relay, if any."""
        super().startService()
        if self.relay is not None:
            self.relay.start()

    def stopService(self) -> Deferred[None]:
        """
        Drain every stream (L{drain_timeout}), then hand their ends to
        C{on_unsubscribe} (and wait for its C{flush()}, if it has one), then
        stop the relay, then close the history if it has a C{close}
        (L{sse_twisted.SQLiteHistory}: what is pending is committed first).
        """
        super().stopService()
        stopped = self.drain(self.drain_timeout)
        reports = self._reports
        if reports is not None:  # the drained streams' ends, before the process goes
            stopped.addCallback(lambda _: reports.flush())
        relay = self.relay
        if relay is not None:
            stopped.addCallback(lambda _: relay.stop())
        close = getattr(self.history, "close", None)  # a durable history's file
        if close is not None:
            stopped.addCallback(lambda _: close())
        return stopped

    # Subscribing

    def subscribe(
        self,
        request: Request,
        channels: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        readable: Container[str] | None = None,
        expires: float | None = None,
        replay: int | Literal["all"] = 0,
        user: str | None = None,
        patterns: Iterable[str] | None = None,
        envelope: bool = False,
    ) -> int:
        """
        Turn C{request} into an event stream and hold it open.

        @param channels: the channels to receive; C{None} or empty for all.
            Whoever calls this has authorised them.
        @param last_event_id: resume after this id: the events after it (on
            these channels) are replayed from the history, then the live
            stream follows. An id the history does not hold gets the
            C{sse.reset} event instead, then the live stream.
        @param readable: for a subscriber of every channel, the channels it
            may read when some are private (an L{sse_twisted.access.
            AllChannels}); applied on every path an event takes to it: live,
            resume, catch-up, relay.
        @param expires: when (the reactor's seconds) the stream's authority
            ends: it then leaves the index at once and ends (cleanly with
            what it was owed before, else aborted so it resumes elsewhere).
        @param user: who holds the stream (a JWT's C{sub}), for presence and hooks.
        @param patterns: glob patterns (C{fnmatchcase}, as a JWT's grants):
            also receive every channel they match. Then C{readable} (if
            given) is what they may bring in: a pattern never widens it.
        @param envelope: send every event (and notice) as a JSON envelope
            naming its channel (L{sse_twisted.event.envelope_frame}).
        @raise ValueError: for a bad pattern.
        @param replay: without C{last_event_id} (which takes precedence),
            first send the newest C{replay} events the history holds on
            these channels (C{"all"}: every one; C{0}: none), then the live
            stream, with no gap and no duplicate.
        @return: C{NOT_DONE_YET}, for a resource's C{render} to return.

        The response carries C{Last-Event-ID}: the newest id the history
        holds on what the subscriber may read (none if it holds none), a
        cursor to resume from that says nothing of channels it may not read.
        """
        if replay != "all" and (type(replay) is not int or replay < 0):
            raise ValueError(f"replay must be 'all' or an integer >= 0, got {replay!r}")
        if self._draining:
            return turn_away(request, "draining, reconnect later", self.jittered_retry())
        wanted = frozenset(channels) if channels else None
        if isinstance(patterns, str):
            raise TypeError("patterns must be an iterable of str, not a str")
        globs = frozenset(validate_pattern(p) for p in patterns) if patterns else None
        if globs is not None:
            wanted = wanted or frozenset()
            readable = Matching(wanted, globs, readable)
        elif wanted is not None:
            readable = None
        set_stream_headers(request)
        sub = Subscriber(
            request,
            wanted,
            queue_size=self.queue_size,
            overflow=self.overflow,
            history=self.history,
            stats=self.stats,
            on_end=self._end_hook,
            readable=readable,
            user=user,
            patterns=globs,
            envelope=envelope,
            outbox=self.outbox,
        )
        self._add(sub)
        request.registerProducer(sub, True)
        if not getattr(request, "tells_producer_when_lost", False):
            request.notifyFinish().addBoth(self._gone, sub)
        if expires is not None:
            self._ends.expire_at(sub, expires)
        if self.history is not None:
            newest = self.history.latest(sub.readable, 1)
            if newest and newest[0].id is not None:
                request.responseHeaders.setRawHeaders(b"last-event-id", [newest[0].id.encode()])
        request.write(self._opening)
        # The head is out, and its headers are never read again: ~0.4 KiB per
        # stream that an idle one would otherwise hold for its whole life.
        request.responseHeaders = Headers()
        sub.start(last_event_id, None if replay == "all" else replay)
        if self.log_clients:
            self.log.debug(
                "SSE client {peer} subscribed to {channels}",
                peer=request.getClientAddress(),
                channels=sorted(wanted or ()) + sorted(globs or ()) or "all channels",
            )
        return NOT_DONE_YET

    def turn_away(self, request: Request, reason: str) -> int:
        """Send C{request} away with C{reason} and a jittered C{retry:} (see L{turn_away})."""
        return turn_away(request, reason, self.jittered_retry())

    def _add(self, sub: Subscriber) -> None:
        self._index.add(sub)
        self.presence_tracker.add(sub)
        if self._lifetimes is not None:
            self._lifetimes.add(sub)
        if self._reports is not None:
            self._reports.opened(sub)
        if self._heartbeat is None and self.heartbeat_interval > 0:
            self._heartbeat = self._every(self.heartbeat_interval, self._beat)
        if self._sweeper is None and self.write_timeout > 0:
            self._sweeper = self._every(
                max(self.write_timeout / 4, 0.05), lambda: self._ends.sweep(self._index)
            )

    def _every(self, seconds: float, f: Any) -> LoopingCall:
        call = LoopingCall(f)
        call.clock = self.reactor
        call.start(seconds, now=False)
        return call

    def _gone(self, result: Failure | None, sub: Subscriber) -> None:
        """The request finished or its connection was lost: forget it."""
        sub.end()
        # Returning None consumes a disconnect Failure: a client leaving is normal.

    def _on_end(self, sub: Subscriber) -> None:
        """A stream is ending, whichever way: take it out of the index."""
        self._index.remove(sub)
        self.presence_tracker.remove(sub)
        if self._lifetimes is not None:
            self._lifetimes.discard(sub)
        if self._reports is not None:
            self._reports.ended(sub)
        if self.log_clients:
            self.log.debug("SSE client {peer} gone", peer=sub.peer())

    def client_count(self, channel: str | None = None) -> int:
        """Open streams in all, or those that receive C{channel}."""
        return self._index.count(channel)

    def presence(self, channel: str) -> Presence:
        """
        The open streams here that receive C{channel}, and their distinct
        users, sorted and bounded (L{sse_twisted.presence}).
        """
        return self.presence_tracker.presence(channel)

    @property
    def write_timeout(self) -> float:
        """Seconds a paused stream's socket may take no byte (C{0}: never)."""
        return self._ends.write_timeout

    @property
    def close_timeout(self) -> float:
        """Seconds an expired stream has to take its last bytes."""
        return self._ends.close_timeout

    # Publishing: one path

    def _call_later(self, delay: float, f: Any) -> Any:
        return self.reactor.callLater(delay, f)

    def _seconds(self) -> float:
        now: float = self.reactor.seconds()
        return now

    def _input_waiting(self) -> bool:
        return input_waiting(self.reactor)

    def next_id(self) -> str:
        """Reserve the next id: unique and increasing within this broker."""
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    def publish_items(self, items: Sequence[Item]) -> list[Published] | Deferred[list[Published]]:
        """
        The one publish path: give each item its id, frame it once, and
        deliver it; all or none.

        Without a relay the ids are this broker's and the events go out at
        once (the first slice of connections now, the rest in the next
        reactor turns: L{sse_twisted.outbox}): the list of what was
        published is the answer. With a relay,
        the relay stores them and chooses the ids, and they go out when it
        hands them back, on every node: the answer is a Deferred of that
        list, and C{clients} counts this node's matching subscribers when
        the relay answered.

        Items with an idempotency key go through L{publish_once} (then the
        answer is always a Deferred): a repeat of a key is not published.

        @raise InvalidItem: with a relay, for an item with an id of its own.
        """
        if any(item.idempotency_key is not None for item in items):
            return publish_once(self.idempotency, items, self.publish_items, self.reactor)
        relay = self.relay
        if relay is None:
            done = []
            # A batch goes out as one write per subscriber.
            with held() if len(items) > 1 else nullcontext():
                for item in items:
                    event_id = item.id if item.id is not None else self.next_id()
                    event = item.framed(event_id)
                    done.append(Published(item, event_id, self.dispatch(event), event))
            return done
        for index, item in enumerate(items):
            if item.id is not None:
                raise InvalidItem("ids are chosen by the relay (Redis); leave 'id' out", index)
        return relay.publish(items).addCallback(
            lambda ids: [
                Published(item, event_id, self.client_count(item.channel))
                for item, event_id in zip(items, ids, strict=True)
            ]
        )

    @property
    def durable(self) -> bool:
        """Whether the history commits events to disk (it has C{committed})."""
        return getattr(self.history, "committed", None) is not None

    def committed(self) -> Deferred[None]:
        """
        A Deferred that fires once every event published so far is durable:
        committed by a durable history (L{sse_twisted.SQLiteHistory}); at
        once with any other. It fails if the write failed. Live subscribers
        do not wait for it; C{POST /publish} answers only after it.
        """
        committed = getattr(self.history, "committed", None)
        if committed is None:
            return succeed(None)
        done: Deferred[None] = committed()
        return done

    def dispatch(self, event: Event) -> int:
        """
        Write C{event}'s frame to every matching subscriber (the relay's
        delivery path, and the last step of L{publish_items}): through the
        L{outbox}, one slice of connections before it returns.

        @return: how many subscribers it went to (written or queued; not
            those it was dropped for, nor those that will get it from the
            history as they catch up).
        """
        stats = self.stats
        stats.published += 1
        if self.history is not None and event.id is not None:
            self.history.append(event)
        fast: list[Any] = []
        sent = self._index.deliver(event, fast)
        outbox = self.outbox
        if fast:
            outbox.add_all(fast, chunk(event.frame))
        outbox.kick()
        stats.delivered += sent
        stats.bytes_sent += sent * len(event.frame)
        return sent

    def notify_gap(self, last_id: str, reason: str) -> int:
        """
        Tell every open stream that events after C{last_id} may be lost
        (C{sse.reset} with C{reason}), e.g. when the relay finds its stream
        trimmed past what it had read.

        @return: how many streams were told.
        """
        told = 0
        for sub in self._index:
            told += sub.notify_gap(last_id, reason)
        self.stats.resets += told
        return told

    # Heartbeats

    def _beat(self) -> None:
        sent = 0
        for sub in self._index:
            sent += sub.send_unqueued(HEARTBEAT)
        self.stats.heartbeats += sent

    def _stop_timers(self) -> None:
        for timer in (self._heartbeat, self._sweeper):
            if timer is not None and timer.running:
                timer.stop()
        self._heartbeat = self._sweeper = None
        self._ends.forget()
        if self._lifetimes is not None:
            self._lifetimes.stop()

    # Draining

    def jittered_retry(self) -> int:
        """The retry hint for a closing stream: spread over [retry, 2 * retry]."""
        base = self.retry if self.retry is not None else 2000
        return base + random.randint(0, max(base, 1))

    def drain(self, timeout: float = 5.0) -> Deferred[None]:
        """
        Stop taking subscribers and end every open stream cleanly.

        Each stream gets what is queued or owed for it and a jittered
        C{retry:} hint, then the end of its response, and its connection is
        closed once its bytes are written. Connections still open after
        C{timeout} seconds are aborted. Returns a Deferred that fires when
        all are gone.
        """
        if self._drained is None:
            self._draining = True
            self._stop_timers()
            self._drained = self._ends.drain(self._index, timeout)
        return self._drained
