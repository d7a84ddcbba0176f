"""
Presence: who receives a channel (L{SSEBroker.presence}, C{GET /presence}),
its authority, and C{sse.join}/C{sse.leave} with their grace period.
"""

from __future__ import annotations

from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python import usage

from sse_twisted import SSEBroker
from sse_twisted.access import AllChannels
from sse_twisted.auth import JWTAuth
from sse_twisted.presence import JOIN, LEAVE, MAX_USERS, PresenceEvents, merge, receives
from sse_twisted.tap import Options, makeService

from ..support.conn import Conn, serve

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def token(clock: Clock, sub: str | None = None, **sse: Any) -> bytes:
    claims: dict[str, Any] = {"sse": sse, "exp": int(clock.seconds() + 3600)}
    if sub is not None:
        claims["sub"] = sub
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def auth(**kw: Any) -> JWTAuth:
    return JWTAuth(secret=SECRET, **kw)


def open_as(site: Any, clock: Clock, user: str | None, query: bytes = b"channel=room") -> Conn:
    if user is None:
        return Conn(site, b"/events?" + query)
    return Conn(site, b"/events?" + query + b"&token=" + token(clock, user))


def presence(site: Any, channel: bytes = b"room", **kw: Any) -> Conn:
    return Conn(site, b"/presence?channel=" + channel, **kw)


# broker.presence


def test_presence_counts_streams_and_lists_distinct_users_sorted(clock: Clock) -> None:
    """
    Presence counts every open stream that receives the channel (by name or
    all channels) and lists the distinct users among them, sorted;
    anonymous streams count as clients only; an ended stream drops out.
    """
    broker, site = serve(clock, auth=auth())
    a1 = open_as(site, clock, "zoe")
    open_as(site, clock, "zoe")
    open_as(site, clock, "ada")
    open_as(site, clock, None)
    open_as(site, clock, "bob", b"channel=other")
    open_as(site, clock, "cy", b"channel=")  # every channel
    p = broker.presence("room")
    assert (p.clients, p.users, p.users_truncated) == (5, ("ada", "cy", "zoe"), False)
    assert broker.presence("other").users == ("bob", "cy")
    assert broker.presence("nobody").clients == 1  # the all-channels stream
    a1.drop()
    assert broker.presence("room").clients == 4
    assert broker.presence("room").users == ("ada", "cy", "zoe")  # zoe's second stream


def test_presence_of_all_channel_subscribers_follows_what_they_may_read(clock: Clock) -> None:
    """
    A stream of every channel with a private-channel filter counts for a
    private channel only if its token grants that channel: presence never
    says more than the stream could read.
    """
    broker, site = serve(clock, auth=auth(private=["vip.*"]))
    Conn(site, b"/events?token=" + token(clock, "ada", subscribe=["vip.a"]))
    Conn(site, b"/events?token=" + token(clock, "bob"))
    Conn(site, b"/events")
    assert broker.presence("vip.a").users == ("ada",)
    assert broker.presence("vip.a").clients == 1
    assert broker.presence("vip.b").clients == 0
    assert broker.presence("public").users == ("ada", "bob")
    assert broker.presence("public").clients == 3


def test_users_are_bounded_and_truncation_is_said(clock: Clock) -> None:
    """Past MAX_USERS users the answer lists the first MAX_USERS, sorted, and says it is cut."""
    broker = SSEBroker(reactor=clock, heartbeat=0)
    for n in range(MAX_USERS + 5):
        broker.presence_tracker.add(_Sub(frozenset({"room"}), f"u{n:05d}"))  # type: ignore[arg-type]
    p = broker.presence("room")
    assert p.clients == MAX_USERS + 5
    assert len(p.users) == MAX_USERS and p.users_truncated
    assert p.users[0] == "u00000" and p.users[-1] == f"u{MAX_USERS - 1:05d}"
    assert p.to_json()["users_truncated"] is True
    assert "users_truncated" not in broker.presence("x").to_json()


def test_merge_of_truncated_parts_is_exact_in_its_first_users() -> None:
    """Reports cut at the bound still give the exact first users of their union."""
    a = [f"a{n:04d}" for n in range(0, 3000, 2)]
    b = [f"a{n:04d}" for n in range(1, 3000, 2)]
    p = merge("c", [(1500, a[:MAX_USERS], True), (1500, b[:MAX_USERS], True)])
    assert p.users == tuple(sorted(a + b)[:MAX_USERS]) and p.users_truncated
    assert p.clients == 3000


