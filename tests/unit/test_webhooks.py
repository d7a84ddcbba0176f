"""
The standalone server's HTTP hooks, against a twisted.web backend in
process (treq's StubTreq, no socket) and a Clock: what is POSTed, how each
answer is passed on, the timeout, and the batched, bounded end reports.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.hooks import Ended
from sse_twisted.webhooks import HTTPSubscribeHook, HTTPUnsubscribeHook, check_hook_url

from ..support.conn import Conn, make_site

URL = "http://backend.example/hook"


class Backend(Resource):
    """The application's hook endpoint: records each body, answers C{answer}."""

    isLeaf = True

    def __init__(self, answer: Any = (200, {})) -> None:
        super().__init__()
        self.answer = answer
        self.bodies: list[Any] = []
        self.hung: list[Request] = []

    def render_POST(self, request: Request) -> Any:
        assert request.content is not None
        self.bodies.append(json.loads(request.content.read()))
        if self.answer == "hang":
            self.hung.append(request)
            return NOT_DONE_YET
        code, body = self.answer
        request.setResponseCode(code)
        if isinstance(body, bytes):
            return body
        request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode()


def served(clock: Clock, backend: Backend, timeout: float = 5.0) -> tuple[SSEBroker, Any, Any]:
    stub = StubTreq(backend)
    hook = HTTPSubscribeHook(URL, timeout, client=stub, reactor=clock)
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="t", on_subscribe=hook)
    return broker, make_site(make_resource(broker, demo=False), clock), stub


def test_the_request_is_posted_with_its_channels_peer_and_headers(clock: Clock) -> None:
    """The backend gets the channels and patterns asked, the peer, Cookie/Authorization/Origin."""
    backend = Backend()
    broker, site, stub = served(clock, backend)
    Conn(
        site,
        b"/events?channel=a&channel=b",
        headers={b"cookie": b"session=abc", b"origin": b"https://app.example"},
        peer="10.0.0.7",
    )
    stub.flush()
    assert backend.bodies == [
        {
            "channels": ["a", "b"],
            "patterns": [],
            "peer": "10.0.0.7:40000",
            "headers": {
                "cookie": "session=abc",
                "authorization": None,
                "origin": "https://app.example",
            },
        }
    ]


def test_a_200_grants_its_channels_and_user(clock: Clock) -> None:
    """200 {"channels", "user"}: the stream gets that subset, held by that user."""
    broker, site, stub = served(clock, Backend((200, {"channels": ["b"], "user": "alice"})))
    conn = Conn(site, b"/events?channel=a&channel=b")
    stub.flush()
    (sub,) = broker._subscribers
    assert sub.channels == frozenset({"b"}) and sub.user == "alice"
    broker.publish("a", "story", 1)
    broker.publish("b", "story", 2)
    assert [e.data for e in conn.events() if e.type == "story"] == ["2"]


@pytest.mark.parametrize("status", [401, 403])
def test_refusals_pass_on_with_the_backends_message(clock: Clock, status: int) -> None:
    """401/403 reach the client with the backend's JSON error (or a default without one)."""
    broker, site, stub = served(clock, Backend((status, {"error": "session expired"})))
    conn = Conn(site, b"/events?channel=a")
    stub.flush()
    assert conn.status == status and conn.json() == {"error": "session expired"}
    broker, site, stub = served(clock, Backend((status, b"<html>no</html>")))
    conn = Conn(site, b"/events?channel=a")
    stub.flush()
    assert conn.status == status and conn.json() == {"error": "not allowed to subscribe"}


@pytest.mark.parametrize(
    "answer",
    [
        (500, {"error": "boom"}),
        (404, b"not found"),
        (302, b""),
        (200, b"not json"),
        (200, [1, 2]),
        (200, {"user": 5}),
        (200, {"channels": "a"}),
    ],
)
def test_any_other_answer_sends_the_client_away_to_retry(clock: Clock, answer: Any) -> None:
    """Anything but 200 with a good answer, 401 or 403: a 200 stream with retry: that ends."""
    broker, site, stub = served(clock, Backend(answer))
    conn = Conn(site, b"/events?channel=a")
    stub.flush()
    assert conn.status == 200 and b"retry: " in conn.stream() and conn.ended()
    assert broker.client_count() == 0


