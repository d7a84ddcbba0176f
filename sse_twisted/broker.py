"""
L{SSEBroker}: the subscriber index, event ids, the one publish path,
heartbeats, and how streams end (drain, token expiry, stalled sockets).

The broker knows twisted.web requests but nothing of routing or of HTTP
framing: resources hand it requests, anything in the process hands it
events, and L{sse_twisted.subscriber.deliver} writes them. Publishing frames
an event once and writes the same bytes to each matching subscriber, found
through an index from channel to subscribers (plus the subscribers of every
channel), so it never walks subscribers that do not match.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Collection, Container, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, NamedTuple

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from ._reactor import default_reactor
from .event import Event, InvalidItem, Item, takes_item_args
from .history import DEFAULT_HISTORY_BYTES, IHistory, MemoryHistory
from .relay import IRelay
from .response import set_stream_headers, turn_away
from .stats import Stats
from .subscriber import OVERFLOW_POLICIES, Overflow, Subscriber, deliver

__all__ = ["HEARTBEAT", "Published", "SSEBroker"]

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


class Published(NamedTuple):
    """One published event: its id, and how many of this node's subscribers it went to."""

    item: Item
    id: str
    clients: int

    @property
    def event(self) -> Event:
        """The event as subscribers receive it (framed on demand)."""
        return self.item.framed(self.id)


