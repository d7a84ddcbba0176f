"""
Clients that read like TCP peers, and the oracle that judges what they got.

Used by the model of the stream (L{tests.unit.test_model}) and its example
tests. Three pieces:

  - L{Pipe}: a C{StringTransport} whose bytes are "in flight" until the
    client reads them. Like a TCP send buffer it pauses its producer (the
    C{HTTPChannel}, which pauses the request's producer, the subscriber) once
    C{mark} bytes wait unread, and resumes it when the client has read below
    the mark. C{loseConnection} is a clean close the client sees as EOF once
    it has read everything; C{abortConnection} is an abort the client sees at
    once, losing what it had not read. Every write is stamped with the
    broker's C{published} count at that moment, so the oracle knows what the
    server had published when it wrote each byte.
  - L{Session}: one EventSource: a channel filter, the project's parser
    (whose last event id survives reconnects) and its connections, each a
    real C{HTTPChannel} of a real C{Site}.
  - L{check_session}: the contract, checked on what the client has read.
"""

from __future__ import annotations

import json
from bisect import bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from io import BytesIO
from typing import Any
from urllib.parse import quote

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.server import Site

from sse_twisted import SSEBroker
from sse_twisted.event import Event
from sse_twisted.parser import EventStreamParser
from sse_twisted.subscriber import Subscriber

from .chunks import chunks

DROPPED = "sse.dropped"
RESET = "sse.reset"


class ContractViolation(AssertionError):
    """What a client received breaks the delivery contract."""


@dataclass
class Ledger:
    """Every event that publishing returned, in publish (dispatch) order."""

    ids: list[str] = field(default_factory=list)
    channels: list[str] = field(default_factory=list)
    datas: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)

    def record(self, events: Iterable[Event]) -> None:
        for ev in events:
            assert ev.id is not None and ev.id not in self.index, ev.id
            self.index[ev.id] = len(self.ids)
            self.ids.append(ev.id)
            self.channels.append(ev.channel)
            # A parser joins data lines with LF, whatever line ends they had.
            self.datas.append(ev.data.replace("\r\n", "\n").replace("\r", "\n"))

    def __len__(self) -> int:
        return len(self.ids)


class Pipe(StringTransport):
    """A transport with TCP's flow control and both ways of closing (see module)."""

    def __init__(self, mark: int, stamp: Callable[[], int]) -> None:
        super().__init__(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000), lenient=True)
        self.mark = mark
        self.stamp = stamp
        #: Bytes the client has read (moved to its receive buffer).
        self.read_pos = 0
        #: (offset, broker.stats.published) of every write, in order.
        self.writes: list[tuple[int, int]] = []
        #: Whether we paused our producer (the HTTPChannel).
        self.throttled = False
        self.aborted = False
        #: connectionLost was delivered to the protocol.
        self.lost = False
        #: Most bytes ever waiting unread.
        self.peak = 0

    @property
    def size(self) -> int:
        return self.io.tell()

    @property
    def unread(self) -> int:
        return self.size - self.read_pos

    def write(self, data: bytes) -> None:
        if self.aborted or self.lost:
            return  # a dead socket takes nothing
        if not data:
            return
        self.writes.append((self.size, self.stamp()))
        super().write(data)
        self.peak = max(self.peak, self.unread)
        # Like twisted.internet.abstract.FileDescriptor: on every write while
        # full, not only the first (a producer that unpaused itself is paused
        # again).
        if self.unread >= self.mark and self.producer is not None:
            self.throttled = True
            self.producer.pauseProducing()

    def writeSequence(self, seq: Iterable[bytes]) -> None:
        self.write(b"".join(seq))

    def unregisterProducer(self) -> None:
        super().unregisterProducer()
        self.throttled = False

    def abortConnection(self) -> None:
        """The server resets the connection: unread bytes are lost."""
        if not self.aborted:
            self.aborted = True
            kept = self.io.getvalue()[: self.read_pos]
            self.io = BytesIO()
            self.io.write(kept)
            self.writes = [w for w in self.writes if w[0] < self.read_pos]
        super().abortConnection()

    def read(self, n: int | None = None) -> None:
        """The client reads C{n} bytes (all if None); resumes the producer below the mark."""
        if self.aborted:
            return
        self.read_pos = self.size if n is None else min(self.size, self.read_pos + n)
        if self.throttled and self.unread < self.mark and self.producer is not None:
            self.throttled = False
            self.producer.resumeProducing()

    def received(self) -> bytes:
        return self.io.getvalue()[: self.read_pos]

    def stamp_at(self, offset: int) -> int:
        """broker.stats.published when the byte at C{offset} was written."""
        i = bisect_right([w[0] for w in self.writes], offset) - 1
        return self.writes[i][1]

    @property
    def eof(self) -> bool:
        """The client saw the connection end: a clean close read to the end, or an abort."""
        return self.aborted or (self.disconnecting and self.unread == 0) or self.lost


