"""
The RESP protocol (sse_twisted.redis.resp) on a StringTransport: commands
pipelined in one write, replies matched in order and parsed all at once,
error replies, a lost connection, a reply out of step; and the link's
round-trip measure on a Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.error import ConnectionClosed, ConnectionLost
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from sse_twisted.redis.link import Link, RedisCommandError, RedisUnavailable
from sse_twisted.redis.resp import ReplyError, RespProtocol, encode_command
from sse_twisted.stats import Histogram


def connected() -> tuple[RespProtocol, StringTransport]:
    proto = RespProtocol()
    transport = StringTransport()
    proto.makeConnection(transport)
    return proto, transport


def results(*deferreds: Any) -> list[Any]:
    out: list[Any] = []
    for d in deferreds:
        d.addBoth(out.append)
    return out


def xread_reply(n: int) -> bytes:
    """An XREAD reply of n entries, as Redis writes it."""
    fields = b"*4\r\n$7\r\nchannel\r\n$1\r\nc\r\n$4\r\ndata\r\n$1\r\nx\r\n"
    entries = b"".join(
        b"*2\r\n$%d\r\n%s\r\n%s" % (len(b"1-%d" % i), b"1-%d" % i, fields) for i in range(n)
    )
    return b"*1\r\n*2\r\n$10\r\nsse:events\r\n*%d\r\n%s" % (n, entries)


def test_commands_are_encoded_as_resp_arrays_of_bulk_strings() -> None:
    """Strings as UTF-8, numbers in decimal, bytes as they are; other types are refused."""
    assert encode_command(["SET", "k", "é", 5, b"\x00"]) == (
        b"*5\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n\xc3\xa9\r\n$1\r\n5\r\n$1\r\n\x00\r\n"
    )
    with pytest.raises(TypeError):
        encode_command(["SET", "k", None])
    with pytest.raises(TypeError):
        encode_command(["SET", "k", True])


def test_a_pipeline_is_one_write_and_replies_fire_in_order() -> None:
    """Several commands go out in one write; replies fire their Deferreds in sending order."""
    proto, transport = connected()
    transport.io.seek(0)
    writes: list[bytes] = []
    transport.write = writes.append  # type: ignore[method-assign]
    got = results(*proto.pipeline([["PING"], ["GET", "k"], ["INCR", "n"]]))
    assert writes == [
        b"*1\r\n$4\r\nPING\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n"
    ]
    proto.dataReceived(b"+PONG\r\n$-1\r\n")
    assert got == ["PONG", None]
    assert proto.waiting == 1
    proto.dataReceived(b":7\r\n")
    assert got == ["PONG", None, 7]


def test_a_whole_xread_reply_is_parsed_in_one_data_received() -> None:
    """
    A read of 500 entries that arrives in one TCP read fires in that same
    call, and one split anywhere fires once its last byte is in.
    """
    proto, _ = connected()
    got = results(proto.execute("XREAD", "COUNT", 500, "STREAMS", "sse:events", "0-0"))
    data = xread_reply(500)
    proto.dataReceived(data)
    assert len(got) == 1
    [[stream, entries]] = got[0]
    assert stream == "sse:events" and len(entries) == 500
    assert entries[499] == ["1-499", ["channel", "c", "data", "x"]]
    for cut in (1, len(data) // 2, len(data) - 1):
        got = results(proto.execute("XREAD"))
        proto.dataReceived(data[:cut])
        assert got == []
        proto.dataReceived(data[cut:])
        assert len(got[0][0][1]) == 500


def test_error_replies() -> None:
    """
    An error reply fails its command with ReplyError and the next command
    still gets its own reply; inside an array (EXEC's), an error is a value.
    """
    proto, _ = connected()
    got = results(*proto.pipeline([["AUTH", "x"], ["PING"], ["EXEC"]]))
    proto.dataReceived(b"-WRONGPASS invalid password\r\n+PONG\r\n*2\r\n:1\r\n-ERR no\r\n")
    assert isinstance(got[0], Failure) and got[0].check(ReplyError)
    assert "WRONGPASS" in str(got[0].value)
    assert got[1] == "PONG"
    assert got[2][0] == 1 and isinstance(got[2][1], ReplyError)


def test_bytes_that_are_not_utf8_do_not_break_the_connection() -> None:
    """A value another writer stored as non-UTF-8 decodes with U+FFFD; later replies still match."""
    proto, transport = connected()
    got = results(proto.execute("GET", "k"), proto.execute("PING"))
    proto.dataReceived(b"$2\r\n\xffa\r\n+PONG\r\n")
    assert got == ["\ufffda", "PONG"]
    assert not transport.disconnecting


def test_connection_lost_fails_every_waiting_command_then_tells() -> None:
    """
    When the connection goes, each command still waiting fails with the
    reason (a ConnectionClosed) before on_lost hears of it; commands sent
    afterwards fail at once.
    """
    proto, _ = connected()
    order: list[str] = []
    d1, d2 = proto.execute("PING"), proto.execute("XREAD")
    d1.addErrback(lambda f: order.append(f"d1 {f.type.__name__}"))
    d2.addErrback(lambda f: order.append(f"d2 {f.type.__name__}"))
    proto.on_lost = lambda reason: order.append("lost")
    proto.connectionLost(Failure(ConnectionLost("reset")))
    assert order == ["d1 ConnectionLost", "d2 ConnectionLost", "lost"]
    assert proto.waiting == 0 and proto.closed
    (late,) = results(proto.execute("PING"))  # fails at once
    assert late.check(ConnectionClosed)


@pytest.mark.parametrize("data", [b"+PONG\r\n+EXTRA\r\n", b"!bogus\r\n"])
def test_a_reply_out_of_step_aborts_the_connection(data: bytes) -> None:
    """A reply nobody asked for, or bytes that are not RESP, abort the connection."""
    proto, transport = connected()
    got = results(proto.execute("PING"))
    proto.dataReceived(data)
    assert transport.disconnecting
    assert proto.closed
    if data.startswith(b"+PONG"):
        assert got == ["PONG"]


def test_the_link_measures_round_trips_but_not_blocking_reads() -> None:
    """
    A command's round trip (send to reply, on the link's clock) and a
    transaction's (one, for MULTI to EXEC) go into the histogram; a call
    with timed=False (a blocking XREAD) does not; replies keep their order.
    """
    clock = Clock()
    proto, _ = connected()
    histogram = Histogram()
    link = Link(proto, where="redis://h:1/0", clock=clock, timeout=5, roundtrips=histogram)
    got = results(link.call("PING"))
    clock.advance(0.003)
    proto.dataReceived(b"+PONG\r\n")
    assert got == ["PONG"]
    assert histogram.count == 1 and histogram.sum == pytest.approx(0.003)
    got = results(link.transaction([["INCR", "a"], ["INCR", "b"]]))
    clock.advance(0.0004)
    proto.dataReceived(b"+OK\r\n+QUEUED\r\n+QUEUED\r\n*2\r\n:1\r\n:1\r\n")
    assert got == [[1, 1]]
    assert histogram.count == 2 and histogram.sum == pytest.approx(0.0034)
    got = results(link.call("XREAD", "BLOCK", 5000, timed=False))
    clock.advance(2)
    proto.dataReceived(b"*-1\r\n")
    assert got == [None]
    assert histogram.count == 2
    assert clock.getDelayedCalls() == []


def test_the_link_maps_errors_and_gives_up_on_silence() -> None:
    """
    An error reply is RedisCommandError; no reply within the timeout aborts
    the connection (the replies would be out of step) and is RedisUnavailable.
    """
    clock = Clock()
    proto, transport = connected()
    gave_up: list[str] = []
    link = Link(proto, where="redis://h:1/0", clock=clock, timeout=2, on_give_up=gave_up.append)
    refused = results(link.call("GET", "k"))
    proto.dataReceived(b"-WRONGTYPE no\r\n")
    assert refused[0].check(RedisCommandError)
    silent = results(link.call("PING"))
    clock.advance(2)
    assert silent[0].check(RedisUnavailable)
    assert gave_up == ["no reply within 2s"]
    assert transport.disconnecting
