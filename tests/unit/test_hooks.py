"""
Subscribe hooks in code: C{SSEBroker(on_subscribe=...)} decides what a
stream gets and who holds it, or refuses it; C{on_unsubscribe} hears of
each end and why. Deterministic: a real Site on a Clock.
"""

from __future__ import annotations

import json
from typing import Any

import jwt
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.auth import JWTAuth
from sse_twisted.hooks import Admission, Ended, HookFailed, RateLimitedLog, Refused
from sse_twisted.limits import SubscriberLimits

from ..support.conn import Conn, make_site

SECRET = "s3cret-for-tests-only-0123456789abcdef"


class Hook:
    """An on_subscribe that records its calls and answers what it is told."""

    def __init__(self, answer: Any = None) -> None:
        self.calls: list[tuple[Any, tuple[str, ...], tuple[str, ...]]] = []
        self.answer = answer
        self.pending: list[Deferred[Admission]] = []

    def __call__(self, request: Any, channels: tuple[str, ...], patterns: tuple[str, ...]) -> Any:
        self.calls.append((request, channels, patterns))
        if self.answer == "later":
            d: Deferred[Admission] = Deferred()
            self.pending.append(d)
            return d
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def setup(clock: Clock, hook: Any, **kw: Any) -> tuple[SSEBroker, Any]:
    broker_kw = {k: kw.pop(k) for k in ("on_unsubscribe", "max_lifetime") if k in kw}
    broker = SSEBroker(reactor=clock, heartbeat=0, id_prefix="t", on_subscribe=hook, **broker_kw)
    return broker, make_site(make_resource(broker, demo=False, **kw), clock)


def test_the_hook_grants_a_subset_and_names_the_user(clock: Clock) -> None:
    """
    The hook is given the request and the channels asked for; the stream
    gets only what it granted, and is held by the user it named.
    """
    hook = Hook(Admission(channels=["a", "c"], user="alice"))
    broker, site = setup(clock, hook)
    conn = Conn(site, b"/events?channel=a&channel=b&channel=c")
    (request, channels, patterns) = hook.calls[0]
    assert channels == ("a", "b", "c") and patterns == ()
    assert request.getHeader(b"host") == b"localhost"
    (sub,) = broker._subscribers
    assert sub.channels == frozenset({"a", "c"}) and sub.user == "alice"
    for channel in "abc":
        broker.publish(channel, "story", channel)
    assert [e.data for e in conn.events() if e.type == "story"] == ['"a"', '"c"']


def test_a_hook_narrows_and_never_widens(clock: Clock) -> None:
    """Channels the hook grants but that were not asked for are left out."""
    broker, site = setup(clock, Hook(Admission(channels=["a", "secret"])))
    Conn(site, b"/events?channel=a&channel=b")
    (sub,) = broker._subscribers
    assert sub.channels == frozenset({"a"})


def test_none_grants_what_was_asked_and_the_jwt_user_stays(clock: Clock) -> None:
    """An Admission without channels grants those asked; without a user, the JWT's sub holds it."""
    auth = JWTAuth(secret=SECRET, clock=clock.seconds)
    broker, site = setup(clock, Hook(Admission()), auth=auth)
    token = jwt.encode({"sub": "bob", "exp": clock.seconds() + 60}, SECRET, algorithm="HS256")
    Conn(site, b"/events?channel=a&channel=b&token=" + token.encode())
    (sub,) = broker._subscribers
    assert sub.channels == frozenset({"a", "b"}) and sub.user == "bob"


def test_every_channel_narrowed_only_to_what_the_token_may_read(clock: Clock) -> None:
    """
    A request for every channel may be narrowed by the hook to any channels,
    but a private one the token does not allow is still left out: the hook
    narrows what the server would allow, it does not add to it.
    """
    auth = JWTAuth(secret=SECRET, clock=clock.seconds, private=["private/*"])
    broker, site = setup(clock, Hook(Admission(channels=["news", "private/x"])), auth=auth)
    Conn(site, b"/events")
    (sub,) = broker._subscribers
    assert sub.channels == frozenset({"news"})


def test_granting_nothing_is_a_403(clock: Clock) -> None:
    """A hook that grants none of what was asked refuses with 403 (never an empty 'all')."""
    broker, site = setup(clock, Hook(Admission(channels=[])))
    conn = Conn(site, b"/events")
    assert conn.status == 403 and "none of the channels" in conn.json()["error"]
    assert broker.client_count() == 0


@pytest.mark.parametrize("status", [401, 403])
def test_refused_is_passed_on_with_its_status_and_message(clock: Clock, status: int) -> None:
    """Refused(status, message) answers that status with {"error": message}; a 401 challenges."""
    broker, site = setup(clock, Hook(Refused(status, "log in first")))
    conn = Conn(site, b"/events?channel=a")
    assert conn.status == status
    assert conn.json() == {"error": "log in first"}
    assert (conn.header(b"www-authenticate") is not None) == (status == 401)
    assert broker.client_count() == 0