class _Sub:
    """The parts of a subscriber the tracker reads."""

    def __init__(
        self,
        channels: frozenset[str] | None,
        user: str | None,
        readable: Any = None,
    ) -> None:
        self.channels = channels
        self.user = user
        self.readable = channels if readable is None and channels is not None else readable

    def may_read(self, channel: str) -> bool:
        return self.readable is None or channel in self.readable


_CHANNELS = ["a", "b", "vip.a", "vip.b"]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "remove"]),
            st.one_of(
                st.none(),
                st.frozensets(st.sampled_from(_CHANNELS), min_size=1, max_size=3),
            ),
            st.sampled_from([None, "ada", "bob", "cy"]),
            st.sampled_from([None, "vip.a", "*"]),
        ),
        max_size=30,
    )
)
def test_presence_agrees_with_walking_every_subscriber(ops: list[Any]) -> None:
    """
    Whatever streams open and end, presence equals what walking every open
    stream (asking each whether it receives the channel) gives: the
    incremental tallies never drift.
    """
    broker = SSEBroker(reactor=Clock(), heartbeat=0)
    tracker = broker.presence_tracker
    private = JWTAuth(secret=SECRET, private=["vip.*"]).is_private
    grants = {None: None, "vip.a": _grant(["vip.a"]), "*": _grant(["*"])}
    open_: list[_Sub] = []
    for op, channels, user, grant in ops:
        if op == "remove" and open_:
            sub = open_.pop(len(channels or ()) % len(open_))
            tracker.remove(sub)  # type: ignore[arg-type]
            tracker.remove(sub)  # type: ignore[arg-type]  # twice: ignored
            continue
        readable = None
        if channels is None and grant is not None:
            readable = AllChannels(private, grants[grant])
        sub = _Sub(channels, user, readable)
        open_.append(sub)
        tracker.add(sub)  # type: ignore[arg-type]
    for channel in [*_CHANNELS, "zzz"]:
        walked = [s for s in open_ if _walk_receives(s, channel)]
        p = broker.presence(channel)
        assert p.clients == len(walked), channel
        assert p.users == tuple(sorted({s.user for s in walked if s.user is not None}))


def _grant(patterns: list[str]) -> Any:
    from sse_twisted.auth import Grant

    return Grant(tuple(patterns), (), None).may_subscribe


def _walk_receives(sub: _Sub, channel: str) -> bool:
    if sub.channels is not None:
        return channel in sub.channels
    return sub.may_read(channel)


def test_a_remote_description_of_a_wide_group_decides_as_the_group_does() -> None:
    """Another node judges a described all-channel group as its own subscriber would."""
    private = JWTAuth(secret=SECRET, private=["vip.*"]).is_private
    assert receives({"all": True}, "vip.x", private)
    assert receives({"grant": None}, "public", private)
    assert not receives({"grant": None}, "vip.x", private)
    assert receives({"grant": ["vip.x"]}, "vip.x", private)
    assert not receives({"grant": ["vip.x"]}, "vip.y", private)
    assert receives({"patterns": ["o/*"], "channels": [], "grant": None}, "o/1", private)
    assert not receives({"patterns": ["o/*"], "channels": [], "grant": None}, "p/1", private)


# GET /presence


def test_get_presence_answers_the_channels_clients_and_users(clock: Clock) -> None:
    """From loopback (loopback Host) GET /presence answers 200 with channel, clients, users."""
    _, site = serve(clock, auth=auth())
    open_as(site, clock, "bob")
    open_as(site, clock, "ada")
    open_as(site, clock, None)
    c = presence(site)
    assert c.status == 200
    assert c.json() == {"channel": "room", "clients": 3, "users": ["ada", "bob"]}
    assert c.header(b"content-type") == b"application/json"


