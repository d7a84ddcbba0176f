"""
Tests for L{sse_twisted.client.EventSource}, driven synchronously: a
L{task.Clock} for the reconnection delays and L{StubTreq} over small
twisted.web resources for the HTTP side. No sockets, no real reactor.
"""

from __future__ import annotations

from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet import task
from twisted.internet.defer import Deferred, ensureDeferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from sse_twisted.client import (
    CLOSED,
    CONNECTING,
    OPEN,
    EventSource,
    EventSourceError,
)
from sse_twisted.parser import MessageEvent

URL = "http://example.invalid/events"


class Stream(Resource):
    """Answers each GET with an open event stream and keeps the request."""

    isLeaf = True

    def __init__(
        self,
        code: int = 200,
        content_type: bytes | None = b"text/event-stream",
        send_headers: bool = True,
    ) -> None:
        super().__init__()
        self.code = code
        self.content_type = content_type
        self.send_headers = send_headers
        self.requests: list[Request] = []

    def render_GET(self, request: Request) -> Any:
        self.requests.append(request)
        request.setResponseCode(self.code)
        if self.content_type is None:
            request.defaultContentType = None
        else:
            request.setHeader(b"content-type", self.content_type)
        if self.code != 200:
            return b""
        if self.send_headers:
            # Send the headers at once, as an SSE server must for the client
            # to see the stream open before the first event.
            request.write(b"")
        return NOT_DONE_YET

    def header(self, n: int, name: bytes) -> bytes | None:
        values = self.requests[n].requestHeaders.getRawHeaders(name)
        return None if values is None else values[0]


