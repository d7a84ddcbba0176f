"""
RedisBus without a Redis server (refusing or silent endpoints, on a Clock):
retry timing, outage logging and counting, stop, the mirror, the batch
bound, metrics, URLs.
"""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client import generate_latest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from zope.interface import implementer

from sse_twisted.broker import SSEBroker
from sse_twisted.event import Event, Item
from sse_twisted.metrics import metrics_registry
from sse_twisted.redis import (
    BatchTooLarge,
    RedisAddress,
    RedisBus,
    RedisUnavailable,
    StreamHistory,
    parse_redis_url,
    stream_id_key,
)


@implementer(IStreamClientEndpoint)
class RefusingEndpoint:
    """Every connection attempt is refused at once."""

    def __init__(self) -> None:
        self.attempts = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        return fail(ConnectionRefusedError("connection refused"))


@implementer(IStreamClientEndpoint)
class SilentEndpoint:
    """Connection attempts that never complete (a black-holed address)."""

    def __init__(self) -> None:
        self.pending: list[Deferred[Any]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.pending.append(d)
        return d


def next_delay(clock: Clock) -> float:
    (call,) = clock.getDelayedCalls()
    return float(call.getTime() - clock.seconds())


def test_backoff_grows_and_is_capped(redis_log: list[dict[str, Any]]) -> None:
    """
    Retries start fast, double, and never wait longer than max_backoff, for as
    long as Redis stays away; the outage is logged once, not per retry.
    """
    clock = Clock()
    endpoint = RefusingEndpoint()
    bus = RedisBus("redis://redis.example:6379/0", reactor=clock, endpoint=endpoint, max_backoff=2)
    bus.start()
    delays = []
    for _ in range(40):
        delay = next_delay(clock)
        delays.append(delay)
        clock.advance(delay)
    assert endpoint.attempts == bus.connect_attempts == 41
    assert delays[0] <= bus.initial_backoff
    assert all(0 < d <= 2 for d in delays)
    assert all(d > 1 for d in delays[-20:])  # at the cap (jitter keeps it in (cap/2, cap])
    assert not bus.ready
    warned = [e for e in redis_log if e["log_level"] >= LogLevel.warn]
    assert len(warned) == 1
    assert "unreachable" in warned[0]["log_format"]
    assert "ConnectionRefusedError" in warned[0]["reason"]
    d = bus.stop()
    assert d.called
    assert clock.getDelayedCalls() == []


def test_publish_fails_while_not_connected() -> None:
    """With Redis away, publish errbacks at once: never a silent drop or a false success."""
    clock = Clock()
    bus = RedisBus("redis://h", reactor=clock, endpoint=RefusingEndpoint())
    bus.start()
    errors: list[Any] = []
    bus.publish([Item.create("c", text="1")]).addErrback(errors.append)
    assert len(errors) == 1
    assert errors[0].check(RedisUnavailable)
    assert "nothing was stored" in str(errors[0].value)
    bus.stop()


def test_connect_timeout_then_retry() -> None:
    """A connection attempt that hangs is given up after command_timeout and retried."""
    clock = Clock()
    endpoint = SilentEndpoint()
    bus = RedisBus("redis://h", reactor=clock, endpoint=endpoint, command_timeout=3)
    bus.start()
    assert len(endpoint.pending) == 1
    clock.advance(3)
    assert endpoint.pending[0].called  # cancelled by the timeout
    clock.advance(next_delay(clock))
    assert len(endpoint.pending) == 2
    assert bus.connect_attempts == 2


@pytest.mark.parametrize("advance", [0, 1, 3.5])
def test_stop_leaves_no_delayed_calls(advance: float) -> None:
    """stop() cancels the pending attempt or the retry timer: the clock is left empty."""
    clock = Clock()
    endpoint = SilentEndpoint()
    bus = RedisBus("redis://h", reactor=clock, endpoint=endpoint, command_timeout=3)
    bus.start()
    clock.advance(advance)
    stopped = bus.stop()
    assert stopped.called
    assert clock.getDelayedCalls() == []
    assert not bus.ready
    # Stopped for good: time passing starts nothing.
    attempts = bus.connect_attempts
    clock.advance(100)
    assert bus.connect_attempts == attempts


def test_start_twice_is_refused() -> None:
    """Starting a running bus is a mistake worth hearing about."""
    bus = RedisBus("redis://h", reactor=Clock(), endpoint=SilentEndpoint())
    bus.start()
    with pytest.raises(RuntimeError, match="already started"):
        bus.start()
    bus.stop()


def test_parse_redis_url() -> None:
    """Host, port, database, user and percent-decoded password come from the URL."""
    assert parse_redis_url("redis://localhost") == RedisAddress(
        "localhost", 6379, 0, None, None, False
    )
    assert parse_redis_url("redis://:p%40ss@10.0.0.1:7000/2") == RedisAddress(
        "10.0.0.1", 7000, 2, None, "p@ss", False
    )
    assert parse_redis_url("rediss://bob:pw@[::1]:6380/0") == RedisAddress(
        "::1", 6380, 0, "bob", "pw", True
    )
    assert str(parse_redis_url("redis://:secret@h:1/3")) == "redis://h:1/3"  # no password in logs


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://h", "redis://"),
        ("h:6379", "redis://"),
        ("redis://h:port", "bad port"),
        ("redis://h/db1", "database number"),
    ],
)
def test_bad_redis_urls(url: str, message: str) -> None:
    """A bad URL is refused at construction, with what to write instead."""
    with pytest.raises(ValueError, match=message):
        RedisBus(url)