def test_refused_takes_only_401_or_403() -> None:
    """Refused is for 401 and 403: anything else is a mistake, said at once."""
    with pytest.raises(ValueError, match="401 or 403"):
        Refused(500, "no")


@pytest.mark.parametrize(
    "answer",
    [
        RuntimeError("bug in the hook"),
        HookFailed("backend down"),
        "not an admission",
        Admission(channels="a"),  # a string, not a list
        Admission(channels=["bad\nname"]),
    ],
)
def test_a_failing_hook_sends_the_client_away_to_retry(clock: Clock, answer: Any) -> None:
    """
    Whatever goes wrong in the hook, the client gets a 200 event stream with
    a retry: and an immediate end, never a 5xx (EventSource would give up).
    """
    broker, site = setup(clock, Hook(answer))
    conn = Conn(site, b"/events?channel=a")
    assert conn.status == 200
    assert conn.header(b"content-type") == b"text/event-stream; charset=utf-8"
    assert b"retry: " in conn.stream() and conn.ended()
    assert broker.client_count() == 0


def test_the_render_waits_for_the_hook(clock: Clock) -> None:
    """A hook that answers later: nothing is written until it does, then the stream opens."""
    hook = Hook("later")
    broker, site = setup(clock, hook)
    conn = Conn(site, b"/events?channel=a")
    assert conn.transport.value() == b"" and broker.client_count() == 0
    hook.pending[0].callback(Admission(user="u"))
    assert conn.status == 200 and broker.client_count() == 1
    broker.publish("a", "story", 1)
    assert [e.data for e in conn.events() if e.type == "story"] == ["1"]


def test_a_client_gone_before_the_answer_is_not_subscribed(clock: Clock) -> None:
    """If the client left while the hook thought, its grant subscribes nothing."""
    hook = Hook("later")
    broker, site = setup(clock, hook)
    conn = Conn(site, b"/events?channel=a")
    conn.drop()
    hook.pending[0].callback(Admission())
    assert broker.client_count() == 0
    hook2 = Hook("later")
    broker.on_subscribe = hook2
    conn = Conn(site, b"/events?channel=a")
    conn.drop()
    hook2.pending[0].errback(Refused(403, "no"))  # nothing to answer either
    assert conn.transport.value() == b""


def test_a_broker_that_drains_meanwhile_sends_the_client_away(clock: Clock) -> None:
    """Draining began while the hook thought: the client is turned away to retry, not subscribed."""
    hook = Hook("later")
    broker, site = setup(clock, hook)
    conn = Conn(site, b"/events?channel=a")
    broker.drain(1)
    hook.pending[0].callback(Admission())
    assert conn.status == 200 and conn.ended() and b"draining" in conn.stream()
    assert broker.client_count() == 0


def test_limits_apply_before_the_hook_and_count_waiting_streams(clock: Clock) -> None:
    """
    The per-peer cap is checked before the hook is asked, and a stream
    waiting for its answer counts: a client cannot have more hook calls in
    flight than streams.
    """
    hook = Hook("later")
    broker, site = setup(clock, hook, limits=SubscriberLimits(max_per_ip=1))
    Conn(site, b"/events?channel=a")
    second = Conn(site, b"/events?channel=a")
    assert len(hook.calls) == 1
    assert b"too many streams" in second.stream() and second.ended()


def test_cors_headers_reach_a_refusal(clock: Clock) -> None:
    """A page on an allowed origin can read the hook's refusal (CORS applied before the hook)."""
    from sse_twisted.cors import CORSPolicy

    broker, site = setup(clock, Hook(Refused(403, "no")), cors=CORSPolicy(["https://app"]))
    conn = Conn(site, b"/events", headers={b"origin": b"https://app"})
    assert conn.status == 403 and conn.header(b"access-control-allow-origin") == b"https://app"


def test_no_hook_keeps_the_synchronous_path(clock: Clock) -> None:
    """Without on_subscribe, subscribe is called directly (the stream is open on return)."""
    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = make_site(make_resource(broker, demo=False), clock)
    Conn(site, b"/events?channel=a")
    assert broker.client_count() == 1


def test_the_hook_may_grant_patterns(clock: Clock) -> None:
    """Patterns the hook grants for an every-channel request reach subscribe(patterns=)."""
    broker, site = setup(clock, Hook(Admission(channels=[], patterns=["orders/*"])))
    conn = Conn(site, b"/events")
    broker.publish("orders/1", "story", 1)
    broker.publish("news", "story", 2)
    assert [e.data for e in conn.events() if e.type == "story"] == ["1"]