def test_presence_needs_the_authority_to_publish(clock: Clock) -> None:
    """
    Presence needs what publishing to the channel needs: a peer that is not
    loopback gets 403; with a publish token, none or a wrong one gets 401 and
    the token 200; a JWT that may not publish to the channel gets 403, one
    that may gets 200, and a bad one 401. A private channel is no different.
    """
    _, site = serve(clock, auth=auth(private=["vip.*"]))
    far = presence(site, peer="203.0.113.9")
    assert far.status == 403 and "error" in far.json()
    _, site = serve(clock, publish_token="tok-0123456789abcdef", auth=auth(private=["vip.*"]))
    assert presence(site).status == 401
    assert presence(site).header(b"www-authenticate")
    wrong = presence(site, headers={b"authorization": b"Bearer nope"})
    assert wrong.status == 401 and "error" in wrong.json()
    ok = presence(site, headers={b"authorization": b"Bearer tok-0123456789abcdef"})
    assert ok.status == 200
    news = token(clock, "ed", publish=["news"])
    refused = presence(site, b"vip.a", headers={b"authorization": b"Bearer " + news})
    assert refused.status == 403 and "vip.a" in refused.json()["error"]
    vip = token(clock, "ed", publish=["vip.*"])
    allowed = presence(site, b"vip.a", headers={b"authorization": b"Bearer " + vip})
    assert allowed.status == 200 and allowed.json()["channel"] == "vip.a"
    bad = presence(site, headers={b"authorization": b"Bearer " + news[:-3]})
    assert bad.status == 401


def test_presence_refuses_a_rebinding_host(clock: Clock) -> None:
    """A loopback peer naming another Host (a DNS-rebinding page) gets 403, as publishing does."""
    _, site = serve(clock)
    c = presence(site, headers={b"host": b"evil.example"})
    # Conn sends its own Host first; twisted.web takes the last one.
    assert c.status == 403 and "Host" in c.json()["error"]


def test_presence_refuses_a_missing_or_bad_channel(clock: Clock) -> None:
    """No channel, an empty one, two, or an invalid name: 400 with a JSON error; POST: 405."""
    _, site = serve(clock)
    for path in (
        b"/presence",
        b"/presence?channel=",
        b"/presence?channel=a&channel=b",
        b"/presence?channel=%0A",
        b"/presence?channel=%FF",
    ):
        c = Conn(site, path)
        assert c.status == 400, path
        assert c.json()["error"]
    post = Conn(site, b"/presence?channel=a", method=b"POST", body=b"{}")
    assert post.status == 405 and post.header(b"allow") == b"GET"


def test_presence_path_is_configurable_and_can_be_off(clock: Clock) -> None:
    """presence_path moves the route; None removes it (404)."""
    _, site = serve(clock, presence_path="/who")
    assert Conn(site, b"/who?channel=a").status == 200
    assert Conn(site, b"/presence?channel=a").status == 404
    _, site = serve(clock, presence_path=None)
    assert Conn(site, b"/presence?channel=a").status == 404


# sse.join / sse.leave


def _events(broker: SSEBroker, clock: Clock, grace: float = 5.0) -> PresenceEvents:
    return PresenceEvents(broker, broker.presence_tracker, grace=grace, reactor=clock)


def _presence_events(conn: Conn) -> list[tuple[str, str]]:
    return [(e.type, e.data) for e in conn.events() if e.type in (JOIN, LEAVE)]


def test_first_stream_joins_and_last_one_leaves_after_the_grace_period(clock: Clock) -> None:
    """
    A user's first stream on a channel publishes sse.join with the channel's
    clients; a second stream of theirs does not; their last stream's end
    publishes sse.leave once the grace period has passed, not before.
    """
    broker, site = serve(clock, auth=auth())
    _events(broker, clock)
    watcher = open_as(site, clock, None)
    ada = open_as(site, clock, "ada")
    clock.advance(0)
    assert _presence_events(watcher) == [(JOIN, '{"user":"ada","clients":2}')]
    ada2 = open_as(site, clock, "ada")
    clock.advance(0)
    ada.drop()
    clock.advance(10)
    assert len(_presence_events(watcher)) == 1
    ada2.drop()
    clock.advance(4.9)
    assert len(_presence_events(watcher)) == 1
    clock.advance(0.2)
    assert _presence_events(watcher)[1:] == [(LEAVE, '{"user":"ada","clients":1}')]
    assert clock.getDelayedCalls() == []
    ids = [e.last_event_id for e in watcher.events() if e.type in (JOIN, LEAVE)]
    assert all(ids) and len(set(ids)) == 2  # published events: ids, so history and resume