class SSEBroker(Service):
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
        L{publish_threadsafe}); the global reactor when L{None}.
    @param id_prefix: the per-run part of generated ids; random when L{None}.
    @param history: how many recent events to keep for resuming subscribers
        (C{0} or L{None}: none), or an L{IHistory} to keep them in. With a
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
        self.history: IHistory | None = history
        self.relay = relay
        self.log_clients = log_clients
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self.heartbeat_interval = heartbeat
        self.retry = retry
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self.drain_timeout = drain_timeout
        #: The counters (read by L{sse_twisted.metrics} at scrape time).
        self.stats = Stats()
        self._reactor = reactor
        self._prefix = _run_prefix() if id_prefix is None else id_prefix
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        # Subscribers of every channel: those that may read all of them, and
        # those whose reading is decided per channel (private channels).
        self._all: set[Subscriber] = set()
        self._all_checked: set[Subscriber] = set()
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._heartbeat: LoopingCall | None = None
        self._sweeper: LoopingCall | None = None
        # Removals asked for while dispatch walks the index wait until it is done.
        self._dispatching = False
        self._removals: list[Subscriber] = []
        self._draining = False
        self._drained: Deferred[None] | None = None
        opening = b": connected\n"
        if retry is not None:
            opening += b"retry: %d\n" % retry
        self._opening = opening + b"\n"

    @property
    def reactor(self) -> Any:
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
        """Drain every stream (L{drain_timeout}), then stop the relay."""
        super().stopService()
        stopped = self.drain(self.drain_timeout)
        relay = self.relay
        if relay is not None:
            stopped.addCallback(lambda _: relay.stop())
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
    ) -> int:
        """
        Turn C{request} into an event stream and hold it open.

        @param channels: the channels to receive; L{None} or empty for all.
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
        @return: C{NOT_DONE_YET}, for a resource's C{render} to return.
        """
        if self._draining:
            return turn_away(request, "draining, reconnect later", self.jittered_retry())
        set_stream_headers(request)
        wanted = frozenset(channels) if channels else None
        sub = Subscriber(
            request,
            wanted,
            queue_size=self.queue_size,
            overflow=self.overflow,
            history=self.history,
            stats=self.stats,
            on_end=self._remove,
            readable=readable if wanted is None else None,
        )
        self._add(sub)
        request.registerProducer(sub, True)
        request.notifyFinish().addBoth(self._gone, sub)
        if expires is not None:
            self._expire_at(sub, expires)
        request.write(self._opening)
        sub.start(last_event_id)
        if self.log_clients:
            self.log.debug(
                "SSE client {peer} subscribed to {channels}",
                peer=request.getClientAddress(),
                channels=sorted(wanted) if wanted else "all channels",
            )
        return NOT_DONE_YET

    def turn_away(self, request: Request, reason: str) -> int:
        """Send C{request} away with C{reason} and a jittered C{retry:} (see L{turn_away})."""
        return turn_away(request, reason, self.jittered_retry())

    def _add(self, sub: Subscriber) -> None:
        self._subscribers.add(sub)
        if sub.channels is None:
            (self._all if sub.readable is None else self._all_checked).add(sub)
        else:
            for channel in sub.channels:
                self._by_channel.setdefault(channel, set()).add(sub)
        if self._heartbeat is None and self.heartbeat_interval > 0:
            self._heartbeat = self._every(self.heartbeat_interval, self._beat)
        if self._sweeper is None and self.write_timeout > 0:
            self._sweeper = self._every(max(self.write_timeout / 4, 0.05), self._sweep)

    def _every(self, seconds: float, f: Any) -> LoopingCall:
        call = LoopingCall(f)
        call.clock = self.reactor
        call.start(seconds, now=False)
        return call

    def _remove(self, sub: Subscriber) -> None:
        """Take C{sub} out of the index (at once, or as soon as dispatch is done)."""
        if sub not in self._subscribers:
            return
        if self._dispatching:
            self._removals.append(sub)
            return
        self._subscribers.discard(sub)
        if sub.channels is None:
            self._all.discard(sub)
            self._all_checked.discard(sub)
        else:
            for channel in sub.channels:
                members = self._by_channel.get(channel)
                if members is not None:
                    members.discard(sub)
                    if not members:
                        del self._by_channel[channel]
        if not self._subscribers:
            self._stop_timers()

    def _gone(self, result: Failure | None, sub: Subscriber) -> None:
        """The request finished or its connection was lost: forget it."""
        sub.end()
        if self.log_clients:
            self.log.debug("SSE client {peer} gone", peer=sub.peer())
        # Returning None consumes a disconnect Failure: a client leaving is normal.

    def client_count(self, channel: str | None = None) -> int:
        """Open streams in all, or those that receive C{channel}."""
        if channel is None:
            return len(self._subscribers)
        checked = sum(1 for s in self._all_checked if s.may_read(channel))
        return len(self._all) + checked + len(self._by_channel.get(channel, ()))

    # How streams end, besides the client leaving

    def _expire_at(self, sub: Subscriber, when: float) -> None:
        clock = self.reactor
        call = clock.callLater(max(0.0, when - clock.seconds()), self._expire, sub)

        def cancel(result: object) -> None:
            if call.active():
                call.cancel()

        sub.request.notifyFinish().addBoth(cancel)

    def _expire(self, sub: Subscriber) -> None:
        """
        The stream's token expired: nothing more is sent to it. What it was
        owed from before goes out and the stream ends, unless it must be read
        from the history (the client then resumes with a fresh token) or its
        bytes do not go out within L{close_timeout}: then it is aborted.
        """
        if sub.ended:
            return
        self.stats.expired += 1
        if sub.catching_up:
            sub.abort()
            return
        sub.close()
        if not sub.closed():
            self.reactor.callLater(self.close_timeout, self._abort_if_open, sub)

    def _abort_if_open(self, sub: Subscriber) -> None:
        if not sub.closed():
            self.log.info(
                "SSE client {peer} did not take its last bytes in {timeout}s: aborted",
                peer=sub.peer(),
                timeout=self.close_timeout,
            )
            sub.abort()

    def _sweep(self) -> None:
        """Abort the streams whose socket has taken no byte for L{write_timeout}."""
        now = self.reactor.seconds()
        limit = self.write_timeout
        for sub in [s for s in self._subscribers if s.paused]:
            if sub.stalled_for(now) >= limit:
                self.stats.write_timeouts += 1
                self.log.info(
                    "SSE client {peer} took no byte for {timeout}s: aborted",
                    peer=sub.peer(),
                    timeout=limit,
                )
                sub.abort()

    # Publishing: one path

    def next_id(self) -> str:
        """Reserve the next id: unique and increasing within this broker."""
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    @takes_item_args
    def publish(self, item: Item) -> Event | Deferred[Event]:
        """
        Publish one event to every subscriber of its channel; the arguments
        are L{Item.create}'s: C{(channel, event=None, data=None, *,
        text=None, id=None, retry=None)}.

        C{data} is JSON-encoded once (compact, UTF-8); pass C{text} instead to
        send a str verbatim. Returns the event, its id included; with a
        relay, a Deferred of it, fired once the relay stored it (and failed
        if it could not: never a silent drop).

        @raise TypeError: if JSON cannot encode C{data}, or a field has the
            wrong type.
        @raise ValueError: for a bad channel, CR/LF/NUL in C{event}/C{id}.
        """
        done = self.publish_items([item]).addCallback(lambda published: published[0].event)
        if self.relay is not None:
            return done
        return _result(done)

    def publish_text(
        self,
        channel: str,
        event: str | None,
        text: str,
        *,
        id: str | None = None,
        retry: int | None = None,
    ) -> Event | Deferred[Event]:
        """Publish C{text} verbatim (plain text, or HTML fragments for htmx)."""
        return self.publish(channel, event, text=text, id=id, retry=retry)

    def publish_many(self, items: Sequence[Mapping[str, Any]]) -> Deferred[list[Event]]:
        """
        Publish a batch of mappings (keys as L{publish}'s arguments), all or
        none; a Deferred of the events.

        @raise InvalidItem: for a bad item (its C{index} says which); nothing
            is published.
        """
        checked = [Item.from_mapping(item, index) for index, item in enumerate(items)]
        return self.publish_items(checked).addCallback(lambda done: [p.event for p in done])

    def publish_items(self, items: Sequence[Item]) -> Deferred[list[Published]]:
        """
        The one publish path: give each item its id, frame it once, and
        deliver it; all or none.

        Without a relay the ids are this broker's and the events go out at
        once (the Deferred has fired on return). With a relay, the relay
        stores them and chooses the ids, and they go out when it hands them
        back, on every node; C{clients} then counts this node's matching
        subscribers when the relay answered.

        @raise InvalidItem: with a relay, for an item with an id of its own.
        """
        relay = self.relay
        if relay is None:
            done = []
            for item in items:
                event_id = item.id if item.id is not None else self.next_id()
                done.append(Published(item, event_id, self.dispatch(item.framed(event_id))))
            return succeed(done)
        for index, item in enumerate(items):
            if item.id is not None:
                raise InvalidItem("ids are chosen by the relay (Redis); leave 'id' out", index)
        return relay.publish(items).addCallback(
            lambda ids: [
                Published(item, event_id, self.client_count(item.channel))
                for item, event_id in zip(items, ids, strict=True)
            ]
        )

    @takes_item_args
    def publish_threadsafe(self, item: Item) -> Future[Event]:
        """
        L{publish} from any thread (same arguments); returns a
        L{concurrent.futures.Future} of the event.

        Validation and JSON encoding run in the calling thread (so bad data
        raises there, at once, and the reactor thread only frames and
        writes); the rest runs in the reactor thread via C{callFromThread}.
        """
        future: Future[Event] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                done = self.publish_items([item])
            except BaseException as e:  # hand every failure to the waiting thread
                future.set_exception(e)
                return
            done.addCallbacks(
                lambda published: future.set_result(published[0].event),
                lambda f: future.set_exception(f.value),
            )

        self.reactor.callFromThread(run)
        return future

    def dispatch(self, event: Event) -> int:
        """
        Write C{event}'s frame to every matching subscriber (the relay's
        delivery path, and the last step of L{publish_items}).

        @return: how many subscribers it went to (written or queued; not
            those it was dropped for, nor those that will get it from the
            history as they catch up).
        """
        stats = self.stats
        stats.published += 1
        if self.history is not None and event.id is not None:
            self.history.append(event)
        channel = event.channel
        groups: list[Collection[Subscriber] | None] = [self._all, self._by_channel.get(channel)]
        if self._all_checked:
            # The one authorisation decision, as on every other path.
            groups.append([s for s in self._all_checked if s.may_read(channel)])
        self._dispatching = True
        try:
            sent = deliver(groups, event)
        finally:
            self._dispatching = False
            if self._removals:
                removals, self._removals = self._removals, []
                for sub in removals:
                    self._remove(sub)
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
        for sub in list(self._subscribers):
            told += sub.notify_gap(last_id, reason)
        self.stats.resets += told
        return told

    # Heartbeats

    def _beat(self) -> None:
        sent = 0
        for sub in list(self._subscribers):
            sent += sub.send_unqueued(HEARTBEAT)
        self.stats.heartbeats += sent

    def _stop_timers(self) -> None:
        for timer in (self._heartbeat, self._sweeper):
            if timer is not None and timer.running:
                timer.stop()
        self._heartbeat = self._sweeper = None

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
        if self._drained is not None:
            return self._drained
        self._draining = True
        self._stop_timers()
        subs = list(self._subscribers)
        for sub in subs:
            try:
                sub.close(b"retry: %d\n\n" % self.jittered_retry())
            except Exception:
                self.log.failure("Error while closing an SSE stream")
        waiting = [s for s in subs if not s.closed()]
        if not waiting:
            self._drained = succeed(None)
            return self._drained
        self._drained = Deferred()
        clock = self.reactor
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
            assert self._drained is not None
            self._drained.callback(None)

        clock.callLater(0, poll)
        return self._drained


def _result(done: Deferred[Event]) -> Event:
    """The result of a Deferred that has fired (or its error, raised)."""
    results: list[Event] = []
    failures: list[Failure] = []
    done.addCallbacks(results.append, failures.append)
    if failures:
        failures[0].raiseException()
    return results[0]
