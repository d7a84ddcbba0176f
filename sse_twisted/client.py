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
    calling C{on_error}, and L{EventSource.when_closed} fires with L{None}
    rather than failing.
  - I{Backoff.} The spec allows extra waiting after failed attempts; this
    client doubles the delay after each consecutive attempt that fails before
    the stream opens, up to C{max_backoff} (never below the server's own
    C{retry:} delay). An opened stream resets it.
  - I{No origin or credentials mode}: those are browser concepts. Redirects
    are followed by treq; reconnections use the original URL, as browsers do.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

import hyperlink
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Protocol as _TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.error import RedirectWithNoLocation
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from sse_twisted._reactor import default_reactor
from sse_twisted.parser import EventStreamParser, MessageEvent

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
OPEN = 1
CLOSED = 2

# Exponent cap so that the backoff arithmetic cannot overflow a float.
_MAX_DOUBLINGS = 64
# A floor for delays after failed attempts, so that a server saying
# "retry: 0" cannot make the client hammer a host that refuses connections.
_MIN_FAILURE_DELAY = 0.1


class HTTPGetter(Protocol):
    """
    What L{EventSource} needs of an HTTP client: treq's C{HTTPClient} and
    C{treq.testing.StubTreq} both provide it.
    """

    def get(self, url: str, /, *, headers: Headers, unbuffered: bool = ...) -> Deferred[Any]:
        """Issue a GET; fire with an L{IResponse}."""


class EventSourceError(Exception):
    """
    The source failed for good: a status other than 200 or 204, or a
    response that is not C{text/event-stream}.

    @ivar code: the HTTP status code of the response.
    @ivar content_type: its C{Content-Type}, or L{None} if it had none.
    """

    def __init__(self, message: str, code: int, content_type: str | None) -> None:
        super().__init__(message)
        self.code = code
        self.content_type = content_type