class Harness:
    """An EventSource on a StubTreq and a Clock, recording what it reports."""

    def __init__(self, resource: Resource | None = None, **kwargs: Any) -> None:
        self.resource = resource if resource is not None else Stream()
        self.stub = StubTreq(self.resource)
        self.clock = task.Clock()
        self.events: list[MessageEvent] = []
        self.errors: list[Failure] = []
        self.opens = 0
        kwargs.setdefault("http_client", self.stub)
        self.source = EventSource(
            URL,
            reactor=self.clock,
            on_event=self.events.append,
            on_open=self._opened,
            on_error=self.errors.append,
            **kwargs,
        )

    def _opened(self) -> None:
        self.opens += 1

    def start(self) -> None:
        self.source.start()
        self.stub.flush()

    @property
    def stream(self) -> Stream:
        assert isinstance(self.resource, Stream)
        return self.resource

    def send(self, data: bytes, n: int = -1) -> None:
        self.stream.requests[n].write(data)
        self.stub.flush()

    def end(self, n: int = -1) -> None:
        self.stream.requests[n].finish()
        self.stub.flush()


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired successfully."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "Deferred has not fired"
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failure_of(d: Deferred[Any]) -> Failure:
    """The Failure of a Deferred that has already failed."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out and isinstance(out[0], Failure), f"expected a failure, got {out!r}"
    return out[0]


def test_request_headers() -> None:
    """The GET carries Accept: text/event-stream and Cache-Control: no-cache, no Last-Event-ID."""
    h = Harness(headers={"Authorization": "Bearer t"})
    h.start()
    assert h.stream.header(0, b"accept") == b"text/event-stream"
    assert h.stream.header(0, b"cache-control") == b"no-cache"
    assert h.stream.header(0, b"authorization") == b"Bearer t"
    assert h.stream.header(0, b"last-event-id") is None
    assert h.stream.requests[0].method == b"GET"


def test_ready_state_and_on_open() -> None:
    """ready_state is CONNECTING until the stream opens, then OPEN, and on_open is called."""
    h = Harness(Stream(send_headers=False))
    assert h.source.ready_state == CONNECTING
    h.start()
    assert h.source.ready_state == CONNECTING
    assert h.opens == 0
    h.send(b"")  # the response headers go out with the first write
    assert h.source.ready_state == OPEN
    assert h.opens == 1


def test_start_twice_is_harmless() -> None:
    """Calling start() again does not open a second connection."""
    h = Harness()
    h.start()
    h.source.start()
    h.stub.flush()
    assert len(h.stream.requests) == 1


def test_events_delivered_to_callback() -> None:
    """Events arriving in pieces reach on_event whole and in order."""
    h = Harness()
    h.start()
    h.send(b"id: 1\nevent: tick\nda")
    assert h.events == []
    h.send(b"ta: a\n\ndata: b\n")
    h.send(b"data: c\n\n")
    assert h.events == [MessageEvent("tick", "a", "1"), MessageEvent("message", "b\nc", "1")]
    assert h.source.last_event_id == "1"


def test_callback_exception_does_not_break_stream() -> None:
    """An on_event callback that raises is logged, and later events still arrive."""
    seen: list[MessageEvent] = []

    def explode(event: MessageEvent) -> None:
        seen.append(event)
        raise RuntimeError("boom")

    stub_resource = Stream()
    stub = StubTreq(stub_resource)
    source = EventSource(URL, reactor=task.Clock(), http_client=stub, on_event=explode)
    source.start()
    stub.flush()
    stub_resource.requests[0].write(b"data: a\n\ndata: b\n\n")
    stub.flush()
    assert [e.data for e in seen] == ["a", "b"]
    assert source.ready_state == OPEN


def test_async_iteration() -> None:
    """async for yields the events in order and stops after close()."""
    h = Harness()

    async def consume() -> list[str]:
        got = []
        async for event in h.source:
            got.append(event.data)
            if event.data == "b":
                await h.source.close()
        return got

    d = ensureDeferred(consume())
    h.stub.flush()  # __aiter__ started the source
    h.send(b"data: a\n\n")
    h.send(b"data: b\n\ndata: c\n\n")
    h.stub.flush()
    assert result(d) == ["a", "b"]
    assert h.source.ready_state == CLOSED


def test_async_iteration_yields_queued_events_then_stops() -> None:
    """Events received before the source closed are still yielded, then iteration stops."""
    h = Harness()
    aiter = h.source.__aiter__()
    h.stub.flush()
    h.send(b"data: a\n\ndata: b\n\n")
    closed = h.source.close()
    h.stub.flush()
    assert result(closed) is None
    assert result(aiter.__anext__()).data == "a"
    assert result(aiter.__anext__()).data == "b"
    assert isinstance(failure_of(aiter.__anext__()).value, StopAsyncIteration)


def test_events_before_aiter_not_queued() -> None:
    """Only events after the first __aiter__ are queued, so callback-only users keep nothing."""
    h = Harness()
    h.start()
    h.send(b"data: early\n\n")
    aiter = h.source.__aiter__()
    pending = aiter.__anext__()
    h.send(b"data: late\n\n")
    assert result(pending).data == "late"
    assert [e.data for e in h.events] == ["early", "late"]


def test_cancelled_anext_does_not_swallow_an_event() -> None:
    """Cancelling a pending __anext__ removes it; the next event goes to the next waiter."""
    h = Harness()
    aiter = h.source.__aiter__()
    h.stub.flush()
    first = aiter.__anext__()
    first.cancel()
    failure_of(first)
    second = aiter.__anext__()
    h.send(b"data: x\n\n")
    assert result(second).data == "x"


def test_reconnect_with_last_event_id_after_retry_delay() -> None:
    """After the stream ends it reconnects after the retry: delay, sending Last-Event-ID."""
    h = Harness()
    h.start()
    h.send(b"retry: 5000\n\nid: 42\ndata: a\n\n")
    assert h.source.reconnection_time == 5.0
    h.end()
    assert h.source.ready_state == CONNECTING
    assert len(h.errors) == 1  # the browser fires "error" when the stream drops
    h.clock.advance(4.999)
    h.stub.flush()
    assert len(h.stream.requests) == 1
    h.clock.advance(0.001)
    h.stub.flush()
    assert len(h.stream.requests) == 2
    assert h.stream.header(1, b"last-event-id") == b"42"
    assert h.source.ready_state == OPEN
    assert h.opens == 2
    h.send(b"data: b\n\n")
    assert h.events[-1] == MessageEvent("message", "b", "42")


def test_initial_delay_used_without_server_retry() -> None:
    """Without a retry: field the initial delay is used."""
    h = Harness(retry=3.0)
    h.start()
    h.end()
    h.clock.advance(2.9)
    h.stub.flush()
    assert len(h.stream.requests) == 1
    h.clock.advance(0.1)
    h.stub.flush()
    assert len(h.stream.requests) == 2


def test_initial_last_event_id_sent() -> None:
    """A last_event_id given to the constructor is sent on the first request."""
    h = Harness(last_event_id="7")
    h.start()
    assert h.stream.header(0, b"last-event-id") == b"7"
    assert h.source.last_event_id == "7"


def test_non_ascii_last_event_id_sent_as_utf8() -> None:
    """The Last-Event-ID header is the id encoded as UTF-8."""
    h = Harness()
    h.start()
    h.send("id: é1\ndata: x\n\n".encode())
    h.end()
    h.clock.advance(2)
    h.stub.flush()
    assert h.stream.header(1, b"last-event-id") == "é1".encode()


def test_incomplete_block_dropped_on_reconnect() -> None:
    """A block cut off by the end of the stream is not dispatched, and its id is not kept."""
    h = Harness()
    h.start()
    h.send(b"id: 1\ndata: a\n\nid: 2\ndata: par")
    h.end()
    h.clock.advance(2)
    h.stub.flush()
    assert [e.data for e in h.events] == ["a"]
    assert h.stream.header(1, b"last-event-id") == b"1"
    # The new stream starts clean: the rest of the old line is a line of its own.
    h.send(b"tial\n\ndata: b\n\n")
    assert [e.data for e in h.events] == ["a", "b"]
    assert h.events[-1].last_event_id == "1"


def test_204_stops_for_good() -> None:
    """HTTP 204 closes the source cleanly: CLOSED, no reconnection, no on_error."""
    h = Harness(Stream(code=204, content_type=None))
    closed = h.source.when_closed()
    h.start()
    assert h.source.ready_state == CLOSED
    assert result(closed) is None
    assert h.errors == []
    assert h.clock.getDelayedCalls() == []
    assert h.source.failure is None


@pytest.mark.parametrize("code", [500, 503, 404, 201, 302])
def test_non_200_fails_permanently(code: int) -> None:
    """
    Any status but 200 and 204 fails the source: CLOSED, on_error, no
    reconnection (a 302 without Location is such a status, not a network error).
    """
    h = Harness(Stream(code=code))
    closed = h.source.when_closed()
    h.start()
    assert h.source.ready_state == CLOSED
    assert h.clock.getDelayedCalls() == []
    [error] = h.errors
    assert isinstance(error.value, EventSourceError)
    assert error.value.code == code
    assert failure_of(closed).value is error.value


@pytest.mark.parametrize("content_type", [b"text/plain", b"application/json", None])
def test_wrong_content_type_fails_permanently(content_type: bytes | None) -> None:
    """A 200 whose Content-Type is not text/event-stream fails the source for good."""
    h = Harness(Stream(content_type=content_type))
    h.start()
    assert h.source.ready_state == CLOSED
    assert h.clock.getDelayedCalls() == []
    assert h.opens == 0
    [error] = h.errors
    assert isinstance(error.value, EventSourceError)
    assert error.value.content_type == (None if content_type is None else content_type.decode())


def test_content_type_parameters_and_case_accepted() -> None:
    """Content-Type is compared by MIME essence: parameters and case do not matter."""
    h = Harness(Stream(content_type=b"Text/Event-Stream; charset=utf-8"))
    h.start()
    assert h.source.ready_state == OPEN


def test_anext_after_failure_stops() -> None:
    """After a permanent failure, iteration ends with StopAsyncIteration."""
    h = Harness(Stream(code=500))
    aiter = h.source.__aiter__()
    pending = aiter.__anext__()
    h.stub.flush()
    assert isinstance(failure_of(pending).value, StopAsyncIteration)


class FailingClient:
    """An HTTP client whose every GET fails to connect; records when it was asked."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.times: list[float] = []

    def get(self, url: str, /, *, headers: Headers, unbuffered: bool = False) -> Deferred[Any]:
        self.times.append(self.clock.seconds())
        return fail(ConnectionRefusedError())


