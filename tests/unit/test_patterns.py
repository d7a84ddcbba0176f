"""
Pattern subscriptions (C{?pattern=}, C{subscribe(patterns=)}) and envelopes
(C{?envelope=1}), over a real HTTPChannel on a StringTransport.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import pytest
from twisted.internet.task import Clock

from sse_twisted.access import Matching, literal_prefix, validate_pattern
from sse_twisted.auth import JWTAuth
from sse_twisted.event import Event, Item, envelope_frame
from sse_twisted.index import PatternIndex
from sse_twisted.limits import SubscriberLimits

from ..support.conn import Conn, serve

SECRET = "pattern-secret-for-tests-only-0123456789"


def token(*subscribe: str) -> bytes:
    claims = {"sse": {"subscribe": list(subscribe)}, "exp": int(time.time()) + 600}
    return jwt.encode(claims, SECRET, algorithm="HS256").encode()


def ids(conn: Conn) -> list[str]:
    return [e.last_event_id for e in conn.events() if not e.type.startswith("sse.")]


def envelopes(conn: Conn) -> list[dict[str, Any]]:
    out = []
    for e in conn.events():
        assert e.type == "message", e
        out.append(json.loads(e.data))
    return out


# Patterns


def test_pattern_receives_every_channel_it_matches(clock: Clock) -> None:
    """
    ?pattern=orders/* receives orders/1 and orders/2, not orders (no
    slash) nor invoices/1; ? and [...] match as fnmatchcase does (case too).
    """
    broker, site = serve(clock, stream_only=True)
    star = Conn(site, b"/events?pattern=orders/*")
    one = Conn(site, b"/events?pattern=orders/?")
    sets = Conn(site, b"/events?pattern=[ab]x")
    for channel in ("orders/1", "orders/22", "orders", "invoices/1", "ax", "bx", "cx", "AX"):
        broker.publish(channel, "e", channel)
    assert [e.data for e in star.events()] == ['"orders/1"', '"orders/22"']
    assert [e.data for e in one.events()] == ['"orders/1"']
    assert [e.data for e in sets.events()] == ['"ax"', '"bx"']


def test_pattern_combines_with_channels_and_counts(clock: Clock) -> None:
    """
    ?channel=news&pattern=orders/* receives both; client_count(channel)
    counts pattern subscribers of that channel (presence relies on it).
    """
    broker, site = serve(clock, stream_only=True)
    both = Conn(site, b"/events?channel=news&pattern=orders/*")
    Conn(site, b"/events?pattern=orders/*")
    Conn(site, b"/events?pattern=*")
    Conn(site, b"/events?channel=orders/1")
    for channel in ("news", "orders/1", "other"):
        broker.publish(channel, "e", channel)
    assert [e.data for e in both.events()] == ['"news"', '"orders/1"']
    assert broker.client_count("orders/1") == 4
    assert broker.client_count("news") == 2
    assert broker.client_count("other") == 1
    assert broker.publish("orders/9", "e", 1).id is not None
    assert broker.stats.delivered == 2 + 4 + 1 + 3


def test_subscriber_matched_twice_gets_one_copy(clock: Clock) -> None:
    """
    A subscriber whose two patterns, or a pattern and a channel, both match
    an event gets it once, while others on the same patterns still get it.
    """
    broker, site = serve(clock, stream_only=True)
    two = Conn(site, b"/events?pattern=a*&pattern=*b")
    mixed = Conn(site, b"/events?pattern=a*&channel=ab")
    single = Conn(site, b"/events?pattern=a*")
    ev = broker.publish("ab", "e", 1)
    for conn in (two, mixed, single):
        assert ids(conn) == [ev.id]
    assert broker.stats.delivered == 3
    assert broker.client_count("ab") == 3


def test_pattern_subscriber_leaves_the_index(clock: Clock) -> None:
    """A pattern subscriber that leaves is sent nothing more, and its pattern is forgotten."""
    broker, site = serve(clock, stream_only=True)
    conn = Conn(site, b"/events?pattern=a*&channel=z")
    other = Conn(site, b"/events?pattern=a*")
    broker.publish("a1", "e", 1)
    conn.drop()
    other.drop()
    assert broker.publish("a2", "e", 2) is not None
    assert broker.stats.delivered == 2
    assert broker.client_count("a2") == 0
    index = broker._index
    assert not index.patterns.users and not index.by_pattern and not index.mixed_by_pattern
    assert not index.mixed_by_channel


def test_glob_characters_in_channel_names(clock: Clock) -> None:
    """
    A channel name may hold *, ? and [: ?channel=a* is that one channel
    (literal); a pattern matches it as a name like any other, and [*]
    matches a literal star.
    """
    broker, site = serve(clock, stream_only=True)
    literal = Conn(site, b"/events?channel=a*")
    escaped = Conn(site, b"/events?pattern=a[*]")
    broker.publish("ab", "e", "ab")
    broker.publish("a*", "e", "star")
    assert [e.data for e in literal.events()] == ['"star"']
    assert [e.data for e in escaped.events()] == ['"star"']


@pytest.mark.parametrize(
    ("query", "error"),
    [
        (b"pattern=" + b"x" * 201, "pattern must be 1 to 200 characters long"),
        (b"pattern=a%01", "pattern must not contain control characters"),
        (b"pattern=%ff", "pattern must be UTF-8"),
        (b"envelope=yes", "envelope must be 1"),
    ],
)
def test_bad_pattern_or_envelope_is_400(clock: Clock, query: bytes, error: str) -> None:
    """A bad pattern or envelope value is a 400 with a JSON error saying what is wrong."""
    _, site = serve(clock)
    conn = Conn(site, b"/events?" + query)
    assert conn.status == 400
    assert error in conn.json()["error"]


def test_max_channels_counts_patterns(clock: Clock) -> None:
    """--max-channels bounds channels and patterns together: one more is a 400."""
    _, site = serve(clock, limits=SubscriberLimits(max_channels=2))
    assert Conn(site, b"/events?channel=a&pattern=b*").status == 200
    conn = Conn(site, b"/events?channel=a&pattern=b*&pattern=c*")
    assert conn.status == 400
    assert "at most 2 channels and patterns" in conn.json()["error"]


def test_subscribe_validates_patterns(clock: Clock) -> None:
    """subscribe(patterns=) refuses a bad pattern, and a bare str, before answering."""
    from twisted.web.test.requesthelper import DummyRequest

    broker, _ = serve(clock)
    with pytest.raises(ValueError, match="pattern must not contain control"):
        broker.subscribe(DummyRequest([b""]), patterns=["a\x01"])
    with pytest.raises(TypeError, match="not a str"):
        broker.subscribe(DummyRequest([b""]), patterns="a*")
    assert broker.client_count() == 0


def test_validate_pattern_and_prefix() -> None:
    """Patterns are checked as channel names are; the literal prefix stops at a glob character."""
    assert validate_pattern("orders/*") == "orders/*"
    with pytest.raises(ValueError, match="pattern must be 1 to 200"):
        validate_pattern("")
    assert literal_prefix("orders/*") == "orders/"
    assert literal_prefix("a?b") == "a"
    assert literal_prefix("[ab]") == ""
    assert literal_prefix("plain") == "plain"


def test_pattern_index_matches_and_forgets() -> None:
    """
    PatternIndex answers the distinct patterns matching a channel, and its
    cache is forgotten when a pattern comes or its last user goes.
    """
    index = PatternIndex()
    index.add("a*")
    index.add("a*")
    index.add("*b")
    assert sorted(index.match("ab")) == ["*b", "a*"]
    index.add("ab")
    assert sorted(index.match("ab")) == ["*b", "a*", "ab"]
    index.remove("a*")
    assert sorted(index.match("ab")) == ["*b", "a*", "ab"]
    index.remove("a*")
    assert sorted(index.match("ab")) == ["*b", "ab"]
    index.remove("*b")
    index.remove("ab")
    assert index.match("ab") == () and len(index) == 0


def test_pattern_index_cache_is_bounded() -> None:
    """The channel cache starts over when full: memory bounded whatever channels come."""
    index = PatternIndex()
    index.add("c*")
    for n in range(PatternIndex.CACHE_SIZE + 10):
        assert index.match(f"c{n}") == ("c*",)
    assert len(index._cache) <= PatternIndex.CACHE_SIZE


def test_matching_container() -> None:
    """Matching answers `in` for its channels, and for pattern matches that `allowed` lets in."""
    m = Matching(frozenset({"priv-x"}), frozenset({"p*"}), frozenset({"pub"}))
    assert "priv-x" in m  # named outright: authorised by the subscriber
    assert "pub" in m
    assert "priv-y" not in m  # matched, but not allowed
    assert "other" not in m
    assert 3 not in m


# Resume and replay


def test_pattern_subscriber_resumes_and_replays(clock: Clock) -> None:
    """
    Last-Event-ID and ?replay= work for a pattern subscriber as for a channel
    subscriber: only what its patterns match, in order; the Last-Event-ID
    response header names the newest matching event.
    """
    broker, site = serve(clock, stream_only=True)
    a1 = broker.publish("a1", "e", 1)
    broker.publish("b1", "e", 2)
    a2 = broker.publish("a2", "e", 3)
    b2 = broker.publish("b2", "e", 4)
    resumed = Conn(site, b"/events?pattern=a*", headers={b"last-event-id": a1.id.encode()})
    assert ids(resumed) == [a2.id]
    replayed = Conn(site, b"/events?pattern=a*&replay=all")
    assert ids(replayed) == [a1.id, a2.id]
    assert replayed.header(b"last-event-id") == a2.id.encode()
    mixed = Conn(site, b"/events?pattern=a*&channel=b2&replay=2")
    assert ids(mixed) == [a2.id, b2.id]


# Private channels


def private_site(clock: Clock) -> Any:
    auth = JWTAuth(secret=SECRET, private=["priv*"])
    return serve(clock, auth=auth)


def test_pattern_never_widens_the_token(clock: Clock) -> None:
    """
    ?pattern=* without a token gets no private event, live, on resume or on
    replay; with a token granting priv-a it gets priv-a and not priv-b; a
    private channel named outright still needs the grant (401 / 403).
    """
    broker, site = private_site(clock)
    anon = Conn(site, b"/events?pattern=*")
    granted = Conn(site, b"/events?pattern=p*&token=" + token("priv-a"))
    mixed = Conn(site, b"/events?pattern=priv*&pattern=*-a&token=" + token("priv-a"))
    first = broker.publish("pub", "e", 0)
    events = [broker.publish(c, "e", c) for c in ("priv-a", "priv-b", "pub")]
    assert ids(anon) == [first.id, events[2].id]
    assert ids(granted) == [first.id, events[0].id, events[2].id]
    assert ids(mixed) == [events[0].id]
    assert broker.client_count("priv-b") == 0
    assert broker.client_count("priv-a") == 2
    resumed = Conn(site, b"/events?pattern=*&lastEventId=" + first.id.encode())
    assert ids(resumed) == [events[2].id]
    replayed = Conn(site, b"/events?pattern=priv*&replay=all")
    assert ids(replayed) == []
    assert replayed.header(b"last-event-id") is None
    withchannel = Conn(site, b"/events?pattern=p*&channel=news&lastEventId=" + first.id.encode())
    assert ids(withchannel) == [events[2].id]
    assert Conn(site, b"/events?pattern=p*&channel=priv-b").status == 401
    refused = Conn(site, b"/events?pattern=p*&channel=priv-b&token=" + token("priv-a"))
    assert refused.status == 403


# Envelopes


def test_envelope_names_channel_event_and_id(clock: Clock) -> None:
    """
    ?envelope=1: every event is a plain message whose data is the envelope
    (channel, event, id, data; text for a text event); the id line stays,
    and so does retry.
    """
    broker, site = serve(clock, stream_only=True)
    conn = Conn(site, b"/events?pattern=*&envelope=1")
    plain = Conn(site, b"/events")
    conn.clear()
    story = broker.publish("news", "story", {"title": "é"})
    broker.publish("news", None, [1])
    broker.publish_text("log", "line", "a\nb", retry=500)
    broker.publish_text("log", None, '{"looks": "like json"}')
    assert [(e.type, e.last_event_id) for e in conn.events()] == [
        ("message", "t-1"),
        ("message", "t-2"),
        ("message", "t-3"),
        ("message", "t-4"),
    ]
    assert envelopes(conn) == [
        {"channel": "news", "event": "story", "id": "t-1", "data": {"title": "é"}},
        {"channel": "news", "event": None, "id": "t-2", "data": [1]},
        {"channel": "log", "event": "line", "id": "t-3", "text": "a\nb"},
        {"channel": "log", "event": None, "id": "t-4", "text": '{"looks": "like json"}'},
    ]
    assert b"retry: 500\n" in conn.stream()
    assert plain.events()[0].type == "story"  # the others get the frame as published
    assert story.envelope is story.envelope  # framed once, kept with the event


def test_envelope_framed_only_when_asked(clock: Clock) -> None:
    """No envelope subscriber, no envelope framed; one per event however many ask."""
    broker, site = serve(clock, stream_only=True)
    Conn(site, b"/events")
    ev = broker.publish("a", "e", 1)
    assert ev._envelope is None
    for _ in range(3):
        Conn(site, b"/events?envelope=1")
    ev2 = broker.publish("a", "e", 2)
    assert ev2._envelope is not None


def test_envelope_replays_and_resumes(clock: Clock) -> None:
    """History replays (resume, ?replay=) are envelopes too, with their ids."""
    broker, site = serve(clock, stream_only=True)
    first = broker.publish("a", "e", 1)
    broker.publish("b", "f", 2)
    resumed = Conn(site, b"/events?envelope=1&lastEventId=" + first.id.encode())
    replayed = Conn(site, b"/events?envelope=1&replay=1")
    for conn in (resumed, replayed):
        assert envelopes(conn) == [{"channel": "b", "event": "f", "id": "t-2", "data": 2}]
        assert conn.events()[0].last_event_id == "t-2"


def test_envelope_notices(clock: Clock) -> None:
    """
    sse.reset and sse.dropped reach an envelope subscriber as envelopes with
    channel null, the notice's name as event, and no id (the client's last
    event id stays).
    """
    broker, site = serve(clock, stream_only=True, queue_size=1)
    reset = Conn(site, b"/events?envelope=1&lastEventId=gone")
    assert envelopes(reset) == [
        {
            "channel": None,
            "event": "sse.reset",
            "id": None,
            "data": {"lastEventId": "gone", "reason": "unknown-id"},
        }
    ]
    slow = Conn(site, b"/events?envelope=1")
    slow.clear()
    slow.pause()
    for n in range(3):
        broker.publish("a", "e", n)
    slow.resume()
    got = envelopes(slow)
    assert got[0]["id"] == "t-1"
    assert got[1] == {"channel": None, "event": "sse.dropped", "id": None, "data": {"dropped": 2}}
    assert all(e.last_event_id in ("t-1", "") for e in slow.events()[:1])


def test_envelope_of_events_read_back_from_storage() -> None:
    """
    An event whose kind was not kept (read back from SQLite) is enveloped as
    data when its payload is JSON, as text otherwise; a relay entry keeps it.
    """
    from sse_twisted.redis.entries import entry_event, item_fields

    stored = Event("c", None, "1", None, b'id: 1\ndata: {"a": 1}\n\n')
    assert json.loads(stored.envelope.split(b"data: ")[1]) == {
        "channel": "c",
        "event": None,
        "id": "1",
        "data": {"a": 1},
    }
    text = Event("c", None, "2", None, b"id: 2\ndata: <b>hi</b>\n\n")
    assert b'"text":"<b>hi</b>"' in text.envelope
    item = Item.create("c", text="[1]")
    relayed = entry_event("5-0", item_fields(item))
    assert b'"text":"[1]"' in relayed.envelope
    data = entry_event("6-0", item_fields(Item.create("c", data=[1])))
    assert b'"data":[1]' in data.envelope
    assert envelope_frame(None, "x", None, None, "{}", False) == (
        b'data: {"channel":null,"event":"x","id":null,"data":{}}\n\n'
    )