class _StreamBody(_TwistedProtocol):
    """Receives one response body and feeds it to its source's parser."""

    def __init__(self, source: EventSource) -> None:
        self._source = source

    def dataReceived(self, data: bytes) -> None:
        self._source._body_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._source._body_ended(self, reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # a TransportProxyProducer


class _Discard(_TwistedProtocol):
    """Takes a response body nobody wants and stops it at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]  # always set here


def _deliver_body(response: IResponse, protocol: _TwistedProtocol) -> None:
    # IResponse.deliverBody has no annotations in Twisted.
    response.deliverBody(protocol)


def _redirect_without_location(reason: Failure) -> IResponse | None:
    """The response of a redirect that had no Location, if that is what failed."""
    error = reason.value
    if not isinstance(error, ResponseFailed):
        return None
    if any(isinstance(f.value, RedirectWithNoLocation) for f in error.reasons):
        response: IResponse | None = error.response
        return response
    return None


def _failure(exception: BaseException) -> Failure:
    # Failure.__init__ has no annotations in Twisted.
    return Failure(exception)


class EventSource:
    """
    A reconnecting Server-Sent Events client.

    @ivar url: the URL requested, with the channels in its query.
    @ivar ready_state: L{CONNECTING}, L{OPEN} or L{CLOSED}.
    @ivar failure: why the source closed, when it failed for good; else
        L{None}.
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
        @param on_error: called with a L{Failure} each time the connection is
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
        parsed = hyperlink.DecodedURL.from_text(url)
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"EventSource needs an http or https URL, got {url!r}")
        for channel in channels:
            if not isinstance(channel, str):
                raise TypeError(f"channel must be a str, not {type(channel).__name__}")
            parsed = parsed.add("channel", channel)
        if retry < 0 or max_backoff < 0:
            raise ValueError(
                f"retry and max_backoff must be non-negative seconds, got {retry}, {max_backoff}"
            )
        extra = dict(headers or {})
        if any(name.lower() == "last-event-id" for name in extra):
            raise ValueError("pass last_event_id=... instead of a Last-Event-ID header")
        self.url: str = parsed.to_uri().to_text()
        self.ready_state: int = CONNECTING
        self.failure: Failure | None = None
        self._headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache", **extra}
        self._parser = EventStreamParser(
            on_retry=self._server_retry, last_event_id=last_event_id or ""
        )
        self._on_event = on_event
        self._on_open = on_open
        self._on_error = on_error
        self._given_reactor = reactor
        self._http_client = http_client
        self._reconnection_time = float(retry)
        self._max_backoff = float(max_backoff)
        self._failures = 0
        self._started = False
        self._request: Deferred[Any] | None = None
        self._body: _StreamBody | None = None
        self._delayed: IDelayedCall | None = None
        self._closed_waiters: list[Deferred[None]] = []
        self._queue: deque[MessageEvent] | None = None
        self._waiters: deque[Deferred[MessageEvent]] = deque()

    # --- public ------------------------------------------------------------

    @property
    def last_event_id(self) -> str:
        """The id that the next request sends as C{Last-Event-ID} ("" for none)."""
        return self._parser.last_event_id

    @property
    def reconnection_time(self) -> float:
        """The current reconnection delay in seconds, before any backoff."""
        return self._reconnection_time

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

        @return: a L{Deferred} that fires once the stream's connection is
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
        A L{Deferred} that fires with L{None} when the source is closed by
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
        if self._queue is None:
            self._queue = deque()
        if not self._started and self.ready_state != CLOSED:
            self.start()
        return self

    def __anext__(self) -> Deferred[MessageEvent]:
        """Fire with the next event, or fail with C{StopAsyncIteration} once closed."""
        if self._queue is None:
            self._queue = deque()
        if self._queue:
            return succeed(self._queue.popleft())
        if self.ready_state == CLOSED:
            return fail(StopAsyncIteration())
        d: Deferred[MessageEvent] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    # --- connection ------------------------------------------------------------

    def _reactor(self) -> IReactorTime:
        reactor: IReactorTime = default_reactor(self._given_reactor)
        return reactor

    def _client(self) -> HTTPGetter:
        if self._http_client is None:
            from treq.client import HTTPClient
            from twisted.web.client import Agent

            # Agent's __init__ has no annotations in Twisted.
            agent = Agent(self._reactor())
            client: HTTPGetter = HTTPClient(agent)
            self._http_client = client
        return self._http_client

    def _connect(self) -> None:
        self._delayed = None
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
        response = _redirect_without_location(reason)
        if response is not None:
            # Fetch hands such a response back as it is: a status that is not
            # 200, so the connection fails rather than being retried.
            self._got_response(response)
            return
        self._attempt_failed(reason)

    def _attempt_failed(self, reason: Failure) -> None:
        self._failures += 1
        self._reestablish(reason)

    def _got_response(self, response: IResponse) -> None:
        self._request = None
        if self.ready_state == CLOSED:
            _deliver_body(response, _Discard())
            return
        code = response.code
        types = response.headers.getRawHeaders("content-type")
        content_type = types[0] if types else None
        if code == 204:
            _deliver_body(response, _Discard())
            self._set_closed()
            return
        if code != 200:
            _deliver_body(response, _Discard())
            self._fail(
                EventSourceError(
                    f"{self.url} answered HTTP {code}; only 200 opens a stream",
                    code,
                    content_type,
                )
            )
            return
        essence = (content_type or "").split(";", 1)[0].strip().lower()
        if essence != "text/event-stream":
            _deliver_body(response, _Discard())
            self._fail(
                EventSourceError(
                    f"{self.url} answered with Content-Type {content_type!r}, "
                    "not text/event-stream",
                    code,
                    content_type,
                )
            )
            return
        self.ready_state = OPEN
        self._failures = 0
        self._call(self._on_open)
        if self.ready_state == CLOSED:
            _deliver_body(response, _Discard())
            return
        self._body = _StreamBody(self)
        _deliver_body(response, self._body)

    def _body_data(self, data: bytes) -> None:
        if self.ready_state == CLOSED:
            return
        for event in self._parser.feed(data):
            if self.ready_state == CLOSED:
                return
            self._deliver(event)

    def _body_ended(self, body: _StreamBody, reason: Failure) -> None:
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
        delay = self._next_delay()
        self.log.info(
            "EventSource {url} lost its connection ({reason}); reconnecting in {delay}s",
            url=self.url,
            reason=reason.getErrorMessage(),
            delay=delay,
        )
        self._delayed = self._reactor().callLater(delay, self._connect)

    def _next_delay(self) -> float:
        base = self._reconnection_time
        if self._failures == 0:
            return base
        base = max(base, _MIN_FAILURE_DELAY)
        backoff = base * 2.0 ** min(self._failures - 1, _MAX_DOUBLINGS)
        return max(base, min(backoff, self._max_backoff))

    def _server_retry(self, milliseconds: int) -> None:
        self._reconnection_time = milliseconds / 1000

    # --- closing --------------------------------------------------------------

    def _set_closed(self) -> None:
        """Move to CLOSED and stop everything in flight (idempotent)."""
        already = self.ready_state == CLOSED
        self.ready_state = CLOSED
        if self._delayed is not None:
            delayed, self._delayed = self._delayed, None
            if delayed.active():
                delayed.cancel()
        if self._request is not None:
            request, self._request = self._request, None
            request.cancel()
        if self._body is not None:
            self._body.abort()
        else:
            self._fire_closed()
        if not already:
            waiters, self._waiters = self._waiters, deque()
            for waiter in waiters:
                waiter.errback(StopAsyncIteration())

    def _fail(self, exception: Exception) -> None:
        self.failure = _failure(exception)
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
        if self._waiters:
            self._waiters.popleft().callback(event)
        elif self._queue is not None:
            self._queue.append(event)

    def _call(self, callback: Callable[..., object] | None, *args: object) -> None:
        """Call a user callback; its exceptions are logged, not propagated."""
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            self.log.failure("EventSource callback {callback!r} raised", callback=callback)
