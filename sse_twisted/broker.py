"""
L{SSEBroker}: the subscriber index, event ids, publishing, heartbeats and
draining.

The broker knows twisted.web requests but nothing of routing: the resources in
L{sse_twisted.resource} hand it requests, and anything in the process hands it
events. Publishing frames an event once and writes the same bytes to each
matching subscriber; the cost is one C{write} per matching subscriber, found
through an index from channel to subscribers (plus the set of subscribers of
every channel), so it never walks subscribers that do not match.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from concurrent.futures import Future
from typing import Any, Protocol

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request

from ._reactor import default_reactor
from .event import Event
from .history import DEFAULT_HISTORY_BYTES, IHistory, MemoryHistory
from .subscriber import (
    DELIVERED,
    OVERFLOW_POLICIES,
    AllChannels,
    Overflow,
    Subscriber,
    write_through,
)

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


class IRelay(Protocol):
    """
    Carries published events between brokers (e.g. L{sse_twisted.redis.RedisBus}).

    With a relay, publishing stores the event in the relay, which chooses its
    id; the relay then hands every event, from every node, to
    L{SSEBroker.dispatch} in one global order. The broker does not know what
    the relay is.
    """

    ready: bool

    def start(self) -> None: ...

    def stop(self) -> Deferred[None]: ...

    def publish(self, items: Sequence[Mapping[str, Any]]) -> Deferred[list[str]]:
        """Store items (C{channel}, C{event}, C{payload}, C{retry}); fire with their ids."""
        ...


class SSEBroker:
    """
    Holds open event streams and publishes events to them.

    @param queue_size: events kept per paused subscriber before the overflow
        policy applies.
    @param overflow: what a full queue does: C{"drop"} (drop the event for
        that client, count it, tell the client how many it missed once it
        reads again), C{"disconnect"} (close the slow client's stream;
        EventSource reconnects) or C{"catchup"} (stop queueing; once the
        client reads again, feed it from the history).
    @param heartbeat: seconds between heartbeat comments; C{0} turns them off.
    @param retry: the reconnection delay (ms) sent as each stream opens.
    @param reactor: an C{IReactorTime} (and C{IReactorThreads} for
        L{publish_threadsafe}); the global reactor when L{None}.
    @param id_prefix: the per-run part of generated ids; random when L{None}.
    @param history: how many recent events to keep for resuming subscribers
        (C{0} or L{None}: none), or an L{IHistory} to keep them in.
    @param history_ttl: seconds after which the in-memory history forgets an
        event (C{0}: never).
    @param history_bytes: the most bytes of frames the in-memory history
        holds (C{0}: no byte bound); the oldest events go first.
    @param log_clients: log each subscriber's connect and disconnect at debug
        level (off by default: at thousands of clients it is most of the log).
    @param relay: an L{IRelay} to publish through (several nodes); its
        events come back through L{dispatch}. Publishing then returns
        Deferreds, and ids are the relay's.
    @param write_timeout: seconds a paused stream's socket may take no byte
        before the stream is aborted and its slot freed (C{0}: never). A
        peer that vanished without a FIN otherwise holds its slot for the
        kernel's retransmission time (~15 minutes).
    @param close_timeout: seconds a stream ended by the server (its token
        expired) has to take its last bytes before it is aborted.
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
        if isinstance(history, int):
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
        #: Says which channels are private: subscribers of every channel never
        #: receive those (set by the auth configuration).
        self.private: Callable[[str], bool] | None = None
        self.queue_size = queue_size
        self.overflow: Overflow = overflow
        self.heartbeat_interval = heartbeat
        self.retry = retry
        self.write_timeout = write_timeout
        self.close_timeout = close_timeout
        self._reactor = reactor
        self._prefix = _run_prefix() if id_prefix is None else id_prefix
        self._seq = 0
        self._subscribers: set[Subscriber] = set()
        self._all: set[Subscriber] = set()
        self._by_channel: dict[str, set[Subscriber]] = {}
        self._heartbeat: LoopingCall | None = None
        self._sweeper: LoopingCall | None = None
        # Removals asked for while dispatch walks the index wait until it is done.
        self._dispatching = False
        self._removals: list[Subscriber] = []
        self._draining = False
        self._drained: Deferred[None] | None = None
        # Counters for monitoring (read by sse_twisted.metrics at scrape time,
        # so the hot path pays one integer add, not a metrics library call).
        #: Events published.
        self.published = 0
        #: Events handed to subscribers (written or queued).
        self.delivered = 0
        #: Bytes of events handed to subscribers, chunk framing excluded.
        self.bytes_sent = 0
        #: Events dropped for a slow client (overflow policy drop).
        self.dropped = 0
        #: Slow clients disconnected (overflow policy disconnect).
        self.slow_disconnects = 0
        #: Queue overflows turned into a catch-up from the history.
        self.catchups = 0
        #: Events replayed from the history (resumes and catch-ups).
        self.replayed = 0
        #: sse.reset signals sent (unknown Last-Event-ID).
        self.resets = 0
        #: Heartbeat comments written.
        self.heartbeats = 0
        #: Streams aborted because their socket took no byte for write_timeout.
        self.write_timeouts = 0
        #: Streams ended because their token expired.
        self.expired = 0
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

    # Subscribing

    def subscribe(
        self,
        request: Request,
        channels: Iterable[str] | None = None,
        last_event_id: str | None = None,
        *,
        allows: Callable[[str], bool] | None = None,
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
        @param allows: for a subscriber of every channel, which private
            channels (L{private}) it may read too (a token's grant); without
            it, none. Applied on every path an event takes to it: live,
            resume, catch-up, relay.
        @param expires: when (the reactor's seconds) the stream's authority
            ends: it then leaves the index at once and ends (cleanly with
            what it was owed before, else aborted so it resumes elsewhere).
        @return: C{NOT_DONE_YET}, for a resource's C{render} to return.
        """
        if self._draining:
            return self.turn_away(request, "draining, reconnect later")
        _set_stream_headers(request)
        wanted = frozenset(channels) if channels else None
        readable = None
        if wanted is None and self.private is not None:
            readable = AllChannels(self.private, allows)
        sub = Subscriber(
            self, request, wanted, self.queue_size, self.overflow, self.history, readable
        )
        self._add(sub)
        request.registerProducer(sub, True)
        request.notifyFinish().addBoth(self._gone, sub)
        if expires is not None:
            self._expire_at(sub, expires)
        request.write(self._opening)
        sub.enable_fast_path()
        if last_event_id:
            sub.resume_from(last_event_id)
        if self.log_clients:
            self.log.debug(
                "SSE client {peer} subscribed to {channels}",
                peer=request.getClientAddress(),
                channels=sorted(wanted) if wanted else "all channels",
            )
        return NOT_DONE_YET

    def turn_away(self, request: Request, reason: str) -> int:
        """
        Answer C{request} with a stream that says why (a comment), asks the
        client to come back after a jittered C{retry:}, and ends.

        A 200 event stream, because EventSource gives up for good on any
        other status, while an ended stream makes it reconnect later.
        """
        _set_stream_headers(request)
        comment = reason.replace("\r", " ").replace("\n", " ").encode("utf-8")
        request.write(b": %s\nretry: %d\n\n" % (comment, self._jittered_retry()))
        channel = request.channel
        request.finish()
        if isinstance(channel, HTTPChannel):
            # Free the socket too, not just the stream (HTTP/2 streams share one).
            channel.loseConnection()
        return NOT_DONE_YET

    def _add(self, sub: Subscriber) -> None:
        self._subscribers.add(sub)
        if sub.channels is None:
            self._all.add(sub)
        else:
            for channel in sub.channels:
                self._by_channel.setdefault(channel, set()).add(sub)
        if self._heartbeat is None and self.heartbeat_interval > 0:
            self._heartbeat = LoopingCall(self._beat)
            self._heartbeat.clock = self.reactor
            self._heartbeat.start(self.heartbeat_interval, now=False)
        if self._sweeper is None and self.write_timeout > 0:
            self._sweeper = LoopingCall(self._sweep)
            self._sweeper.clock = self.reactor
            self._sweeper.start(max(self.write_timeout / 4, 0.05), now=False)

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
        sub._end()
        if self.log_clients:
            self.log.debug("SSE client {peer} gone", peer=sub._peer())
        # Returning None consumes a disconnect Failure: a client leaving is normal.

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
        self.expired += 1
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
                peer=sub._peer(),
                timeout=self.close_timeout,
            )
            sub.abort()

    def _sweep(self) -> None:
        """Abort the streams whose socket has taken no byte for L{write_timeout}."""
        now = self.reactor.seconds()
        limit = self.write_timeout
        for sub in [s for s in self._subscribers if s.paused]:
            if sub.stalled_for(now) >= limit:
                self.write_timeouts += 1
                self.log.info(
                    "SSE client {peer} took no byte for {timeout}s: aborted",
                    peer=sub._peer(),
                    timeout=limit,
                )
                sub.abort()

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
        self.resets += told
        return told

    def client_count(self, channel: str | None = None) -> int:
        """Open streams in all, or those that receive C{channel}."""
        if channel is None:
            return len(self._subscribers)
        return len(self._all) + len(self._by_channel.get(channel, ()))

    # Publishing

    def next_id(self) -> str:
        """Reserve the next id: unique and increasing within this broker."""
        self._seq += 1
        return f"{self._prefix}-{self._seq}"

    def publish(
        self,
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> Event | Deferred[Event]:
        """
        Publish one event to every subscriber of C{channel}.

        C{data} is JSON-encoded once (compact, UTF-8); pass C{text} instead to
        send a str verbatim. Returns the event, its id included; with a
        relay, a Deferred of it, fired once the relay stored it (and failed
        if it could not: never a silent drop).

        @raise TypeError: if JSON cannot encode C{data}, or a field has the
            wrong type.
        @raise ValueError: for a bad channel, or CR/LF/NUL in C{event}/C{id}.
        """
        if self.relay is not None:
            return self.publish_many(
                [
                    {
                        "channel": channel,
                        "event": event,
                        "data": data,
                        "text": text,
                        "id": id,
                        "retry": retry,
                    }
                ]
            ).addCallback(lambda events: events[0])
        return self.publish_event(self.prepare(channel, event, data, text=text, id=id, retry=retry))

    def publish_async(
        self,
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> Deferred[Event]:
        """L{publish}, always answered with a Deferred (relay or not)."""
        result = self.publish(channel, event, data, text=text, id=id, retry=retry)
        return result if isinstance(result, Deferred) else succeed(result)

    def publish_many(self, items: Sequence[Mapping[str, Any]]) -> Deferred[list[Event]]:
        """
        Publish a batch, all or none; a Deferred of the events.

        Without a relay the events go out at once. With one, they are
        validated here (errors raise at once, C{sse_item} naming the item),
        stored by the relay in one step, and go out when it hands them back.
        """
        if self.relay is None:
            events = self.prepare_many(items)
            for ev in events:
                self.dispatch(ev)
            return succeed(events)
        checked = self.validate_many(items)
        stored = self.relay.publish(checked)
        return stored.addCallback(
            lambda ids: [
                Event.create(
                    item["channel"],
                    item["event"],
                    item["payload"],
                    json_data=False,
                    id=i,
                    retry=item["retry"],
                )
                for item, i in zip(checked, ids, strict=True)
            ]
        )

    def validate_many(self, items: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """
        Check and encode items without giving them ids or frames (a relay
        chooses the ids; each event is framed once, when its id is known).

        @return: the relay's items: C{channel}, C{event}, C{payload}, C{retry}.
        @raise ValueError: also for an item with an C{id} when a relay is set.
        """
        checked: list[dict[str, Any]] = []
        for index, item in enumerate(items):
            try:
                if self.relay is not None and item.get("id") is not None:
                    raise ValueError("ids are chosen by the relay (Redis); leave 'id' out")
                name, payload = Event.check(
                    item["channel"],
                    item.get("event"),
                    item.get("data"),
                    text=item.get("text"),
                    retry=item.get("retry"),
                )
            except (TypeError, ValueError) as e:
                e.sse_item = index  # type: ignore[union-attr]  # read by the resource
                raise
            checked.append(
                {
                    "channel": item["channel"],
                    "event": name,
                    "payload": payload,
                    "retry": item.get("retry"),
                }
            )
        return checked

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

    def prepare(
        self,
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> Event:
        """
        Validate and frame an event, with the next id unless C{id} is given,
        without publishing it; L{publish_event} sends it.

        An event that fails validation takes no id, so refusals leave no gap.
        """
        given = id is not None
        ev = Event.create(
            channel,
            event,
            data,
            text=text,
            id=id if given else f"{self._prefix}-{self._seq + 1}",
            retry=retry,
        )
        if not given:
            self._seq += 1
        return ev

    def prepare_many(self, items: Sequence[Mapping[str, Any]]) -> list[Event]:
        """
        L{prepare} each mapping (keys as L{publish}'s arguments), all or none.

        Lets a batch be checked whole before any of it goes out. An error
        carries the failing item's index as its C{sse_item} attribute.
        """
        events: list[Event] = []
        taken = 0
        for index, item in enumerate(items):
            given = item.get("id")
            if given is None:
                taken += 1
            try:
                events.append(
                    _event_from(
                        item, given if given is not None else f"{self._prefix}-{self._seq + taken}"
                    )
                )
            except (TypeError, ValueError) as e:
                e.sse_item = index  # type: ignore[union-attr]  # read by the resource
                raise
        self._seq += taken
        return events

    def publish_event(self, event: Event) -> Event:
        """Send an already prepared L{Event} to its channel's subscribers."""
        self.dispatch(event)
        return event

    def dispatch(self, event: Event) -> int:
        """
        Write C{event}'s frame to every matching subscriber.

        @return: how many subscribers it went to (written or queued; not
            those it was dropped for, nor those that will get it from the
            history as they catch up).
        """
        self.published += 1
        if self.history is not None and event.id is not None:
            self.history.append(event)
        frame = event.frame
        # The HTTP/1.1 chunk, built once for every live subscriber.
        chunk = b"%x\r\n%s\r\n" % (len(frame), frame)
        sent = 0
        channel = event.channel
        private = self.private
        everyone: Collection[Subscriber] = self._all
        if private is not None and everyone and private(channel):
            # The one authorisation decision, as on every other path (a
            # subscriber without one, from before privacy was set, gets none).
            everyone = [s for s in everyone if s.readable is not None and channel in s.readable]
        self._dispatching = True
        try:
            for group in (everyone, self._by_channel.get(channel)):
                if not group:
                    continue
                sent += len(group)
                for sub in group:
                    fast = sub._fast
                    if fast is not None:
                        write_through(fast, chunk)
                        continue
                    if sub.send(event) != DELIVERED:
                        sent -= 1
        finally:
            self._dispatching = False
            if self._removals:
                removals, self._removals = self._removals, []
                for sub in removals:
                    self._remove(sub)
        self.delivered += sent
        self.bytes_sent += sent * len(frame)
        return sent

    def publish_threadsafe(
        self,
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> Future[Event]:
        """
        Publish from any thread; returns a L{concurrent.futures.Future} of the
        event.

        JSON encoding and validation run in the calling thread (so bad data
        raises there, at once, and the reactor thread only frames and writes);
        the rest runs in the reactor thread via C{callFromThread}.
        """
        # Validated and encoded here; framed once, with its id, in the reactor.
        event, payload = Event.check(channel, event, data, text=text, id=id, retry=retry)
        future: Future[Event] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            if self.relay is not None:
                item = {
                    "channel": channel,
                    "event": event,
                    "text": payload,
                    "retry": retry,
                    "id": id,
                }
                try:
                    stored = self.publish_many([item])
                except BaseException as e:
                    future.set_exception(e)
                    return
                stored.addCallbacks(
                    lambda events: future.set_result(events[0]),
                    lambda f: future.set_exception(f.value),
                )
                return
            try:
                ev = Event.create(
                    channel,
                    event,
                    payload,
                    json_data=False,
                    id=self.next_id() if id is None else id,
                    retry=retry,
                )
                self.dispatch(ev)
                future.set_result(ev)
            except BaseException as e:  # hand every failure to the waiting thread
                future.set_exception(e)

        self.reactor.callFromThread(run)
        return future

    # Heartbeats

    def _beat(self) -> None:
        sent = 0
        for sub in list(self._subscribers):
            sent += sub.send_unqueued(HEARTBEAT)
        self.heartbeats += sent

    def _stop_timers(self) -> None:
        for timer in (self._heartbeat, self._sweeper):
            if timer is not None and timer.running:
                timer.stop()
        self._heartbeat = self._sweeper = None

    # Draining

    def _jittered_retry(self) -> int:
        """The retry hint for a closing stream: spread over [retry, 2 * retry]."""
        base = self.retry if self.retry is not None else 2000
        return base + random.randint(0, max(base, 1))

    def drain(self, timeout: float = 5.0) -> Deferred[None]:
        """
        Stop taking subscribers and end every open stream cleanly.

        Each stream gets what is queued for it and a jittered C{retry:} hint,
        then the end of its response, and its connection is closed once its
        bytes are written. Connections still open after C{timeout} seconds
        are aborted. Returns a Deferred that fires when all are gone.
        """
        if self._drained is not None:
            return self._drained
        self._draining = True
        self._stop_timers()
        subs = list(self._subscribers)
        for sub in subs:
            try:
                sub.close(b"retry: %d\n\n" % self._jittered_retry())
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
            waiting = [s for s in waiting if not s.closed()]
            if waiting and clock.seconds() < deadline:
                clock.callLater(_DRAIN_POLL, poll)
                return
            for sub in waiting:
                self.log.warn(
                    "SSE client {peer} still open at drain deadline: aborted", peer=sub._peer()
                )
                sub.abort()
            assert self._drained is not None
            self._drained.callback(None)

        clock.callLater(0, poll)
        return self._drained

    # Mounting

    def resource(self) -> Any:
        """An C{IResource} that serves this broker's stream on GET."""
        from .resource import StreamResource

        return StreamResource(self)


def _event_from(item: Mapping[str, Any], id: str | None) -> Event:
    """An L{Event} from a mapping with L{SSEBroker.publish}'s argument names."""
    return Event.create(
        item["channel"],
        item.get("event"),
        item.get("data"),
        text=item.get("text"),
        id=id,
        retry=item.get("retry"),
    )


def _set_stream_headers(request: Request) -> None:
    request.setResponseCode(200)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"text/event-stream; charset=utf-8"])
    headers.setRawHeaders(b"cache-control", [b"no-cache, no-transform"])
    headers.setRawHeaders(b"x-accel-buffering", [b"no"])
