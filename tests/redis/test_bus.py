"""RedisBus against a real redis-server: fan-out, ids, history, faults."""

from __future__ import annotations

import os
import re
import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults
from twisted.logger import LogLevel

from sse_twisted import SSEBroker
from sse_twisted.event import Event, InvalidItem, Item
from sse_twisted.redis import RedisBus, RedisUnavailable, stream_id_key

from ..support.processes import free_port
from ..support.redis_server import (
    Node,
    RedisServer,
    global_reactor,
    pause,
    redis_command,
    wait_until,
)

pytestmark = pytest.mark.redis

STREAM_ID = re.compile(r"^\d+-\d+$")


def item(n: int, channel: str = "news", **kw: Any) -> Item:
    return Item.create(channel, kw.pop("event", "tick"), {"n": n}, **kw)


async def publish(node: Node, items: list[Item]) -> list[str]:
    return await node.bus.publish(items).addTimeout(10, global_reactor())


def warnings(log: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in log if e["log_level"] >= LogLevel.warn]


@pytest_twisted.ensureDeferred
async def test_two_nodes_receive_in_one_order_exactly_once(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    Batches published concurrently from two nodes reach both nodes' on_event
    once each, in the same order, with the stream ids the publishes returned,
    and the fields survive the trip exactly.
    """
    a = await nodes(redis_server.url).ready()
    b = await nodes(redis_server.url).ready()
    odd = [
        Item.create("x", None, text="007"),
        Item.create("x", "", text="1.50", retry=0),
        Item.create("y", "t", text="", retry=1500),
        Item.create("ü ch", "ev", text="line1\r\nline2\rline3\n€"),
    ]
    published = await gatherResults(
        [
            a.bus.publish([item(1), item(2)]),
            b.bus.publish([item(3)]),
            a.bus.publish(odd),
            b.bus.publish([item(4), item(5), item(6)]),
        ]
    ).addTimeout(10, global_reactor())
    ids = [i for batch in published for i in batch]
    assert len(ids) == 10
    # A sentinel published last: once a node has it, it has everything before it.
    (sentinel,) = await publish(b, [item(99, "end")])
    for node in (a, b):
        await wait_until(lambda node=node: any(e.id == sentinel for e in node.received))
    assert [e.id for e in a.received] == [e.id for e in b.received]
    assert a.received == b.received
    got = [e.id for e in a.received]
    assert sorted(got, key=stream_id_key) == got
    assert len(set(got)) == len(got) == 11
    assert set(got) == {*ids, sentinel}
    assert all(STREAM_ID.match(i) for i in got)
    # Each batch is contiguous in the stream (MULTI/EXEC).
    for batch in published:
        start = got.index(batch[0])
        assert got[start : start + len(batch)] == batch
    by_id = {e.id: e for e in a.received}
    expected = [o.framed(i) for o, i in zip(odd, published[2], strict=True)]
    assert [by_id[i] for i in published[2]] == expected
    assert [by_id[i].frame for i in published[2]] == [e.frame for e in expected]
    # The stream holds exactly what was delivered.
    entries = await redis_server.command("XRANGE", "sse:events", "-", "+")
    assert [entry[0] for entry in entries] == got


@pytest_twisted.ensureDeferred
async def test_fresh_node_preloads_history(redis_server: RedisServer, nodes: Any) -> None:
    """
    A node started after events were published (a restarted node) holds
    them in its mirror without delivering them, so since() answers a
    Last-Event-ID that another node handed out.
    """
    a = await nodes(redis_server.url).ready()
    ids = await publish(a, [item(n, "even" if n % 2 == 0 else "odd") for n in range(6)])
    await a.count(6)
    c = await nodes(redis_server.url).ready()
    assert len(c.bus.history) == 6
    assert c.received == []
    assert c.bus.history.since(ids[1], None, 100) == a.received[2:]
    assert c.bus.history.since(ids[1], frozenset({"even"}), 100) == [
        e for e in a.received[2:] if e.channel == "even"
    ]
    assert c.bus.history.since(ids[-1], None, 100) == []
    assert c.bus.history.since("1-0", None, 100) is None
    # Live events after the preload go through on_event and the mirror.
    (more,) = await publish(a, [item(7)])
    await c.count(1)
    assert [e.id for e in c.received] == [more]
    assert c.bus.history.since(ids[-1], None, 100) == c.received


@pytest_twisted.ensureDeferred
async def test_stream_and_mirror_are_bounded(redis_server: RedisServer, nodes: Any) -> None:
    """XADD trims the stream with MAXLEN ~ history_size; the mirror keeps exactly that many."""
    await redis_server.command("CONFIG", "SET", "stream-node-max-entries", "5")
    a = await nodes(redis_server.url, history_size=10).ready()
    ids: list[str] = []
    for start in range(0, 60, 6):
        ids += await publish(a, [item(n) for n in range(start, start + 6)])
        # Read before the next batch: a reader further behind than the
        # stream holds loses its place (see the next test).
        await a.count(start + 6)
    assert a.bus.resets == 0
    length = int(await redis_server.command("XLEN", "sse:events"))
    assert 10 <= length <= 15  # approximate trimming: whole nodes of 5
    assert [e.id for e in a.bus.history] == ids[-10:]
    assert a.bus.history.since(ids[-11], None, 100) is None
    assert a.bus.history.since(ids[-10], None, 100) == a.received[-9:]


#: Adds ARGV[2] events to the stream at once, trimmed with MAXLEN ~ ARGV[1]:
#: a burst that outruns every reader (as from a node with a larger history).
BURST = """
for i = 1, tonumber(ARGV[2]) do
  redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'channel', 'news', 'data', i)
