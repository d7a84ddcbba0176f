"""
No subscriber ever receives an event on a channel it may not read, by any
path an event takes: live dispatch, a resume with C{Last-Event-ID}, a
C{?replay=} on first connect, a catch-up from the history after its queue
overflowed, and a relay's deliveries; nor is it told the id of such an event
in its response's C{Last-Event-ID} header.

A hypothesis state machine draws private patterns, tokens with random
grants, subscriptions (some channels, or every channel, or patterns with or
without channels; as published or as envelopes) and interleavings of
publishes, resumes from any id (private ones too), replays, stalls and
reads, then checks every byte (and header) each client received. Set C{SSE_MODEL_EXAMPLES} to search
longer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Sequence
from fnmatch import fnmatchcase

import jwt
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.app import make_resource
from sse_twisted.auth import JWTAuth
from sse_twisted.event import Event, Item
from sse_twisted.history import MemoryHistory
from sse_twisted.parser import EventStreamParser

from ..support.chunks import dechunk
from ..support.conn import Conn, FillingTransport, make_site

SECRET = "s3cret-for-tests-only-0123456789abcdef"
CHANNELS = ["pub", "news", "priv-a", "priv-b", "team-x"]
PRIVATE_SETS = [("priv*",), ("priv-a", "team-?"), ("*-b", "team*"), ("[pt]*",)]
GRANTS = ["priv*", "priv-a", "priv-b", "team-x", "*", "news"]
#: What pattern subscribers ask for: private channels among what they match.
PATTERNS = ["p*", "priv-?", "*", "t*", "[np]*", "*-b", "news"]
EXAMPLES = int(os.environ.get("SSE_MODEL_EXAMPLES", "0"))


class InlineRelay:
    """One node's relay: stores each item and hands it straight back as an event."""

    def __init__(self, history: int) -> None:
        self.ready = True
        self.history = MemoryHistory(history)
        self.on_event: Callable[[Event], object] | None = None
        self.on_gap: Callable[[str, str], object] | None = None
        self.count = 0

    def start(self) -> None:
        pass

    def stop(self) -> Deferred[None]:
        return succeed(None)

    def publish(self, items: Sequence[Item]) -> Deferred[list[str]]:
        assert self.on_event is not None
        ids = []
        for item in items:
            self.count += 1
            stream_id = f"{1000 + self.count}-0"
            self.on_event(item.framed(stream_id))
            ids.append(stream_id)
        return succeed(ids)


class Client:
    def __init__(
        self,
        conn: Conn,
        channels: frozenset[str] | None,
        grant: tuple[str, ...],
        patterns: frozenset[str] | None = None,
        envelope: bool = False,
    ):
        self.conn = conn
        self.channels = channels
        self.grant = grant
        self.patterns = patterns
        self.envelope = envelope

    def received(self) -> list[str]:
        """The channel of each event received (each event's data is its channel)."""
        body = dechunk(self.conn.head_and_body()[1])[0]
        events = EventStreamParser().feed(body)
        if not self.envelope:
            return [json.loads(e.data) for e in events if not e.type.startswith("sse.")]
        out = []
        for e in events:
            assert e.type == "message", e.type
            envelope = json.loads(e.data)
            if envelope["channel"] is None:
                assert envelope["event"].startswith("sse."), envelope
                continue
            assert envelope["data"] == envelope["channel"], envelope
            out.append(envelope["channel"])
        return out


class AccessModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.clients: list[Client] = []
        self.ids: list[str] = []
        self.channel_of: dict[str, str] = {}

    @initialize(
        private=st.sampled_from(PRIVATE_SETS),
        queue_size=st.integers(1, 3),
        relayed=st.booleans(),
        history=st.integers(2, 12),
    )
    def setup(self, private: tuple[str, ...], queue_size: int, relayed: bool, history: int) -> None:
        self.clock = Clock()
        self.clock.advance(time.time())
        self.private = private
        self.relay = InlineRelay(history) if relayed else None
        self.broker = SSEBroker(
            reactor=self.clock,
            heartbeat=0,
            queue_size=queue_size,
            overflow="catchup",
            history=history,
            relay=self.relay,
        )
        self.auth = JWTAuth(secret=SECRET, private=private)
        self.site = make_site(make_resource(self.broker, demo=False, auth=self.auth), self.clock)

    def may_read(self, client: Client, channel: str) -> bool:
        granted = not any(fnmatchcase(channel, p) for p in self.private) or any(
            fnmatchcase(channel, g) for g in client.grant
        )
        if client.channels is not None and channel in client.channels:
            return granted  # named outright: refused at subscribe time unless granted
        if client.patterns is not None:
            return granted and any(fnmatchcase(channel, p) for p in client.patterns)
        return client.channels is None and granted

    @rule(
        channels=st.none() | st.frozensets(st.sampled_from(CHANNELS), min_size=1, max_size=3),
        grant=st.none() | st.lists(st.sampled_from(GRANTS), max_size=3).map(tuple),
        resume=st.none() | st.integers(0, 1000),
        limit=st.sampled_from([60, 200, 100_000]),
        replay=st.none() | st.sampled_from(["1", "3", "all"]),
        patterns=st.none() | st.frozensets(st.sampled_from(PATTERNS), min_size=1, max_size=3),
        envelope=st.booleans(),
    )
    def subscribe(
        self,
        channels: frozenset[str] | None,
        grant: tuple[str, ...] | None,
        resume: int | None,
        limit: int,
        replay: str | None,
        patterns: frozenset[str] | None,
        envelope: bool,
    ) -> None:
        query = [b"channel=" + c.encode() for c in sorted(channels or ())]
        query += [b"pattern=" + p.encode() for p in sorted(patterns or ())]
        if envelope:
            query.append(b"envelope=1")
        if grant is not None:
            claims = {"sse": {"subscribe": list(grant)}, "exp": int(self.clock.seconds()) + 3600}
            query.append(b"token=" + jwt.encode(claims, SECRET, algorithm="HS256").encode())
        if resume is not None and self.ids:
            query.append(b"lastEventId=" + self.ids[resume % len(self.ids)].encode())
        if replay is not None:
            query.append(b"replay=" + replay.encode())
        path = b"/events" + (b"?" + b"&".join(query) if query else b"")
        conn = Conn(self.site, path, limit=limit)
        if conn.status == 200:
            client = Client(conn, channels, grant or (), patterns, envelope)
            cursor = conn.header(b"last-event-id")
            if cursor is not None:
                channel = self.channel_of[cursor.decode()]
                assert self.may_read(client, channel), (
                    f"the Last-Event-ID header names an event on {channel!r} to a client of"
                    f" {channels} {patterns} with grant {client.grant} (private: {self.private})"
                )
            self.clients.append(client)
        else:
            assert conn.status in (401, 403), conn.status

    @rule(channel=st.sampled_from(CHANNELS), count=st.integers(1, 4))
    def publish(self, channel: str, count: int) -> None:
        for _ in range(count):
            result = self.broker.publish(channel, "e", channel)
            if isinstance(result, Deferred):
                events: list[Event] = []
                result.addCallback(events.append)
                (event,) = events
            else:
                event = result
            assert event.id is not None
            self.ids.append(event.id)
            self.channel_of[event.id] = channel

    @precondition(lambda self: self.clients)
    @rule(which=st.integers(0, 1000))
    def read(self, which: int) -> None:
        transport = self.clients[which % len(self.clients)].conn.transport
        assert isinstance(transport, FillingTransport)
        transport.read()

    @invariant()
    def nobody_reads_what_they_may_not(self) -> None:
        for client in self.clients:
            for channel in client.received():
                assert self.may_read(client, channel), (
                    f"{channel!r} reached a client of {client.channels} {client.patterns}"
                    f" with grant {client.grant} (private: {self.private})"
                )


AccessModel.TestCase.settings = settings(
    max_examples=EXAMPLES or 60, stateful_step_count=30, deadline=None
)
test_access_model = AccessModel.TestCase