def ev(stream_id: str, channel: str = "c") -> Event:
    return Event.create(channel, None, "x", id=stream_id)


def test_stream_history_append_is_idempotent() -> None:
    """Appending an event not newer than the newest held does nothing."""
    history = StreamHistory(10)
    history.append(ev("5-0"))
    history.append(ev("5-1"))
    history.append(ev("5-1"))
    history.append(ev("4-9"))
    assert [e.id for e in history] == ["5-0", "5-1"]
    assert history.since("5-0", None, 10) == [ev("5-1")]
    assert history.newest_id == "5-1"


def test_stream_history_is_bounded_and_clears() -> None:
    """The mirror keeps the last size entries; clear() makes every id unknown."""
    history = StreamHistory(3)
    for n in range(6):
        history.append(ev(f"1-{n}", "a" if n % 2 else "b"))
    assert [e.id for e in history] == ["1-3", "1-4", "1-5"]
    assert history.since("1-2", None, 10) is None
    assert history.since("1-3", frozenset({"a"}), 10) == [ev("1-5", "a")]
    assert history.since("1-3", None, 1) == [ev("1-4", "b")]
    history.clear()
    assert len(history) == 0
    assert history.since("1-5", None, 10) is None
    history.append(ev("0-1"))  # after a clear, any id is accepted again
    assert len(history) == 1


def test_stream_history_ttl_uses_stream_time() -> None:
    """With a TTL, entries expire by the time in their stream id."""
    clock = Clock()
    clock.advance(10)
    history = StreamHistory(10, ttl=2, reactor=clock)
    history.append(ev("7000-0"))  # already older than 2 s
    history.append(ev("9000-0"))
    assert [e.id for e in history] == ["9000-0"]
    clock.advance(0.9)
    assert [e.id for e in history] == ["9000-0"]
    clock.advance(0.2)
    assert len(history) == 0
    assert history.since("9000-0", None, 10) is None


def test_stream_ids() -> None:
    """Stream ids order numerically; anything else is refused."""
    assert stream_id_key("10-0") > stream_id_key("9-99")
    for bad in ("", "12", "a-1", "1-", "1-2-3"):
        with pytest.raises(ValueError):
            stream_id_key(bad)
    with pytest.raises(ValueError):
        StreamHistory().append(ev("x-1"))


def run_retries(clock: Clock, count: int) -> None:
    for _ in range(count):
        (call,) = clock.getDelayedCalls()
        clock.advance(call.getTime() - clock.seconds())


def test_an_outage_logs_one_line_at_any_level(redis_log: list[dict[str, Any]]) -> None:
    """
    However many retries an outage takes, it logs exactly one line (a
    warning), at any level, debug included: twistd writes debug lines, so
    a per-retry debug line would be a line per retry in the log. The
    retries are counted instead, and so is the outage.
    """
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    bus.start()
    run_retries(clock, 25)
    assert bus.connect_attempts == 26
    assert bus.outages == 1
    assert len(redis_log) == 1, [e["log_format"] for e in redis_log]
    assert redis_log[0]["log_level"] == LogLevel.warn
    bus.stop()
    assert clock.getDelayedCalls() == []