def test_a_backend_slower_than_the_timeout_sends_the_client_away(clock: Clock) -> None:
    """
    A backend that has not answered within the timeout: the client gets a
    200 stream with retry: and an end, never a 5xx; its late answer is ignored.
    """
    backend = Backend("hang")
    broker, site, stub = served(clock, backend, timeout=5)
    conn = Conn(site, b"/events?channel=a")
    stub.flush()
    clock.advance(4.9)
    assert conn.transport.value() == b""
    clock.advance(0.1)
    assert conn.status == 200 and b"retry: " in conn.stream() and conn.ended()
    assert broker.client_count() == 0
    assert clock.getDelayedCalls() == []


def test_a_backend_that_is_down_sends_the_client_away(clock: Clock) -> None:
    """Connection refused: the client is sent away to retry (200, retry:, end)."""

    class Down:
        def post(self, url: str, **kw: Any) -> Deferred[Any]:
            return fail(ConnectionRefusedError("backend down"))

    hook = HTTPSubscribeHook(URL, client=Down(), reactor=clock)
    broker = SSEBroker(reactor=clock, heartbeat=0, on_subscribe=hook)
    conn = Conn(make_site(make_resource(broker, demo=False), clock), b"/events")
    assert conn.status == 200 and b"retry: " in conn.stream() and conn.ended()


@pytest.mark.parametrize(
    "url", ["ftp://host/x", "http://", "/relative", "host:80", "http://h:99999/", ""]
)
def test_a_hook_url_must_be_http_or_https(url: str) -> None:
    """Only absolute http(s) URLs with a host are hooks."""
    with pytest.raises(ValueError, match="http"):
        check_hook_url(url)


# --unsubscribe-hook ----------------------------------------------------------


def ended(user: str) -> Ended:
    return Ended(user=user, channels=("a",), patterns=(), peer="1.2.3.4:5", seconds=1.23456)


def reporter(clock: Clock, backend: Backend, **kw: Any) -> tuple[HTTPUnsubscribeHook, Any]:
    stub = StubTreq(backend)
    return HTTPUnsubscribeHook(URL, client=stub, reactor=clock, **kw), stub


def test_ends_are_posted_in_batches_after_the_interval(clock: Clock) -> None:
    """Reports wait up to the interval and go in one POST: {"ended": [...]}."""
    backend = Backend((204, b""))
    hook, stub = reporter(clock, backend, interval=1.0)
    hook(ended("u1"), "gone")
    hook(ended("u2"), "lifetime")
    stub.flush()
    assert backend.bodies == []
    clock.advance(1)
    stub.flush()
    assert backend.bodies == [
        {
            "ended": [
                {
                    "user": "u1",
                    "channels": ["a"],
                    "patterns": [],
                    "peer": "1.2.3.4:5",
                    "reason": "gone",
                    "seconds": 1.235,
                },
                {
                    "user": "u2",
                    "channels": ["a"],
                    "patterns": [],
                    "peer": "1.2.3.4:5",
                    "reason": "lifetime",
                    "seconds": 1.235,
                },
            ]
        }
    ]
    assert hook.sent == 2 and hook.dropped == 0 and clock.getDelayedCalls() == []


def test_a_full_batch_goes_at_once_and_one_post_at_a_time(clock: Clock) -> None:
    """
    A full batch is posted without waiting; while a POST is out the others
    wait (one at a time), and go as soon as it is answered.
    """
    backend = Backend("hang")
    hook, stub = reporter(clock, backend, batch=3, interval=10)
    for n in range(7):
        hook(ended(f"u{n}"), "gone")
    stub.flush()
    assert [len(b["ended"]) for b in backend.bodies] == [3]
    assert hook.pending == 4
    backend.answer = (200, {})
    backend.hung[0].finish()
    stub.flush()
    assert [len(b["ended"]) for b in backend.bodies] == [3, 3]
    clock.advance(10)
    stub.flush()
    assert [len(b["ended"]) for b in backend.bodies] == [3, 3, 1]
    assert hook.sent == 7


