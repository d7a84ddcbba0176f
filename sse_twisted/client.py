"""
An EventSource client for Twisted programs, on treq.

It follows the browser's EventSource
(U{https://html.spec.whatwg.org/multipage/server-sent-events.html}): one GET
with C{Accept: text/event-stream}, events parsed by L{EventStreamParser},
reconnection after the server's C{retry:} delay with C{Last-Event-ID}, and the
same C{ready_state} values. Events reach an C{on_event} callback and an async
iterator (C{async for event in source:} inside a coroutine run by
C{ensureDeferred}).

Intentional divergences from the browser, and why:

  - I{Explicit start.} L{EventSource.start} opens the connection (and
    C{async for} starts it if needed), so a program can set attributes and
    iterate before anything happens, and tests control every step.
  - I{HTTP 204 is a clean stop.} The spec "fails the connection" on any
    status but 200, firing C{error}; its authoring notes tell servers to use
    204 to stop a client reconnecting. Here a 204 closes the source without
    calling C{on_error}, and L{EventSource.when_closed} fires with C{None}
    rather than failing.
  - I{Backoff.} The spec allows extra waiting after failed attempts; this
    client doubles the delay after each consecutive attempt that fails before
    the stream opens, up to C{max_backoff} (never below the server's own
    C{retry:} delay). An opened stream resets it.
  - I{No origin or credentials mode}: those are browser concepts. Redirects
    are followed by treq; reconnections use the original URL, as browsers do.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from ._client_http import (
    HTTPGetter,
    StreamBody,
    discard,
    receive,
    redirect_without_location,
    stream_url,
    treq_client,
)
from ._event_queue import EventQueue
from ._reactor import default_reactor
from ._reconnect import Reconnection
from .parser import EventStreamParser, MessageEvent

__all__ = [
    "CLOSED",
    "CONNECTING",
    "OPEN",
    "EventSource",
    "EventSourceError",
    "HTTPGetter",
]

#: L{EventSource.ready_state} values, as the browser's C{readyState}.
CONNECTING = 0
#: Connected: events arrive.
OPEN = 1
#: Closed for good: by L{EventSource.close}, an HTTP 204, or a fatal refusal.
CLOSED = 2


class EventSourceError(Exception):
    """
    The source failed for good: a status other than 200 or 204, or a
    response that is not C{text/event-stream}.

    @ivar code: the HTTP status code of the response.
    @ivar content_type: its C{Content-Type}, or C{None} if it had none.
    """

    def __init__(self, message: str, code: int, content_type: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.content_type = content_type


def _refusal(url: str, response: IResponse) -> EventSourceError | None:
    """Why C{response} (not a 204) opens no stream, or C{None} when it opens one."""
    code = response.code
    types = response.headers.getRawHeaders("content-type")
    content_type = types[0] if types else None
    if code != 200:
        message = f"{url} answered HTTP {code}; only 200 opens a stream"
    elif (content_type or "").split(";", 1)[0].strip().lower() != "text/event-stream":
        message = f"{url} answered with Content-Type {content_type!r}, not text/event-stream"
    else:
        return None
    return EventSourceError(message, code, content_type)


class EventSource:
    """
    A reconnecting Server-Sent Events client.

    @ivar url: the URL requested, with the channels in its query.
    @ivar ready_state: L{CONNECTING}, L{OPEN} or L{CLOSED}.
    @ivar failure: why the source closed, when it failed for good; else
        C{None}.
    """

    log = Logger()

    CONNECTING = CONNECTING
    OPEN = OPEN
    CLOSED = CLOSED

    def __init__(
        self,
        url: str,
        *,
        channels: Sequence[str] = (),
        last_event_id: str | None = None,
        on_event: Callable[[MessageEvent], object] | None = None,
        on_open: Callable[[], object] | None = None,
        on_error: Callable[[Failure], object] | None = None,
        headers: Mapping[str, str] | None = None,
        reactor: IReactorTime | None = None,
        http_client: HTTPGetter | None = None,
        retry: float = 2.0,
        max_backoff: float = 30.0,
    ) -> None:
        """
        @param url: an C{http} or C{https} URL.
        @param channels: each is added to the query as C{channel=NAME}.
        @param last_event_id: resume after this id (sent as C{Last-Event-ID}
            on the first request too).
        @param on_event: called with each L{MessageEvent}.
        @param on_open: called each time a stream opens.
        @param on_error: called with a C{Failure} each time the connection is
            lost or an attempt fails (C{ready_state} is then L{CONNECTING} and a
            reconnection is scheduled), and when the source fails for good
            (C{ready_state} L{CLOSED}, the failure wraps L{EventSourceError}).
        @param headers: extra request headers.
        @param reactor: used for the reconnection delays, and (without
            C{http_client}) for connecting; the global reactor by default.
        @param http_client: a treq C{HTTPClient} or C{StubTreq}; by default
            an C{HTTPClient} on C{reactor}.
        @param retry: the initial reconnection delay, in seconds, until the
            server sends C{retry:}.
        @param max_backoff: the longest delay, in seconds, that doubling after
            failed attempts may reach.

        @raise ValueError: for a URL that is not C{http}/C{https}, a
            negative delay, an id with CR, LF or NUL, or a C{Last-Event-ID}
            in C{headers} (pass C{last_event_id} instead).
        """
        stream = stream_url(url, channels)
        reconnection = Reconnection(retry, max_backoff)
        extra = dict(headers or {})
        if any(name.lower() == "last-event-id" for name in extra):
            raise ValueError("pass last_event_id=... instead of a Last-Event-ID header")
        self.url: str = stream
        self.ready_state: int = CONNECTING
        self.failure: Failure | None = None
        self._headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **extra}
        self._reconnection = reconnection
        self._parser = EventStreamParser(
            on_retry=reconnection.server_retry, last_event_id=last_event_id or ""
        )
        self._on_event = on_event
        self._on_open = on_open
        self._on_error = on_error
        self._given_reactor = reactor
        self._http_client = http_client
        self._started = False
        self._request: Deferred[Any] | None = None
        self._body: StreamBody | None = None
        self._closed_waiters: list[Deferred[None]] = []
        self._queue: EventQueue[MessageEvent] | None = None

    # --- public ------------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The id that the next request sends as C{Last-Event-ID} ("" for none)."""
        return self._parser.last_event_id

    @property
    def reconnection_time(self) -> float:
        """The current reconnection delay in seconds, before any backoff."""
        return self._reconnection.reconnection_time

    def start(self) -> None:
        """
        Open the connection. Calling it again does nothing.

        @raise RuntimeError: if the source is already closed; make a new one.
        """
        if self._started:
            return
        if self.ready_state == CLOSED:
            raise RuntimeError("this EventSource is closed; create a new one to reconnect")
        self._started = True
        self._connect()

    def close(self) -> Deferred[None]:
        """
        Stop for good: cancel a pending reconnection or request, abort the
        stream, end async iteration.

        @return: a C{Deferred} that fires once the stream's connection is
            gone (at once when there is none).
        """
        self._set_closed()
        if self._body is None:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    def when_closed(self) -> Deferred[None]:
        """
        A C{Deferred} that fires with C{None} when the source is closed by
        L{close} or an HTTP 204, or fails with L{failure} when it fails for
        good.
        """
        if self.ready_state == CLOSED and self._body is None:
            return succeed(None) if self.failure is None else fail(self.failure)
        d: Deferred[None] = Deferred()
        self._closed_waiters.append(d)
        return d

    def __aiter__(self) -> EventSource:
        """
        Iterate over events from now on (starting the source if needed).

        Events are queued for iteration only from the first call of
        C{__aiter__}, so that a program using only C{on_event} keeps nothing.
        Iteration yields every event received before the source closed, then
        stops.
        """
        self._events()
        if not self._started and self.ready_state != CLOSED:
            self.start()
        return self

    def __anext__(self) -> Deferred[MessageEvent]:
        """Fire with the next event, or fail with C{StopAsyncIteration} once closed."""
        return self._events().get()

    def _events(self) -> EventQueue[MessageEvent]:
        """The queue for iteration, made on first use (closed, if the source is)."""
        if self._queue is None:
            self._queue = EventQueue()
            if self.ready_state == CLOSED:  # for good: it never opens again
                self._queue.close()
        return self._queue

    # --- connection ------------------------------------------------------------

    def _reactor(self) -> IReactorTime:
        reactor: IReactorTime = default_reactor(self._given_reactor)
        return reactor

    def _client(self) -> HTTPGetter:
        if self._http_client is None:
            self._http_client = treq_client(self._reactor())
        return self._http_client

    def _connect(self) -> None:
        self.ready_state = CONNECTING
        self._parser.reset()
        headers = Headers({name: [value] for name, value in self._headers.items()})
        if self._parser.last_event_id:
            headers.setRawHeaders("Last-Event-ID", [self._parser.last_event_id])
        try:
            d = self._client().get(self.url, headers=headers, unbuffered=True)
        except Exception:
            d = fail()
        self._request = d
        d.addCallbacks(self._got_response, self._request_failed)
        d.addErrback(lambda f: self.log.failure("Unexpected error in EventSource", f))

    def _request_failed(self, reason: Failure) -> None:
        self._request = None
        if self.ready_state == CLOSED:
            # Most likely our own cancellation from close(); nothing to report.
            return
        response = redirect_without_location(reason)
        if response is not None:
            # Fetch hands such a response back as it is: a status that is not
            # 200, so the connection fails rather than being retried.
            self._got_response(response)
            return
        self._attempt_failed(reason)

    def _attempt_failed(self, reason: Failure) -> None:
        self._reconnection.attempt_failed()
        self._reestablish(reason)

    def _got_response(self, response: IResponse) -> None:
        self._request = None
        if self.ready_state == CLOSED:
            discard(response)
            return
        if response.code == 204:
            discard(response)
            self._set_closed()
            return
        error = _refusal(self.url, response)
        if error is not None:
            discard(response)
            self._fail(error)
            return
        self.ready_state = OPEN
        self._reconnection.opened()
        self._call(self._on_open)
        if self.ready_state == CLOSED:
            discard(response)
            return
        self._body = StreamBody(self._body_data, self._body_ended)
        receive(response, self._body)

    def _body_data(self, data: bytes) -> None:
        if self.ready_state == CLOSED:
            return
        for event in self._parser.feed(data):
            if self.ready_state == CLOSED:
                return
            self._deliver(event)

    def _body_ended(self, body: StreamBody, reason: Failure) -> None:
        if body is not self._body:
            return
        self._body = None
        if self.ready_state == CLOSED:
            self._fire_closed()
            return
        self._reestablish(reason)

    def _reestablish(self, reason: Failure) -> None:
        self.ready_state = CONNECTING
        self._call(self._on_error, reason)
        if self.ready_state == CLOSED:
            self._fire_closed()
            return
        delay = self._reconnection.schedule(self._reactor(), self._connect)
        self.log.info(
            "EventSource {url} lost its connection ({reason}); reconnecting in {delay}s",
            url=self.url,
            reason=reason.getErrorMessage(),
            delay=delay,
        )

    # --- closing --------------------------------------------------------------

    def _set_closed(self) -> None:
        """Move to CLOSED and stop everything in flight (idempotent)."""
        already = self.ready_state == CLOSED
        self.ready_state = CLOSED
        self._reconnection.cancel()
        if self._request is not None:
            request, self._request = self._request, None
            request.cancel()
        if self._body is not None:
            self._body.abort()
        else:
            self._fire_closed()
        if not already and self._queue is not None:
            self._queue.close()

    def _fail(self, exception: Exception) -> None:
        self.failure = Failure(exception)
        self._set_closed()
        self._call(self._on_error, self.failure)
        self._fire_closed()

    def _fire_closed(self) -> None:
        if self._body is not None:
            return
        waiters, self._closed_waiters = self._closed_waiters, []
        for d in waiters:
            if self.failure is None:
                d.callback(None)
            else:
                d.errback(self.failure)

    # --- delivery --------------------------------------------------------------

    def _deliver(self, event: MessageEvent) -> None:
        self._call(self._on_event, event)
        if self._queue is not None:
            self._queue.put(event)

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        """Call a user callback; its exceptions are logged, not propagated."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("EventSource callback {callback!r} raised", callback=callback)