def test_the_hook_sees_requested_patterns_and_envelope_is_kept(clock: Clock) -> None:
    """
    ?pattern= reaches the hook as asked; what it grants is subscribed, with
    the request's envelope=1 kept: every event arrives as an envelope.
    """
    hook = Hook(Admission(channels=None, patterns=None, user="ada"))
    broker, site = setup(clock, hook)
    conn = Conn(site, b"/events?pattern=orders/*&envelope=1")
    assert [c[1:] for c in hook.calls] == [((), ("orders/*",))]
    broker.publish("orders/1", "story", 1)
    broker.publish("news", "story", 2)
    got = [json.loads(e.data) for e in conn.events() if e.type == "message"]
    assert [(g["channel"], g["event"]) for g in got] == [("orders/1", "story")]


# on_unsubscribe ------------------------------------------------------------


class Ends:
    def __init__(self) -> None:
        self.seen: list[tuple[Ended, str]] = []

    def __call__(self, ended: Ended, reason: str) -> None:
        self.seen.append((ended, reason))


def test_on_unsubscribe_hears_each_end_and_why(clock: Clock) -> None:
    """
    Each ended stream is reported once with who held it, its channels, how
    long it was open, and the reason: gone (client left), aborted (slow),
    closed (by the application), drained; in a later reactor turn than the end.
    """
    ends = Ends()
    broker = SSEBroker(
        reactor=clock,
        heartbeat=0,
        on_unsubscribe=ends,
        queue_size=1,
        overflow="disconnect",
        on_subscribe=lambda request, channels, patterns: Admission(
            user=request.args[b"u"][0].decode()
        ),
    )
    site = make_site(make_resource(broker, demo=False), clock)
    left = Conn(site, b"/events?channel=a&u=left")
    slow = Conn(site, b"/events?channel=a&u=slow")
    Conn(site, b"/events?channel=b&u=closed")
    Conn(site, b"/events?u=drained")
    clock.advance(3)
    left.drop()
    assert ends.seen == []  # not inside the end itself
    clock.advance(0)
    slow.pause()
    broker.publish("a", "e", 1)
    broker.publish("a", "e", 2)  # the queue of 1 overflows: disconnect
    closed = next(s for s in broker._subscribers if s.user == "closed")
    closed.close()
    broker.drain(1)
    clock.advance(0)
    got = {e.user: (reason, e.channels, e.seconds) for e, reason in ends.seen}
    assert got == {
        "left": ("gone", ("a",), 3.0),
        "slow": ("aborted", ("a",), 3.0),
        "closed": ("closed", ("b",), 3.0),
        "drained": ("drained", None, 3.0),
    }
    assert all(e.peer == "127.0.0.1:40000" and e.patterns == () for e, _ in ends.seen)


def test_on_unsubscribe_hears_expired_and_lifetime(clock: Clock) -> None:
    """A stream ended at its token's expiry is 'expired'; at its lifetime, 'lifetime'."""
    ends = Ends()
    broker = SSEBroker(reactor=clock, heartbeat=0, on_unsubscribe=ends, max_lifetime=100)
    auth = JWTAuth(secret=SECRET, clock=clock.seconds)
    site = make_site(make_resource(broker, demo=False, auth=auth), clock)
    token = jwt.encode({"sub": "x", "exp": clock.seconds() + 10}, SECRET, algorithm="HS256")
    Conn(site, b"/events?token=" + token.encode())
    Conn(site, b"/events")
    clock.advance(10)
    clock.advance(120)
    assert sorted(reason for _, reason in ends.seen) == ["expired", "lifetime"]


def test_a_failing_on_unsubscribe_is_logged_and_the_rest_go_on(clock: Clock) -> None:
    """An on_unsubscribe that raises (or fails later) does not stop the others' reports."""
    seen: list[str | None] = []

    def hook(ended: Ended, reason: str) -> Any:
        seen.append(ended.user)
        if len(seen) == 1:
            raise RuntimeError("first fails")
        if len(seen) == 2:
            failed: Deferred[None] = Deferred()
            failed.errback(RuntimeError("second fails later"))
            return failed
        return succeed(None)

    broker = SSEBroker(reactor=clock, heartbeat=0, on_unsubscribe=hook)
    site = make_site(make_resource(broker, demo=False), clock)
    conns = [Conn(site, b"/events") for _ in range(3)]
    for c in conns:
        c.drop()
    clock.advance(0)
    assert len(seen) == 3


def test_rate_limited_log_says_how_many_it_held_back() -> None:
    """A storm of the same warning logs once per period, then says how many it held back."""
    now = [0.0]
    lines: list[str] = []

    class Log:
        def warn(self, fmt: str, **kw: Any) -> None:
            lines.append(fmt.format(**kw))

    limited = RateLimitedLog(Log(), every=10, now=lambda: now[0])  # type: ignore[arg-type]
    for _ in range(5):
        limited.warn("k", "down")
    now[0] = 10
    limited.warn("k", "down")
    assert lines == ["down", "down (and 4 more like it in the last 10s)"]