def test_reports_are_bounded_and_dropped_when_the_backend_is_down(clock: Clock) -> None:
    """
    A backend that answers 500 loses its batch (counted, not retried); over
    max_pending waiting, new reports are dropped and counted: memory stays bounded.
    """
    backend = Backend("hang")
    hook, stub = reporter(clock, backend, batch=2, interval=1, max_pending=5, timeout=3)
    for n in range(10):
        hook(ended(f"u{n}"), "gone")
    stub.flush()
    # 2 in flight, 5 waiting, 3 dropped
    assert hook.pending == 5 and hook.dropped == 3
    clock.advance(3)  # the POST times out: its 2 are dropped
    stub.flush()
    assert hook.dropped == 5
    backend.answer = (500, {})
    for _ in range(10):
        clock.advance(1)
        stub.flush()
    assert hook.pending == 0 and hook.sent == 0 and hook.dropped == 10
    assert clock.getDelayedCalls() == []


def test_the_standalone_broker_reports_to_the_hook(clock: Clock) -> None:
    """An HTTPUnsubscribeHook as on_unsubscribe: a stream that ends is posted with its reason."""
    backend = Backend((200, {}))
    hook, stub = reporter(clock, backend)
    broker = SSEBroker(reactor=clock, heartbeat=0, on_unsubscribe=hook)
    conn = Conn(make_site(make_resource(broker, demo=False), clock), b"/events?channel=a")
    clock.advance(2)
    conn.drop()
    clock.advance(0)  # reported in the next turn
    clock.advance(1)  # batched for a second
    stub.flush()
    (body,) = backend.bodies
    assert body["ended"][0]["reason"] == "gone" and body["ended"][0]["seconds"] == 2.0


def test_stopping_the_broker_sends_the_drained_streams_reports(clock: Clock) -> None:
    """
    Stopping drains every stream and then flushes the reports at once (not
    a second later, when the process may be gone); the stop waits for them.
    """
    backend = Backend("hang")
    hook, stub = reporter(clock, backend, batch=2, interval=1)
    broker = SSEBroker(reactor=clock, heartbeat=0, on_unsubscribe=hook, drain_timeout=1)
    site = make_site(make_resource(broker, demo=False), clock)
    for _ in range(3):
        Conn(site, b"/events")
    stopped: list[object] = []
    broker.stopService().addBoth(stopped.append)
    clock.advance(0)
    stub.flush()
    assert [len(b["ended"]) for b in backend.bodies] == [2]  # a full batch at once
    for _ in range(25):
        clock.advance(0.05)  # the drain's polls, past its deadline: it is done
    assert broker._drained is not None and broker._drained.called
    assert stopped == []  # waiting for the reports
    backend.answer = (204, b"")
    backend.hung[0].finish()
    stub.flush()  # the answer, then the next batch's
    stub.flush()
    assert [len(b["ended"]) for b in backend.bodies] == [2, 1]
    assert {r["reason"] for b in backend.bodies for r in b["ended"]} == {"drained"}
    assert stopped == [None] and hook.sent == 3
    clock.advance(hook.timeout)
    assert clock.getDelayedCalls() == []


def test_a_flush_gives_up_after_the_timeout(clock: Clock) -> None:
    """A backend that does not answer holds the stop for at most the hook timeout."""
    backend = Backend("hang")
    hook, stub = reporter(clock, backend, batch=1, timeout=3)
    hook(ended("u1"), "drained")
    hook(ended("u2"), "drained")
    flushed: list[object] = []
    hook.flush().addBoth(flushed.append)
    stub.flush()
    clock.advance(3)  # u1's POST times out, u2's goes; the flush gives up on it
    assert flushed == [None] and hook.pending == 0 and hook.dropped == 1
    clock.advance(3)
    assert hook.dropped == 2 and clock.getDelayedCalls() == []