end
return redis.call('XLEN', KEYS[1])
"""


async def burst(server: RedisServer, count: int, maxlen: int) -> int:
    return int(await server.command("EVAL", BURST, 1, "sse:events", maxlen, count))


@pytest_twisted.ensureDeferred
async def test_reader_left_behind_by_trimming_notices(
    redis_server: RedisServer, nodes: Any, redis_log: list[dict[str, Any]]
) -> None:
    """
    When the stream is trimmed past a node's place before it reads on (here,
    one burst bigger than the stream holds), the node says so once, calls
    on_gap with its last id before delivering anything after the gap,
    restarts its mirror (ids from before the gap are unknown, not replayed
    with a hole), and delivers what the stream still holds, in order.
    """
    await redis_server.command("CONFIG", "SET", "stream-node-max-entries", "5")
    a = await nodes(redis_server.url, history_size=10).ready()
    gaps: list[tuple[str, str, int]] = []
    a.bus.on_gap = lambda last, reason: gaps.append((last, reason, len(a.received)))
    first = await publish(a, [item(n) for n in range(6)])
    await a.count(6)
    await burst(redis_server, 40, 10)
    entries = await redis_server.command("XRANGE", "sse:events", "-", "+")
    survivors = [entry[0] for entry in entries]
    await a.count(6 + len(survivors))
    assert [e.id for e in a.received] == first + survivors
    assert gaps == [(first[-1], "stream-trimmed", 6)]
    assert a.bus.resets == a.bus.gaps == 1
    gap = [e for e in warnings(redis_log) if "trimmed the stream past" in e["log_format"]]
    assert len(gap) == 1
    assert gap[0]["lost"] == 40 - len(survivors)
    assert a.bus.history.since(first[-1], None, 100) is None
    assert len(survivors) >= 10
    assert list(a.bus.history) == a.received[-10:]
    assert a.bus.history.since(a.received[-10].id or "", None, 100) == a.received[-9:]


@pytest_twisted.ensureDeferred
async def test_burst_into_an_empty_stream_is_a_gap(
    redis_server: RedisServer, nodes: Any, redis_log: list[dict[str, Any]]
) -> None:
    """
    A node that has read nothing yet (the stream was empty) and finds a
    burst already trimmed says so too (Redis 7's entries-added): on_gap with
    "0-0", then what the stream holds, in order.
    """
    await redis_server.command("CONFIG", "SET", "stream-node-max-entries", "5")
    a = await nodes(redis_server.url, history_size=10).ready()
    gaps: list[tuple[str, str]] = []
    a.bus.on_gap = lambda last, reason: gaps.append((last, reason))
    assert a.bus.last_id == "0-0"
    await burst(redis_server, 40, 10)
    survivors = [e[0] for e in await redis_server.command("XRANGE", "sse:events", "-", "+")]
    await a.count(len(survivors))
    assert [e.id for e in a.received] == survivors
    assert gaps == [("0-0", "stream-trimmed")]
    assert a.bus.gaps == 1


@pytest_twisted.ensureDeferred
async def test_trim_of_read_entries_only_is_no_gap(redis_server: RedisServer, nodes: Any) -> None:
    """
    A trim that removed the node's last-read entry but nothing after it (the
    node is exactly at the trim point) is no gap: nothing is reported, the
    mirror is kept, and reading goes on.
    """
    a = await nodes(redis_server.url, history_size=100).ready()
    gaps: list[tuple[str, str]] = []
    a.bus.on_gap = lambda last, reason: gaps.append((last, reason))
    first = await publish(a, [item(n) for n in range(5)])
    await a.count(5)
    # Exact trim: every entry the node read is gone, nothing unread was.
    assert int(await redis_server.command("XTRIM", "sse:events", "MAXLEN", 0)) == 5
    more = await publish(a, [item(n) for n in range(5, 8)])
    await a.count(8)
    assert [e.id for e in a.received] == first + more
    assert gaps == [] and a.bus.gaps == 0 and a.bus.resets == 0
    assert a.bus.history.since(first[0], None, 100) == a.received[1:]


@pytest_twisted.ensureDeferred
async def test_ttl_trims_stream_and_mirror(redis_server: RedisServer, nodes: Any) -> None:
    """With history_ttl, old entries leave the stream (XTRIM MINID ~) and the mirror."""
    await redis_server.command("CONFIG", "SET", "stream-node-max-entries", "1")
    a = await nodes(redis_server.url, history_ttl=0.5).ready()
    old = await publish(a, [item(1), item(2)])
    await a.count(2)
    assert a.bus.history.since(old[0], None, 10) == a.received[1:]
    await pause(0.6)  # the TTL itself: nothing to await but time
    assert a.bus.history.since(old[0], None, 10) is None
    assert len(a.bus.history) == 0
    new = await publish(a, [item(3)])
    entries = await redis_server.command("XRANGE", "sse:events", "-", "+")
    assert [entry[0] for entry in entries] == new


@pytest_twisted.ensureDeferred
async def test_publish_refuses_ids(redis_server: RedisServer, nodes: Any) -> None:
    """
    Redis picks the ids, so a broker on the bus refuses a batch in which an
    item sets one, naming the item, before anything is sent.
    """
    a = await nodes(redis_server.url).ready()
    broker = SSEBroker(relay=a.bus, heartbeat=0)
    with pytest.raises(InvalidItem, match="chosen by the relay") as info:
        broker.publish_items([item(1), item(2, id="mine")])
    assert info.value.index == 1
    assert int(await redis_server.command("XLEN", "sse:events")) == 0


@pytest_twisted.ensureDeferred
async def test_on_event_errors_do_not_stop_the_reader(
    redis_server: RedisServer, nodes: Any, redis_log: list[dict[str, Any]]
) -> None:
    """An exception from on_event is logged; the next entries still arrive."""
    a = await nodes(redis_server.url).ready()
    got: list[Event] = []

    def on_event(event: Event) -> None:
        got.append(event)
        if len(got) == 1:
            raise RuntimeError("subscriber bug")

    a.bus.on_event = on_event
    await publish(a, [item(1), item(2)])
    await wait_until(lambda: len(got) == 2)
    assert any(e.get("log_failure") is not None for e in redis_log)
    assert a.bus.ready


@pytest_twisted.ensureDeferred
async def test_password_and_database(redis_server: RedisServer, nodes: Any) -> None:
    """The URL's password and database number are used on both connections."""
    await redis_server.command("CONFIG", "SET", "requirepass", "s3 cret")
    url = f"redis://:s3%20cret@127.0.0.1:{redis_server.port}/3"
    a = await nodes(url).ready()
    ids = await publish(a, [item(1)])
    await a.count(1)
    assert int(await redis_server.command("XLEN", "sse:events", password="s3 cret", db=3)) == 1
    assert int(await redis_server.command("XLEN", "sse:events", password="s3 cret")) == 0
    assert [e.id for e in a.received] == ids