@dataclass
class Item:
    """One thing a client received: an event, or a signal."""

    kind: str  # "event", DROPPED or RESET
    stamp: int
    pidx: int = -1
    count: int = 0
    type: str = ""
    data: str = ""


class Connection:
    """One HTTP/1.1 request for the stream on a real HTTPChannel."""

    def __init__(
        self,
        site: Site,
        broker: SSEBroker,
        channels: frozenset[str] | None,
        last_id: str,
        mark: int,
        query: str = "",
        replay: str = "",
        patterns: frozenset[str] | None = None,
    ) -> None:
        self.broker = broker
        self.last_id = last_id
        #: broker.stats.published when the client connected.
        self.start = broker.stats.published
        self.transport = Pipe(mark, lambda: broker.stats.published)
        self.channel = site.buildProtocol(None)
        self.transport.protocol = self.channel  # type: ignore[attr-defined]
        self.channel.makeConnection(self.transport)
        query = "&".join(
            [f"channel={c}" for c in sorted(channels or ())]
            + [f"pattern={quote(p)}" for p in sorted(patterns or ())]
            + ([query] if query else [])
            + ([f"replay={replay}"] if replay else [])
        )
        lines = [b"GET /events%s HTTP/1.1" % (b"?" + query.encode() if query else b""), b"Host: t"]
        if last_id:
            lines.append(b"Last-Event-ID: " + last_id.encode())
        self.left = False
        # Whether the history held the id when the client came back: if not,
        # only what was published before this moment may be lost.
        history = broker.history
        self.resume_known = bool(
            last_id and history is not None and history.since(last_id, None, 1) is not None
        )
        #: With ?replay= and no Last-Event-ID: the id of the first event owed,
        #: the oldest of the newest N the history holds on its channels now.
        self.replay_first: str | None = None
        if replay and not last_id and history is not None:
            held = [e.id for e in history if matches(channels, patterns, e.channel)]  # type: ignore[attr-defined]
            if replay != "all":
                held = held[len(held) - min(int(replay), len(held)) :]
            self.replay_first = held[0] if held else None
        self.channel.dataReceived(b"\r\n".join(lines) + b"\r\n\r\n")
        #: The stream's producer, found read-only through the channel.
        http = getattr(self.channel, "_channel", self.channel)  # Site wraps its HTTPChannel
        self.subscriber: Subscriber | None = getattr(http, "_requestProducer", None)

    def leave(self) -> None:
        """The client closes its socket: the server sees a clean connectionLost."""
        if not self.transport.lost:
            self.left = True
            self.transport.lost = True
            self.transport.connected = False
            self.channel.connectionLost(Failure(ConnectionDone()))

    def settle(self) -> bool:
        """Deliver what the network would now: an abort, or EOF of a clean close."""
        tr = self.transport
        if tr.lost:
            return False
        if tr.aborted:
            tr.lost = True
            tr.connected = False
            self.channel.connectionLost(Failure(ConnectionLost()))
            return True
        if tr.disconnecting and tr.unread == 0:
            tr.lost = True
            tr.connected = False
            self.channel.connectionLost(Failure(ConnectionDone()))
            return True
        return False

    @property
    def finished_for_client(self) -> bool:
        """EventSource would now reconnect (or has gone)."""
        return self.left or self.transport.eof

    def parse(self, parser: EventStreamParser, ledger: Ledger) -> tuple[list[Item], int | None]:
        """
        What the client read, as items; and, if it read the terminating
        chunk, broker.stats.published when that chunk was written.
        """
        raw = self.transport.received()
        head_end = raw.find(b"\r\n\r\n")
        if head_end < 0:
            return [], None
        head = raw[:head_end]
        status = head.split(b" ", 2)[1]
        if status != b"200" or b"text/event-stream" not in head.lower():
            raise ContractViolation(f"stream answered {head!r}")
        items: list[Item] = []
        for chunk in chunks(raw, head_end + 4):
            stamp = self.transport.stamp_at(chunk.start)
            if not chunk.data:
                return items, stamp
            for ev in parser.feed(chunk.data):
                if ev.type == DROPPED:
                    items.append(Item(DROPPED, stamp, count=json.loads(ev.data)["dropped"]))
                elif ev.type == RESET:
                    items.append(Item(RESET, stamp))
                else:
                    if ev.last_event_id not in ledger.index:
                        raise ContractViolation(f"event with unknown id {ev.last_event_id!r}")
                    items.append(
                        Item(
                            "event",
                            stamp,
                            pidx=ledger.index[ev.last_event_id],
                            type=ev.type,
                            data=ev.data,
                        )
                    )
        return items, None