def test_a_restarted_bus_logs_its_next_outage_again(redis_log: list[dict[str, Any]]) -> None:
    """stop() then start() begins afresh: the next outage is one more warning and count."""
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    bus.start()
    run_retries(clock, 3)
    bus.stop()
    bus.start()
    run_retries(clock, 3)
    bus.stop()
    assert bus.outages == 2
    assert [e["log_level"] for e in redis_log] == [LogLevel.warn, LogLevel.warn]


def test_batch_over_the_history_is_refused_before_anything_is_sent() -> None:
    """
    A batch with more events than history_size raises BatchTooLarge (a
    ValueError that maps to HTTP 413) at once, connected or not, naming the
    bound; a batch of exactly history_size is not refused for its size.
    """
    clock = Clock()
    endpoint = RefusingEndpoint()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=endpoint, history_size=3)
    items = [Item.create("c", text=str(n)) for n in range(4)]
    with pytest.raises(BatchTooLarge, match="at most 3") as caught:
        bus.publish(items)
    assert isinstance(caught.value, ValueError)
    errors: list[Any] = []
    bus.publish(items[:3]).addErrback(errors.append)  # refused for not being connected
    assert "not connected" in str(errors[0].value)
    assert endpoint.attempts == 0


def test_metrics_expose_the_relay_link_and_its_counters() -> None:
    """
    With a relay, /metrics shows whether it is up and its outage, attempt,
    gap and history-reset counters; without one, none of these appear.
    """
    clock = Clock()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=RefusingEndpoint())
    broker = SSEBroker(relay=bus, history=bus.history, reactor=clock, heartbeat=0)
    bus.start()
    run_retries(clock, 4)
    bus.gaps, bus.resets = 2, 1
    text = generate_latest(metrics_registry(broker)).decode()
    assert "sse_relay_up 0.0" in text
    assert "sse_relay_outages_total 1.0" in text
    assert "sse_relay_connect_attempts_total 5.0" in text
    assert "sse_relay_gaps_total 2.0" in text
    assert "sse_relay_history_resets_total 1.0" in text
    bus.stop()
    plain = generate_latest(metrics_registry(SSEBroker(reactor=clock, heartbeat=0))).decode()
    assert "sse_relay" not in plain


class AbortableTransport(StringTransport):
    """A StringTransport whose abortConnection ends the connection, as a socket's does."""

    def abortConnection(self) -> None:
        super().abortConnection()
        if self.protocol is not None and not getattr(self, "lost", False):
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionLost("aborted")))