@pytest_twisted.ensureDeferred
async def test_unreachable_at_start_then_ready(
    redis_servers: list[RedisServer], nodes: Any, redis_log: list[dict[str, Any]]
) -> None:
    """
    With no Redis at start: not ready, one warning however many retries,
    publishes errback; once Redis starts on that port, the bus connects.
    """
    server = RedisServer(free_port())
    redis_servers.append(server)
    a = nodes(server.url, max_backoff=0.2)
    await wait_until(lambda: a.bus.connect_attempts >= 5, 10, "5 connection attempts")
    assert not a.bus.ready
    warned = warnings(redis_log)
    assert len(warned) == 1, warned
    assert "unreachable" in warned[0]["log_format"]
    with pytest.raises(RedisUnavailable, match="nothing was stored"):
        await publish(a, [item(1)])
    await server.start()
    await a.ready(timeout=5)
    ids = await publish(a, [item(2)])
    await a.count(1)
    assert [e.id for e in a.received] == ids
    assert len(warnings(redis_log)) == 1


@pytest_twisted.ensureDeferred
async def test_redis_restarted_empty(
    redis_servers: list[RedisServer], nodes: Any, redis_log: list[dict[str, Any]]
) -> None:
    """
    Redis killed: both nodes turn unready and publishing errbacks. Redis back
    empty on the same port: both reconnect, clear their mirror (old ids are
    unknown, so resuming clients get a reset), and new publishes flow to both
    in one order.
    """
    server = RedisServer()
    redis_servers.append(server)
    await server.start()
    a = await nodes(server.url, max_backoff=0.2).ready()
    b = await nodes(server.url, max_backoff=0.2).ready()
    old = await publish(a, [item(1), item(2), item(3)])
    await a.count(3)
    await b.count(3)
    assert a.bus.history.since(old[0], None, 10) is not None

    server.kill()
    await wait_until(lambda: not a.bus.ready and not b.bus.ready, 10, "both to notice")
    with pytest.raises(RedisUnavailable):
        await publish(a, [item(4)])
    attempts = a.bus.connect_attempts
    await wait_until(lambda: a.bus.connect_attempts >= attempts + 2, 10, "failed retries")
    await server.start()
    await a.ready()
    await b.ready()
    for node in (a, b):
        assert node.bus.history.since(old[0], None, 10) is None
        assert node.bus.history.since(old[-1], None, 10) is None
        assert len(node.bus.history) == 0
        assert node.bus.resets == 1
    new = await publish(b, [item(5), item(6)])
    await a.count(5)
    await b.count(5)
    assert [e.id for e in a.received] == [e.id for e in b.received] == old + new
    assert a.bus.history.since(new[0], None, 10) == a.received[-1:]
    # One warning for the loss and one for the lost place, per node; no retry noise.
    lost = [e for e in warnings(redis_log) if "Lost Redis" in e["log_format"]]
    assert len(lost) == 2
    assert all("unreachable" not in e["log_format"] for e in warnings(redis_log))