def matches(channels: frozenset[str] | None, patterns: frozenset[str] | None, channel: str) -> bool:
    """Whether a subscription of C{channels} and C{patterns} receives C{channel}."""
    if patterns:
        return (channels is not None and channel in channels) or any(
            fnmatchcase(channel, p) for p in patterns
        )
    return channels is None or channel in channels


@dataclass
class Session:
    """One EventSource: its channels and patterns, its parser, and its connections in order."""

    name: str
    channels: frozenset[str] | None
    connections: list[Connection] = field(default_factory=list)
    #: The Last-Event-ID of its first connection (a page that carried one over).
    origin: str = ""
    #: Its URL's ?replay= (EventSource keeps the URL on every reconnect).
    replay: str = ""
    #: Its URL's ?pattern= (with no channel: only what they match).
    patterns: frozenset[str] | None = None

    def matches(self, channel: str) -> bool:
        return matches(self.channels, self.patterns, channel)

    @property
    def current(self) -> Connection:
        return self.connections[-1]

    def connect(
        self, site: Site, broker: SSEBroker, mark: int, ledger: Ledger, query: str = ""
    ) -> Connection:
        """Open a connection, resuming with the last id seen (as EventSource does)."""
        last = self.last_seen(ledger)
        conn = Connection(
            site, broker, self.channels, last, mark, query, self.replay, self.patterns
        )
        self.connections.append(conn)
        return conn

    def transcript(self, ledger: Ledger) -> list[str]:
        """
        What the client read, in words: event ids, C{dropped:N}, C{reset},
        and how each connection ended (C{END} a clean end, C{ABORT}, C{LEFT},
        C{EOF} a close without the terminating chunk).
        """
        parser = EventStreamParser(last_event_id=self.origin)
        out: list[str] = []
        for conn in self.connections:
            parser.reset()
            items, end = conn.parse(parser, ledger)
            for it in items:
                if it.kind == DROPPED:
                    out.append(f"dropped:{it.count}")
                elif it.kind == RESET:
                    out.append("reset")
                else:
                    out.append(ledger.ids[it.pidx])
            if end is not None:
                out.append("END")
            elif conn.left:
                out.append("LEFT")
            elif conn.transport.aborted:
                out.append("ABORT")
            elif conn.transport.eof:
                out.append("EOF")
        return out

    def last_seen(self, ledger: Ledger) -> str:
        parser = EventStreamParser(last_event_id=self.origin)
        for conn in self.connections:
            parser.reset()
            conn.parse(parser, ledger)
        return parser.last_event_id


def _describe(ledger: Ledger, pidxs: Iterable[int]) -> str:
    return ", ".join(f"{ledger.ids[q]}@{ledger.channels[q]}" for q in pidxs)