def test_a_reconnect_within_the_grace_period_is_neither_leave_nor_join(clock: Clock) -> None:
    """A user whose stream ends and comes back within the grace period: no leave, no new join."""
    broker, site = serve(clock, auth=auth())
    events = _events(broker, clock, grace=5)
    watcher = open_as(site, clock, None)
    ada = open_as(site, clock, "ada")
    clock.advance(0)
    ada.drop()
    clock.advance(4)
    open_as(site, clock, "ada")
    clock.advance(0)
    clock.advance(60)
    assert [t for t, _ in _presence_events(watcher)] == [JOIN]
    assert events.pending == 0  # (the token expiry timer of the open stream remains)


def test_anonymous_and_all_channel_streams_neither_join_nor_leave(clock: Clock) -> None:
    """Streams without a user, and streams of every channel, publish no join or leave."""
    broker, site = serve(clock, auth=auth())
    _events(broker, clock, grace=0)
    watcher = open_as(site, clock, None)
    anon = open_as(site, clock, None)
    everything = open_as(site, clock, "cy", b"channel=")
    clock.advance(0)
    anon.drop()
    everything.drop()
    clock.advance(1)
    assert _presence_events(watcher) == []


def test_a_stream_gone_before_its_join_went_out_is_neither(clock: Clock) -> None:
    """A stream that opens and ends in one reactor turn publishes nothing."""
    broker, site = serve(clock, auth=auth())
    _events(broker, clock, grace=0)
    watcher = open_as(site, clock, None)
    open_as(site, clock, "ada").drop()
    clock.advance(1)
    assert _presence_events(watcher) == []
    assert clock.getDelayedCalls() == []


def test_nothing_is_published_once_the_broker_drains(clock: Clock) -> None:
    """Draining ends every stream: no leave for them; stop() cancels pending leaves."""
    broker, site = serve(clock, auth=auth())
    events = _events(broker, clock)
    open_as(site, clock, "ada")
    bob = open_as(site, clock, "bob")
    clock.advance(0)
    bob.drop()
    assert events.pending == 1
    published = broker.stats.published
    broker.drain(1)
    events.stop()
    clock.advance(10)
    assert broker.stats.published == published
    assert events.pending == 0


# twistd sse options


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--leave-grace", "2"], "--leave-grace needs --presence-events"),
        (["--presence-events", "--leave-grace", "-1"], "--leave-grace"),
        (["--presence-events", "--leave-grace", "soon"], "--leave-grace"),
        (["--presence-path", "/events"], "--presence-path"),
        (["--presence-path", "publish"], "must differ"),
    ],
)
def test_bad_presence_options_fail_in_one_line(argv: list[str], message: str) -> None:
    """A bad presence option is refused at parse time with a message that names it."""
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(argv)


def test_presence_options_build_the_service(clock: Clock) -> None:
    """--presence-events with --leave-grace wires the events to the broker; the path is served."""
    options = Options()
    options.parseOptions(["--presence-events", "--leave-grace", "0.25", "--presence-path", "who"])
    service = makeService(options)
    broker = service.broker  # type: ignore[attr-defined]
    [listener] = broker.presence_tracker.listeners
    events = listener.__self__
    assert isinstance(events, PresenceEvents) and events.grace == 0.25
    defaults = Options()
    defaults.parseOptions([])
    assert defaults["leave-grace"] == 5.0 and not defaults["presence-events"]
    assert defaults["presence-path"] == "/presence"


def test_presence_counts_pattern_streams_as_delivery_does(clock: Clock) -> None:
    """
    Pattern subscribers (one pattern, several, a pattern with channels) are
    counted in presence exactly where the index delivers: presence(c).clients
    equals client_count(c) for every channel.
    """
    from sse_twisted.app import make_resource

    from ..support.conn import Conn, make_site

    broker = SSEBroker(reactor=clock, heartbeat=0)
    site = make_site(make_resource(broker, demo=False), clock)
    for query in (
        b"pattern=orders/*",
        b"pattern=orders/*&pattern=news*",
        b"pattern=news*&channel=orders/1",
        b"channel=news",
        b"",
    ):
        Conn(site, b"/events?" + query)
    for channel in ("orders/1", "orders/2", "news", "newsroom", "other"):
        assert broker.presence(channel).clients == broker.client_count(channel), channel
    assert broker.presence("orders/1").clients == 4