@pytest_twisted.ensureDeferred
async def test_dropped_connection_resumes_from_last_id(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    When a node's connections are cut while others keep publishing, it
    reconnects and reads on from the last id it delivered: every event in
    the stream arrives once, in order, and its mirror is kept.
    """
    a = await nodes(redis_server.url, max_backoff=0.2).ready()
    b = await nodes(redis_server.url, max_backoff=0.2).ready()
    before = await publish(b, [item(n) for n in range(5)])
    await a.count(5)
    attempts = a.bus.connect_attempts
    clients = await redis_server.command("CLIENT", "LIST")
    victims = [
        line.split()[0].partition("=")[2]
        for line in clients.splitlines()
        if f"name={a.bus.client_name}-" in line
    ]
    assert len(victims) == 2
    for client_id in victims:
        await redis_server.command("CLIENT", "KILL", "ID", client_id)
    during: list[str] = []
    for n in range(5, 25, 4):
        during += await publish(b, [item(k) for k in range(n, n + 4)])
    await a.ready()
    after = await publish(b, [item(99)])
    await a.count(26)
    assert a.bus.connect_attempts > attempts
    assert [e.id for e in a.received] == before + during + after
    assert a.received == b.received
    assert a.bus.resets == 0
    assert a.bus.history.since(before[0], None, 100) == a.received[1:]


@pytest_twisted.ensureDeferred
async def test_stop_leaves_nothing_behind(redis_server: RedisServer) -> None:
    """stop() closes both connections and leaves no delayed call on the reactor."""
    reactor = global_reactor()
    before = set(reactor.getDelayedCalls())
    bus = RedisBus(redis_server.url)
    bus.start()
    await wait_until(lambda: bus.ready)
    pending = bus.publish([item(1)])
    await bus.stop().addTimeout(5, reactor)
    assert not bus.ready
    assert [c for c in reactor.getDelayedCalls() if c not in before and c.active()] == []
    # A publish in flight when stopping fails rather than hanging.
    with pytest.raises(RedisUnavailable):
        await pending.addTimeout(5, reactor)
    clients = await redis_server.command("CLIENT", "LIST")
    assert bus.client_name not in clients
    # And it can be started again.
    bus.start()
    await wait_until(lambda: bus.ready)
    await bus.stop().addTimeout(5, reactor)


def make_certificates(directory: str) -> tuple[str, str, str, bytes]:
    """A CA and a certificate it signed for localhost: (cert, key, ca) files and the CA PEM."""
    import datetime
    import os

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(days=1), now + datetime.timedelta(days=1))

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("sse test CA"))
        .issuer_name(name("sse test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(valid[0])
        .not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = {
        "cert.pem": cert.public_bytes(pem),
        "key.pem": key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        "ca.pem": ca.public_bytes(pem),
    }
    paths = []
    for filename, data in files.items():
        path = os.path.join(directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        paths.append(path)
    return paths[0], paths[1], paths[2], files["ca.pem"]


@pytest_twisted.ensureDeferred
async def test_rediss_url_uses_tls(
    redis_servers: list[RedisServer], nodes: Any, tmp_path: Any
) -> None:
    """rediss:// connects over TLS, checking the server certificate against the given CA."""
    from twisted.internet.ssl import Certificate, optionsForClientTLS

    cert, key, ca, ca_pem = make_certificates(str(tmp_path))
    server = RedisServer()
    redis_servers.append(server)
    server.spawn(
        *("--port", "0", "--tls-port", str(server.port)),
        *("--tls-cert-file", cert, "--tls-key-file", key, "--tls-ca-cert-file", ca),
        *("--tls-auth-clients", "no"),
    )
    tls = optionsForClientTLS("localhost", trustRoot=Certificate.loadPEM(ca_pem))
    a = await nodes(f"rediss://localhost:{server.port}/0", tls=tls).ready()
    ids = await publish(a, [item(1)])
    await a.count(1)
    assert [e.id for e in a.received] == ids
    # Without the CA the certificate is refused: never ready.
    b = nodes(f"rediss://localhost:{server.port}/0")
    await wait_until(lambda: b.bus.connect_attempts >= 2, 10, "refused attempts")
    assert not b.bus.ready


@pytest_twisted.ensureDeferred
async def test_stop_from_on_event(redis_server: RedisServer, nodes: Any) -> None:
    """on_event may stop the bus: nothing more is delivered and nothing keeps running."""
    reactor = global_reactor()
    before = set(reactor.getDelayedCalls())
    a = await nodes(redis_server.url).ready()
    stopped: list[Any] = []

    def on_event(event: Event) -> None:
        a.received.append(event)
        if not stopped:
            stopped.append(a.bus.stop())

    a.bus.on_event = on_event
    await publish(a, [item(1), item(2), item(3)])
    await wait_until(lambda: stopped)
    await stopped[0].addTimeout(5, reactor)
    assert len(a.received) == 1
    attempts = a.bus.connect_attempts
    await wait_until(lambda: [c for c in reactor.getDelayedCalls() if c not in before] == [])
    assert a.bus.connect_attempts == attempts
    assert not a.bus.ready


@pytest_twisted.ensureDeferred
async def test_the_entries_of_one_read_go_to_a_subscriber_in_one_write(
    redis_server: RedisServer, nodes: Any
) -> None:
    """
    A batch stored in one MULTI is read back in one XREAD and written to
    each subscriber in one write (the broker's coalescing, on the relay's
    path too), in order.
    """
    from twisted.web.resource import Resource

    from sse_twisted.parser import EventStreamParser
    from sse_twisted.resource import StreamResource

    from ..support.conn import Conn, count_writes, make_site

    node = await nodes(redis_server.url).ready()
    broker = SSEBroker(relay=node.bus, heartbeat=0)
    root = Resource()
    root.putChild(b"events", StreamResource(broker))
    conn = Conn(make_site(root, global_reactor()), b"/events?channel=news")
    writes = count_writes(conn)
    ids = await publish(node, [item(n) for n in range(5)])
    await wait_until(lambda: len(EventStreamParser().feed(conn.stream())) >= 5)
    events = EventStreamParser().feed(conn.stream())
    assert [e.last_event_id for e in events] == ids
    assert len(writes) == 1


class _Stall:
    """A reader whose input stalls the reactor for C{seconds}, as a large fan-out would."""

    def __init__(self, reactor: Any, seconds: float) -> None:
        self.reactor = reactor
        self.seconds = seconds
        self.r, self.w = os.pipe()

    def fileno(self) -> int:
        return self.r

    def doRead(self) -> None:
        os.read(self.r, 1)
        time.sleep(self.seconds)

    def connectionLost(self, reason: Any) -> None:
        pass

    def logPrefix(self) -> str:
        return "stall"

    def close(self) -> None:
        self.reactor.removeReader(self)
        os.close(self.r)
        os.close(self.w)


@pytest_twisted.ensureDeferred
async def test_a_stalled_reactor_is_not_a_lost_redis(redis_server: RedisServer, nodes: Any) -> None:
    """
    One reactor turn spent handling input for longer than the command timeout
    (a node busy with a large fan-out), while Redis answers: the deadline
    comes due before the answer is read (Twisted runs due timers before it
    reads input), and the link looks once more after the next turn instead
    of giving Redis up. The publish succeeds and no outage is counted.
    """
    node = await nodes(redis_server.url, command_timeout=0.3).ready()
    reactor = global_reactor()
    stall = _Stall(reactor, 0.8)
    reactor.addReader(stall)
    try:
        # Redis holds writes for 0.15 s, so it answers while the reactor is stalled.
        await redis_command(redis_server.port, "CLIENT", "PAUSE", "150", "WRITE")
        published = node.bus.publish([Item.create("x", "e", {"n": 1})])
        # Once the command is out, a turn of input handling outlasts the timeout.
        reactor.callLater(0.05, os.write, stall.w, b"x")
        ids = await published.addTimeout(10, reactor)
    finally:
        stall.close()
    assert len(ids) == 1
    assert node.bus.outages == 0 and node.bus.ready