def check_session(
    session: Session, ledger: Ledger, published: int, tolerate: frozenset[str] = frozenset()
) -> None:
    """
    Check the contract on everything the client of C{session} has read.

    Walks its connections in order. Each received event must come after the
    previous one in publish order (no duplicate, none out of order, across
    reconnects), match the session's channels and carry its data. Any
    matching event owed before it and missing must be signalled at that
    place: by an C{sse.reset} written after it was published, or by
    C{sse.dropped} notices whose counts add up to exactly the number
    missing. A connection owes the events published while it is open, and
    when it resumed with Last-Event-ID, every event after that id, and
    with C{?replay=N} (no Last-Event-ID), the newest N its history held on
    its channels when it connected too. A clean
    end (the terminating chunk) is checked the same way against the events
    published before it was written; so, when the stream is idle (all read,
    not paused, still open), is the tail against all published so far.

    C{tolerate} names known bugs to let pass while they are being fixed:
    C{"late-dropped"} accepts an sse.dropped notice that arrives after
    later events instead of at the gap (it must still come before a clean
    end or an idle stream); C{"late-reset"} accepts a resume with an id the
    history had already lost that skips live events published after the
    client connected (as long as it says sse.reset).
    """
    late = "late-dropped" in tolerate
    lazy = "late-reset" in tolerate
    parser = EventStreamParser(last_event_id=session.origin)
    prev: int | None = None
    name = session.name
    for n, conn in enumerate(session.connections):
        where = f"{name} connection {n}"
        parser.reset()
        items, end = conn.parse(parser, ledger)
        if conn.subscriber is None:
            # Turned away (draining): told to come back later, never subscribed.
            if any(item.kind == "event" for item in items):
                raise ContractViolation(f"{where}: events on a turned-away stream")
            continue
        if conn.last_id and conn.last_id not in ledger.index:
            pos = conn.start - 1  # an id the broker never gave: everything live is owed
        elif conn.last_id:
            pos = ledger.index[conn.last_id]
            if n == 0:
                prev = pos
            elif pos != prev:
                raise ContractViolation(f"{where}: resumed from {conn.last_id}, not the last seen")
        elif conn.replay_first is not None:
            pos = ledger.index[conn.replay_first] - 1  # ?replay=: owed from its first
        else:
            pos = conn.start - 1
        start = pos
        reset: int | None = None
        dropped = owed = 0
        for item in items:
            if item.kind == RESET:
                reset, dropped, owed = item.stamp, 0, 0
                if conn.last_id and not conn.resume_known and pos == start and not lazy:
                    # The id was unknown when the client came back: only what
                    # was published before then may be lost.
                    reset = min(reset, conn.start)
            elif item.kind == DROPPED:
                dropped += item.count
            else:
                p = item.pidx
                if prev is not None and p <= prev:
                    raise ContractViolation(
                        f"{where}: {ledger.ids[p]} received after {ledger.ids[prev]}: "
                        "duplicate or out of order"
                    )
                if not session.matches(ledger.channels[p]):
                    raise ContractViolation(f"{where}: {ledger.ids[p]} is not on its channels")
                if item.data != ledger.datas[p]:
                    raise ContractViolation(f"{where}: {ledger.ids[p]} data {item.data!r}")
                owed = _gap(
                    session,
                    ledger,
                    pos,
                    p,
                    reset,
                    dropped,
                    owed,
                    late,
                    f"{where}: before {ledger.ids[p]}",
                )
                prev = pos = p
                reset, dropped = None, 0
        if end is not None:
            _gap(session, ledger, pos, end, reset, dropped, owed, False, f"{where}: clean end")
        elif is_idle(conn):
            _gap(session, ledger, pos, published, reset, dropped, owed, False, f"{where}: idle")


def _gap(
    session: Session,
    ledger: Ledger,
    after: int,
    upto: int,
    reset: int | None,
    dropped: int,
    owed: int,
    late: bool,
    where: str,
) -> int:
    """
    The matching events published after index C{after} and before C{upto}
    that are missing must be those an sse.reset (written when C{reset}
    events had been published) gave up on, plus exactly C{dropped} more
    (plus C{owed} from earlier gaps, when a C{late} notice is tolerated).

    @return: the drops still unsignalled (only ever non-zero when C{late}).
    """
    missing = [
        q
        for q in range(after + 1, upto)
        if session.matches(ledger.channels[q]) and (reset is None or q >= reset)
    ]
    total = owed + len(missing)
    if late and dropped < total:
        return total - dropped
    if total != dropped:
        raise ContractViolation(
            f"{where}: {len(missing)} matching events missing "
            f"[{_describe(ledger, missing)}] but told sse.dropped {dropped}"
            + (f" ({owed} owed from earlier gaps)" if owed else "")
            + (
                f" (after an sse.reset written at publish count {reset})"
                if reset is not None
                else ""
            )
        )
    return 0


def is_idle(conn: Connection) -> bool:
    """
    Everything written is read, the stream is open and flowing, and the
    outbox holds nothing for it (a fan-out's later slices): nothing may be owed.
    """
    tr = conn.transport
    return (
        not tr.lost
        and not tr.disconnecting
        and not tr.throttled
        and tr.unread == 0
        and conn.subscriber is not None
        and not conn.subscriber.held
    )


def subscribers_of(broker: SSEBroker) -> set[Subscriber]:
    """The broker's open subscribers (read-only look at its internals)."""
    subs: set[Subscriber] = broker._subscribers
    return subs


def frame_size(ev: Any) -> int:
    """Bytes of one event's HTTP/1.1 chunk."""
    return len(b"%x\r\n%s\r\n" % (len(ev.frame), ev.frame))