def test_connection_failure_backoff_doubles_and_caps() -> None:
    """Consecutive failed attempts wait 1, 2, 4, 8 ... seconds, capped at max_backoff."""
    clock = task.Clock()
    client = FailingClient(clock)
    errors: list[Failure] = []
    source = EventSource(
        URL,
        reactor=clock,
        http_client=client,
        on_error=errors.append,
        retry=1.0,
        max_backoff=10.0,
    )
    source.start()
    for _ in range(7):
        clock.advance(clock.getDelayedCalls()[0].getTime() - clock.seconds())
    gaps = [b - a for a, b in zip(client.times, client.times[1:], strict=False)]
    assert gaps == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert source.ready_state == CONNECTING
    assert all(e.check(ConnectionRefusedError) for e in errors)
    result(source.close())
    assert clock.getDelayedCalls() == []


def test_successful_open_resets_backoff() -> None:
    """After a stream opens, the next reconnection waits the plain delay again."""

    class Flaky(Stream):
        def __init__(self) -> None:
            super().__init__()
            self.refuse = 3

        def render_GET(self, request: Request) -> Any:
            if self.refuse:
                self.refuse -= 1
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
                return NOT_DONE_YET
            return super().render_GET(request)

    h = Harness(Flaky(), retry=1.0)
    h.start()
    delays = []
    for _ in range(3):
        [call] = h.clock.getDelayedCalls()
        delays.append(call.getTime() - h.clock.seconds())
        h.clock.advance(delays[-1])
        h.stub.flush()
    assert delays == [1.0, 2.0, 4.0]
    assert h.source.ready_state == OPEN
    h.end()
    [call] = h.clock.getDelayedCalls()
    assert call.getTime() - h.clock.seconds() == 1.0