@implementer(IStreamClientEndpoint)
class StringEndpoint:
    """Each attempt connects at once, to a StringTransport the test answers for Redis."""

    def __init__(self) -> None:
        self.connections: list[tuple[Any, AbortableTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        proto = factory.buildProtocol(None)
        transport = AbortableTransport()
        proto.makeConnection(transport)
        transport.protocol = proto
        self.connections.append((proto, transport))
        return succeed(proto)


def test_a_connection_lost_while_logging_in_is_a_failed_attempt(
    redis_log: list[dict[str, Any]],
) -> None:
    """
    The publishing connection lost while the session is prepared (logging
    in) fails that attempt, quietly for ClientService (whose state machine
    has no transition for a loss before it holds a connection): retried
    after the backoff, one warning for the outage.
    """
    clock = Clock()
    endpoint = StringEndpoint()
    bus = RedisBus("redis://:pw@h:1/0", reactor=clock, endpoint=endpoint)
    bus.start()
    ((proto, transport),) = endpoint.connections
    assert transport.value().startswith(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n")  # prepareConnection
    proto.connectionLost(Failure(ConnectionLost("reset while logging in")))
    assert not bus.ready
    (retry,) = clock.getDelayedCalls()
    assert retry.getTime() - clock.seconds() <= bus.initial_backoff
    clock.advance(bus.initial_backoff)
    assert len(endpoint.connections) == bus.connect_attempts == 2
    warned = [e for e in redis_log if e["log_level"] >= LogLevel.warn]
    assert len(warned) == 1 and "unreachable" in warned[0]["log_format"]
    bus.stop()
    assert clock.getDelayedCalls() == []


def test_a_refused_login_drops_the_connection_and_retries(
    redis_log: list[dict[str, Any]],
) -> None:
    """
    Redis refusing AUTH fails the attempt: its connection is dropped (not
    left open beside the next one) and the next attempt comes after the
    backoff; the warning gives Redis's reason.
    """
    clock = Clock()
    endpoint = StringEndpoint()
    bus = RedisBus("redis://:bad@h:1/0", reactor=clock, endpoint=endpoint)
    bus.start()
    ((proto, transport),) = endpoint.connections
    proto.dataReceived(b"-WRONGPASS invalid username-password pair\r\n-NOAUTH\r\n")
    assert transport.disconnecting
    (retry,) = clock.getDelayedCalls()
    (warned,) = [e for e in redis_log if e["log_level"] >= LogLevel.warn]
    assert "WRONGPASS" in warned["reason"]
    clock.advance(retry.getTime() - clock.seconds())
    assert len(endpoint.connections) == 2
    bus.stop()
    assert clock.getDelayedCalls() == []


def bulk(text: str) -> bytes:
    data = text.encode()
    return b"$%d\r\n%s\r\n" % (len(data), data)


def array(*items: bytes) -> bytes:
    return b"*%d\r\n" % len(items) + b"".join(items)


def entry(stream_id: str, data: str) -> bytes:
    return array(bulk(stream_id), array(bulk("channel"), bulk("c"), bulk("data"), bulk(data)))


def answer_session(endpoint: StringEndpoint, first: int, newest: str, rebuild: bool) -> None:
    """
    Play Redis for one session's preparation: log both connections in,
    INFO, the rebuild at the first connection (a stream whose newest entry
    is C{newest}), the first read (nothing after C{newest}).
    """
    publisher, _ = endpoint.connections[first]
    publisher.dataReceived(b"+OK\r\n")  # CLIENT SETNAME
    reader, _ = endpoint.connections[first + 1]
    reader.dataReceived(b"+OK\r\n")  # CLIENT SETNAME
    reader.dataReceived(bulk("# Server\r\nrun_id:abc\r\n"))  # INFO server
    if rebuild:
        info = array(bulk("length"), b":1\r\n", bulk("entries-added"), b":1\r\n")
        reader.dataReceived(  # MULTI XREVRANGE XINFO EXEC
            b"+OK\r\n+QUEUED\r\n+QUEUED\r\n" + array(array(entry(newest, "old")), info)
        )
    reader.dataReceived(  # MULTI XRANGE XREAD EXEC: the cursor held, nothing after it
        b"+OK\r\n+QUEUED\r\n+QUEUED\r\n" + array(array(entry(newest, "old")), b"*-1\r\n")
    )


def test_link_metrics_on_a_clock() -> None:
    """
    On a Clock, with Redis played on StringTransports: connected turns 1 once
    the session is prepared; a blocking read's entries are counted and the
    read lag is the clock's time less the newest entry's (its stream id's
    milliseconds); the round trips were observed (the blocking read not);
    the link lost, connected is 0; back, one reconnect.
    """
    clock = Clock()
    clock.advance(1.25)
    endpoint = StringEndpoint()
    bus = RedisBus("redis://h:1/0", reactor=clock, endpoint=endpoint)
    broker = SSEBroker(relay=bus, history=bus.history, reactor=clock, heartbeat=0)
    bus.start()
    assert not bus.connected
    answer_session(endpoint, 0, "500-0", rebuild=True)
    assert bus.ready and bus.connected
    timed = bus.roundtrips.count
    assert timed >= 4  # SETNAME x2, INFO, rebuild, first read
    reader, _ = endpoint.connections[1]
    news = array(array(bulk("sse:events"), array(entry("1000-0", "a"), entry("1000-1", "b"))))
    reader.dataReceived(news + array(entry("500-0", "old")))  # XREAD BLOCK, then XRANGE
    assert bus.read_events == 2
    assert bus.read_lag == pytest.approx(0.25)
    assert bus.roundtrips.count == timed  # the blocking read is not a round trip
    text = generate_latest(metrics_registry(broker)).decode()
    assert "sse_redis_connected 1.0" in text
    assert "sse_redis_read_events_total 2.0" in text
    assert "sse_redis_read_lag_seconds 0.25" in text
    assert f"sse_redis_roundtrip_seconds_count {float(timed)}" in text

    publisher, transport = endpoint.connections[0]
    transport.abortConnection()  # the publishing link lost: the session ends
    assert not bus.connected and not bus.ready
    assert "sse_redis_connected 0.0" in generate_latest(metrics_registry(broker)).decode()
    clock.advance(bus.initial_backoff)
    answer_session(endpoint, 2, "1000-1", rebuild=False)
    assert bus.ready and bus.reconnects == 1
    assert "sse_redis_reconnects_total 1.0" in generate_latest(metrics_registry(broker)).decode()
    bus.stop()
    assert clock.getDelayedCalls() == []