def test_backoff_never_below_server_retry() -> None:
    """A server retry: longer than max_backoff is still honoured after a failure."""
    h = Harness(max_backoff=1.0)
    h.start()
    h.send(b"retry: 5000\n\n")
    h.end()
    [call] = h.clock.getDelayedCalls()
    assert call.getTime() - h.clock.seconds() == 5.0


def test_mid_stream_connection_loss_reconnects() -> None:
    """A stream cut without a clean end reconnects like one that ended."""
    h = Harness()
    h.start()
    h.send(b"id: 3\ndata: a\n\n")
    h.stream.requests[0].channel.transport.loseConnection()  # type: ignore[union-attr]
    h.stub.flush()
    assert h.source.ready_state == CONNECTING
    h.clock.advance(2)
    h.stub.flush()
    assert h.stream.header(1, b"last-event-id") == b"3"


def test_close_during_delay() -> None:
    """close() during the reconnection wait cancels it; nothing is left on the clock."""
    h = Harness()
    h.start()
    h.end()
    assert len(h.clock.getDelayedCalls()) == 1
    closed = h.source.close()
    assert result(closed) is None
    assert h.source.ready_state == CLOSED
    assert h.clock.getDelayedCalls() == []
    h.clock.advance(100)
    h.stub.flush()
    assert len(h.stream.requests) == 1


def test_close_during_stream() -> None:
    """close() during a stream aborts it; the Deferred fires once the connection is gone."""
    h = Harness()
    h.start()
    h.send(b"data: a\n\n")
    finished: list[object] = []
    h.stream.requests[0].notifyFinish().addBoth(finished.append)
    closed = h.source.close()
    assert h.source.ready_state == CLOSED
    h.stub.flush()
    assert result(closed) is None
    assert len(finished) == 1  # the server saw the client leave
    assert h.clock.getDelayedCalls() == []
    assert h.errors == []
    h.clock.advance(100)
    h.stub.flush()
    assert len(h.stream.requests) == 1
    assert [e.data for e in h.events] == ["a"]


def test_no_events_after_close() -> None:
    """Data that arrives after close() is not delivered."""
    h = Harness()
    h.start()
    h.source.close()
    h.stream.requests[0].write(b"data: late\n\n")
    h.stub.flush()
    assert h.events == []


def test_close_while_connecting() -> None:
    """close() before the response arrives cancels the request quietly."""
    h = Harness()
    h.source.start()
    closed = h.source.close()
    h.stub.flush()
    assert result(closed) is None
    assert h.source.ready_state == CLOSED
    assert h.errors == []
    assert h.clock.getDelayedCalls() == []


def test_close_from_on_error_stops_reconnecting() -> None:
    """An on_error callback may call close() to stop the reconnection."""
    clock = task.Clock()
    source: EventSource

    def on_error(reason: Failure) -> None:
        source.close()

    source = EventSource(URL, reactor=clock, http_client=FailingClient(clock), on_error=on_error)
    source.start()
    assert source.ready_state == CLOSED
    assert clock.getDelayedCalls() == []


def test_start_after_close_refused() -> None:
    """A closed EventSource cannot be started again."""
    h = Harness()
    h.source.close()
    with pytest.raises(RuntimeError, match="create a new one"):
        h.source.start()


def test_channels_in_query() -> None:
    """Each channel becomes a repeated channel= query parameter."""
    h = Harness(channels=["a", "b c", "é"])
    h.start()
    assert h.stream.requests[0].args[b"channel"] == [b"a", b"b c", "é".encode()]
    assert h.source.url.startswith(URL + "?channel=a&channel=")


def test_channels_added_to_existing_query() -> None:
    """Channels are appended to a query the URL already has."""
    source = EventSource(URL + "?x=1", channels=["a"], reactor=task.Clock())
    assert source.url == URL + "?x=1&channel=a"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x/"}, "http or https"),
        ({"headers": {"last-event-id": "1"}}, "last_event_id"),
        ({"last_event_id": "a\nb"}, "CR, LF or NUL"),
        ({"retry": -1}, "non-negative"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    """Bad arguments are refused at construction with a message saying what to do."""
    url = kwargs.pop("url", URL)
    with pytest.raises(ValueError, match=message):
        EventSource(url, reactor=task.Clock(), **kwargs)


def test_default_http_client_uses_given_reactor() -> None:
    """Without http_client, a treq HTTPClient connects through the given reactor."""
    reactor = MemoryReactorClock()
    source = EventSource("http://127.0.0.1:8123/events", reactor=reactor)
    source.start()
    [(host, port, *_)] = reactor.tcpClients
    assert (host, port) == ("127.0.0.1", 8123)
    assert result(source.close()) is None
    assert reactor.getDelayedCalls() == []
