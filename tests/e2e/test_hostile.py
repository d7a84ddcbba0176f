"""
Hostile input against ONE real `twistd sse` process, with a canary subscriber
(every channel, raw socket) open the whole time.

After every test (the autouse fixture C{checkpoint}, so each test stands
alone): the server still answers /health, a marker event published
legitimately reaches the canary, and the canary's whole stream is
well-formed event-stream framing (in well-formed HTTP/1.1 chunks) that
parses into exactly the events this module published legitimately, in
order: nothing injected, nothing from a refused request. Every refused
request gets a 4xx with a JSON {"error": ...} body, except unparseable HTTP,
which Twisted's own parser refuses with a plain 400 (or by closing).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote_from_bytes

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sse_twisted.parser import EventStreamParser

from ..support.chunks import chunks
from ..support.processes import RawSubscriber, SSEServer, rss

pytestmark = pytest.mark.e2e

MAX_BODY = 65536
#: What a refused request may look like: the status and the parsed JSON body.
Answer = tuple[int, dict[str, str], Any]
HYPOTHESIS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
_FRAME_LINE = re.compile(rb"^(?:|:.*|retry: \d+|id: [^\r\n\x00]*|event: [^\r\n]*|data: [^\r\n]*)$")


@dataclass
class Suite:
    """The server, its canary, and what was legitimately published."""

    server: SSEServer
    canary: RawSubscriber
    published: list[tuple[str, str, str]] = field(default_factory=list)
    markers: int = 0

    def checkpoint(self) -> None:
        """Health is 200; a new marker arrives; the canary saw exactly what was published."""
        status, _, health = self.server.request("GET", "/health")
        assert status == 200 and health["status"] == "ok", health
        self.markers += 1
        data = {"marker": self.markers}
        answer = self.server.publish("canary", "marker", data)
        self.published.append(("marker", json.dumps(data, separators=(",", ":")), answer["id"]))
        frame = f"id: {answer['id']}\nevent: marker\ndata: ".encode()
        self.canary.read_until(frame)
        # Then the rest of that event and of its chunk.
        start = self.canary.data.index(frame)
        deadline = time.monotonic() + 10
        while self.canary.data.find(b"\n\n\r\n", start) < 0:
            assert time.monotonic() < deadline, self.canary.data[start:]
            self.canary.sock.settimeout(max(0.01, deadline - time.monotonic()))
            chunk = self.canary.sock.recv(65536)
            assert chunk, "the canary's connection closed"
            self.canary.data += chunk
        body = well_formed_chunks(self.canary.data)
        for line in body.split(b"\n")[:-1]:
            assert _FRAME_LINE.match(line), f"malformed stream line {line!r}"
        got = [(e.type, e.data, e.last_event_id) for e in EventStreamParser().feed(body)]
        assert got == self.published
        assert "Traceback" not in self.server.output(), self.server.output()[-5000:]

    def legit(self, answer: Any, items: list[tuple[str, str]]) -> None:
        """Record events a request published on purpose: (event type, data) per item."""
        answers = answer if isinstance(answer, list) else [answer]
        assert len(answers) == len(items)
        for (kind, data), a in zip(items, answers, strict=True):
            self.published.append((kind, data, a["id"]))


def well_formed_chunks(raw: bytes) -> bytes:
    """The canary's event-stream bytes; every chunk must be complete and well-framed."""
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep and head.startswith(b"HTTP/1.1 200 "), head
    assert b"transfer-encoding: chunked" in head.lower()
    out = b""
    end = 0
    for chunk in chunks(body, strict=True):
        assert chunk.data, "the canary's stream ended"
        out += chunk.data
        end = chunk.end
    assert end == len(body), body[end : end + 80]
    return out


@pytest.fixture(scope="module")
def suite() -> Iterator[Suite]:
    server = SSEServer(
        "--heartbeat",
        "1",
        "--max-body",
        str(MAX_BODY),
        "--history",
        "100",
        "--header-timeout",
        "3",
    )
    try:
        canary = RawSubscriber(server, "/events")
        canary.read_until(b"retry: 2000\n\n")
        s = Suite(server, canary)
        s.checkpoint()
        yield s
        canary.close()
    finally:
        server.stop()


# Raw HTTP/1.1


def _read_response(sock: socket.socket, buf: bytes, deadline: float) -> tuple[Answer, bytes] | None:
    """One response from C{buf} + the socket: (status, headers, body), rest; None on close."""

    def more() -> bool:
        nonlocal buf
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete response; got {buf!r}")
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return False
        buf += chunk
        return bool(chunk)

    while b"\r\n\r\n" not in buf:
        if not more():
            assert not buf or buf.startswith(b"HTTP/1."), buf
            if buf:
                raise AssertionError(f"truncated response head: {buf!r}")
            return None
    head, _, buf = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {k.strip().lower(): v.strip() for k, _, v in (h.partition(":") for h in lines[1:])}
    if headers.get("content-type", "").startswith("text/event-stream"):
        return (status, headers, None), b""  # a stream: the caller closes it
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            got = list(chunks(buf))
            # Complete once the last chunk and the empty trailer's CRLF are in.
            if got and not got[-1].data and len(buf) >= got[-1].end + 2:
                body, buf = b"".join(c.data for c in got), buf[got[-1].end + 2 :]
                break
            assert more(), "closed inside a chunked body"
    else:
        length = int(headers.get("content-length", "0"))
        while len(buf) < length:
            assert more(), "closed inside a body"
        body, buf = buf[:length], buf[length:]
    value: Any = body
    if headers.get("content-type", "").startswith("application/json"):
        value = json.loads(body)
    return (status, headers, value), buf


def raw(data: bytes, *, responses: int = 1, timeout: float = 10.0) -> list[Answer]:
    """Send raw bytes; collect up to C{responses} responses, or fewer if the server closes."""
    deadline = time.monotonic() + timeout
    with socket.create_connection(("127.0.0.1", PORT[0]), timeout=timeout) as sock:
        # The server may refuse before reading everything: read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        got: list[Answer] = []
        buf = b""
        while len(got) < responses:
            one = _read_response(sock, buf, deadline)
            if one is None:
                break
            answer, buf = one
            got.append(answer)
        return got


PORT: list[int] = [0]


@pytest.fixture(autouse=True)
def checkpoint(suite: Suite) -> Iterator[None]:
    """
    After every test, a checkpoint: each test stands alone and is checked
    the same in any order, or run by itself.
    """
    PORT[0] = suite.server.port
    yield
    suite.checkpoint()


def post(body: bytes, headers: dict[str, str] | None = None, path: str = "/publish") -> bytes:
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in hdrs.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def get(target: bytes, extra: bytes = b"") -> bytes:
    return b"GET " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + extra + b"\r\n"


def assert_json_error(answer: Answer, *statuses: int) -> None:
    status, headers, body = answer
    assert 400 <= status < 500, answer
    if statuses:
        assert status in statuses, answer
    assert headers.get("content-type", "").startswith("application/json"), answer
    assert isinstance(body, dict) and isinstance(body.get("error"), str), answer


def refused_json(data: bytes, *statuses: int) -> None:
    """C{data} is one request that must be refused with a JSON 4xx."""
    answers = raw(data)
    assert len(answers) == 1, answers
    assert_json_error(answers[0], *statuses)


def refused_by_http(data: bytes) -> None:
    """Unparseable HTTP: a 4xx (Twisted's plain 400 is fine) or a close without answer."""
    for status, _, _ in raw(data, responses=3):
        assert 400 <= status < 500, status


# Hand-made publish bodies

DEEP = 30_000  # 60 KB: under --max-body
DEEP_OBJECTS = b'{"":' * 12_000 + b"1" + b"}" * 12_000
BAD_BODIES: list[tuple[str, bytes, int]] = [
    ("deep arrays", b'{"channel":"x","data":' + b"[" * DEEP + b"]" * DEEP + b"}", 400),
    # 12,000 levels (60 KB): past every supported Python's JSON nesting limit
    # (3.13's C recursion limit lets about 10,000 through; 3.12's 1,500).
    ("deep objects", b'{"channel":"x","data":' + DEEP_OBJECTS + b"}", 400),
    ("unclosed nesting", b"[" * 50_000, 400),
    ("huge integer", b'{"channel":"x","data":' + b"9" * 5000 + b"}", 400),
    ("huge float", b'{"channel":"x","data":1e999}', 400),
    ("NaN", b'{"channel":"x","data":NaN}', 400),
    ("Infinity", b'{"channel":"x","data":[-Infinity]}', 400),
    ("invalid UTF-8", b'{"channel":"x","data":"\xff\xfe\xc3"}', 400),
    ("overlong UTF-8", b'{"channel":"x","data":"\xc0\xaf"}', 400),
    ("UTF-8 surrogate", b'{"channel":"x","data":"\xed\xa0\x80"}', 400),
    ("lone surrogate escape", b'{"channel":"x","text":"\\ud800"}', 400),
    ("truncated JSON", b'{"channel":"x","data":[1,2', 400),
    ("trailing junk", b'{"channel":"x","data":1} {"channel":"x","data":2}', 400),
    ("empty body", b"", 400),
    ("whitespace", b" \n\t ", 400),
    ("a string", b'"hello"', 400),
    ("null", b"null", 400),
    ("number", b"7", 400),
    ("channel a number", b'{"channel":7,"data":1}', 400),
    ("channel null", b'{"channel":null,"data":1}', 400),
    ("channel empty", b'{"channel":"","data":1}', 400),
    ("channel too long", b'{"channel":"' + b"c" * 201 + b'","data":1}', 400),
    ("channel LF", b'{"channel":"a\\nb","data":1}', 400),
    ("channel NUL", b'{"channel":"a\\u0000b","data":1}', 400),
    ("channel DEL", b'{"channel":"a\\u007f","data":1}', 400),
    ("channel tab", b'{"channel":"a\\tb","data":1}', 400),
    ("event LF injection", b'{"channel":"x","event":"e\\nid: 666\\ndata: pwned","data":1}', 400),
    ("event CR", b'{"channel":"x","event":"e\\r","data":1}', 400),
    ("event NUL", b'{"channel":"x","event":"e\\u0000","data":1}', 400),
    ("event a list", b'{"channel":"x","event":["e"],"data":1}', 400),
    ("id CRLF injection", b'{"channel":"x","id":"1\\r\\ndata: pwned","data":1}', 400),
    ("id NUL", b'{"channel":"x","id":"1\\u0000","data":1}', 400),
    ("id a number", b'{"channel":"x","id":1,"data":1}', 400),
    ("retry negative", b'{"channel":"x","retry":-1,"data":1}', 400),
    ("retry float", b'{"channel":"x","retry":1.5,"data":1}', 400),
    ("retry bool", b'{"channel":"x","retry":true,"data":1}', 400),
    ("retry string", b'{"channel":"x","retry":"5","data":1}', 400),
    ("text a number", b'{"channel":"x","text":5}', 400),
    ("data and text", b'{"channel":"x","data":1,"text":"t"}', 400),
    ("neither data nor text", b'{"channel":"x"}', 400),
    ("unknown field", b'{"channel":"x","data":1,"channels":["y"]}', 400),
    ("duplicate key, last bad", b'{"channel":"x","channel":"y\\n","data":1}', 400),
    ("duplicate key, event", b'{"channel":"x","event":"ok","event":"a\\rb","data":1}', 400),
    ("list with one bad item", b'[{"channel":"x","data":1},{"channel":"x\\n","data":2}]', 400),
    ("list with a non-object", b'[{"channel":"x","data":1},[]]', 400),
    ("list of lists", b"[[[]]]", 400),
    ("over max body", b'{"channel":"x","text":"' + b"a" * MAX_BODY + b'"}', 413),
    (
        "near max body, bad event",
        b'{"channel":"x","event":"\\n","text":"' + b"a" * 65000 + b'"}',
        400,
    ),
    ("near max body, bad channel", b'{"channel":"' + b"c" * 65000 + b'","data":1}', 400),
]


@pytest.mark.parametrize(
    ("body", "status"), [(b, s) for _, b, s in BAD_BODIES], ids=[n for n, _, _ in BAD_BODIES]
)
def test_bad_publish_bodies(suite: Suite, body: bytes, status: int) -> None:
    """Each hand-made bad body gets its 4xx with a JSON error; nothing reaches the canary."""
    refused_json(post(body), status)


def test_legit_edges_are_published_verbatim(suite: Suite) -> None:
    """
    Bodies at the edges that are valid: a text just under --max-body, other
    Unicode line separators in names, an empty batch, a +json content type.
    They publish exactly what they say, and nothing else.
    """
    near = "b" * (MAX_BODY - 100)
    body = json.dumps({"channel": "edge", "text": near}).encode()
    assert len(body) <= MAX_BODY
    [(status, _, answer)] = raw(post(body))
    assert status == 200
    suite.legit(answer, [("message", near)])
    body = json.dumps({"channel": "edge", "event": "a\u2028b\u0085c", "data": "\u2029"}).encode()
    [(status, _, answer)] = raw(post(body, {"Content-Type": "application/problem+json"}))
    assert status == 200
    suite.legit(answer, [("a\u2028b\u0085c", '"\u2029"')])
    [(status, _, answer)] = raw(post(b"[]"))
    assert status == 200 and answer == []


# Generated publish bodies

_OK_CHANNEL = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1, max_size=20
)
_JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**20), 10**20)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_BREAK = st.sampled_from(["\r", "\n", "\x00", "\r\n"])
_WRONG_TYPE = st.one_of(
    st.integers(),
    st.lists(st.integers(), max_size=2),
    st.booleans(),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)


def _with_break(text: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.tuples(text, _BREAK, text).map(lambda t: t[0] + t[1] + t[2])


@st.composite
def bad_item(draw: st.DrawFn) -> dict[str, Any]:
    """A publish item with exactly one thing wrong."""
    item: dict[str, Any] = {"channel": draw(_OK_CHANNEL), "data": draw(_JSON)}
    if draw(st.booleans()):
        item["event"] = draw(_OK_CHANNEL)
    flaw = draw(
        st.sampled_from(["channel", "event", "id", "retry", "unknown", "both", "none", "text"])
    )
    if flaw == "channel":
        item["channel"] = draw(
            st.one_of(
                _WRONG_TYPE,
                st.just(""),
                st.text(min_size=201, max_size=260),
                st.tuples(_OK_CHANNEL, st.characters(max_codepoint=0x1F) | st.just("\x7f")).map(
                    "".join
                ),
            )
        )
    elif flaw in ("event", "id"):
        item[flaw] = draw(st.one_of(_with_break(st.text(max_size=10)), _WRONG_TYPE))
    elif flaw == "retry":
        item["retry"] = draw(
            st.one_of(st.integers(max_value=-1), st.floats(), st.text(max_size=3), st.booleans())
        )
    elif flaw == "unknown":
        item[
            draw(
                st.text(min_size=1, max_size=8).filter(
                    lambda k: k not in {"channel", "event", "data", "text", "id", "retry"}
                )
            )
        ] = 1
    elif flaw == "both":
        item["text"] = draw(st.text(max_size=10))
    elif flaw == "none":
        del item["data"]
    else:
        del item["data"]
        item["text"] = draw(_WRONG_TYPE)
    return item


@st.composite
def bad_body(draw: st.DrawFn) -> bytes:
    """One bad item, alone or hidden among good ones in a batch."""
    bad = draw(bad_item())
    if draw(st.booleans()):
        value: Any = bad
    else:
        good = draw(
            st.lists(st.fixed_dictionaries({"channel": _OK_CHANNEL, "data": _JSON}), max_size=3)
        )
        good.insert(draw(st.integers(0, len(good))), bad)
        value = good
    return json.dumps(value, allow_nan=True).encode()


@HYPOTHESIS
@given(body=bad_body())
def test_generated_bad_items(suite: Suite, body: bytes) -> None:
    """Generated items with one flaw, alone or in a batch: JSON 400, nothing published."""
    refused_json(post(body), 400)


@HYPOTHESIS
@given(body=st.binary(max_size=400))
def test_generated_garbage_bodies(suite: Suite, body: bytes) -> None:
    """Random bytes as a JSON body: a JSON 4xx (or an empty batch, which publishes nothing)."""
    [(status, headers, answer)] = raw(post(body))
    if status == 200:
        assert answer == [], body
    else:
        assert_json_error((status, headers, answer), 400)


# Query strings and headers on the stream


def _q(value: bytes) -> bytes:
    return quote_from_bytes(value, safe=b"").encode()


@HYPOTHESIS
@given(
    good=st.lists(st.binary(min_size=0, max_size=5).map(lambda b: b.hex().encode()), max_size=4),
    bad=st.one_of(
        st.tuples(
            st.binary(max_size=5),
            st.sampled_from([b"\r", b"\n", b"\x00", b"\x1b", b"\x7f"]),
            st.binary(max_size=5),
        ).map(b"".join),
        st.binary(min_size=1, max_size=8).filter(lambda b: not _utf8(b)),
        st.just(b"y" * 201),
    ),
    noise=st.lists(st.tuples(st.binary(max_size=6), st.binary(max_size=6)), max_size=3),
)
def test_generated_bad_channel_queries(
    suite: Suite, good: list[bytes], bad: bytes, noise: list[tuple[bytes, bytes]]
) -> None:
    """Repeated and empty channels plus one bad one (CR/LF/NUL, not UTF-8, too long): JSON 400."""
    pairs = [b"channel=" + _q(g) for g in good] + [b"channel=" + _q(bad)]
    pairs += [_q(k or b"k") + b"=" + _q(v) for k, v in noise if (k or b"k") != b"channel"]
    refused_json(get(b"/events?" + b"&".join(pairs)), 400)


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@pytest.mark.parametrize(
    "target",
    [
        b"/events?channel=a%0d%0aevent:%20x",
        b"/events?channel=%00",
        b"/events?channel=%ff%fe",
        b"/events?channel=" + b"z" * 201,
        b"/events?channel=" + b"&channel=".join([b"ok"] * 50) + b"&channel=%0a",
        b"/events?" + b"channel=c&" * 1300 + b"channel=%0d",  # about 13 KiB of query
    ],
    ids=["crlf", "nul", "not-utf8", "too-long", "many-then-bad", "huge"],
)
def test_bad_stream_queries(suite: Suite, target: bytes) -> None:
    refused_json(get(target), 400)


def test_stream_headers(suite: Suite) -> None:
    """
    Odd Last-Event-IDs (over 1,024 bytes, not UTF-8, control bytes) are
    never refused (EventSource would give up for good): the stream opens
    with an sse.reset, whose JSON escapes them, so nothing leaks into the
    framing.
    """
    odds = [b"9" * 1025, b"\xff\xfe\x80", b"a\x01b\x1b[31m", b"x" * 1024, b"  ", b"id\x7f"]
    for odd in odds:
        sub = RawSubscriber(
            suite.server, "/events?channel=odd", {"Last-Event-ID": odd.decode("latin-1")}
        )
        try:
            sub.read_until(b"event: sse.reset\n", timeout=10) if odd.strip() else sub.read_until(
                b"retry: 2000\n\n"
            )
            assert sub.head().startswith(b"HTTP/1.1 200 ")
            sub.read_until(b"\n\n\r\n") if odd.strip() else None
            body = sub.body()
            for line in body.split(b"\n")[:-1]:
                assert _FRAME_LINE.match(line), line
        finally:
            sub.close()


def test_publish_headers(suite: Suite) -> None:
    """Bad Authorization and odd Content-Types are refused with JSON, and publish nothing."""
    ok = b'{"channel":"leak","data":"must not arrive"}'
    for auth in ["Bearer wrong", "Bearer " + "t" * 8000, "bearer  x y z"]:
        refused_json(post(ok, {"Authorization": auth}), 401)
    for ctype in [
        "text/plain",
        "application/jsonx",
        "application/x-www-form-urlencoded",
        "json",
        "",
        "application/json\x01",
    ]:
        refused_json(post(ok, {"Content-Type": ctype}), 415)
    refused_json(
        post(ok.replace(b"leak", b"x\\n"), {"Content-Type": "application/json; charset=utf-8"}), 400
    )


# Raw HTTP framing


def test_http_framing_attacks(suite: Suite) -> None:
    """
    Garbage, over-long request lines and headers, too many headers, broken
    bodies and smuggling attempts: Twisted refuses them (4xx or a close);
    none publishes anything.
    """
    leak = b'{"channel":"leak","data":1}'
    cases = [
        b"\x00\xff\xfe garbage \r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)),  # a TLS hello
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"h" * 20_000 + b"\r\n\r\n",
        b"GET /health HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(600)) + b"\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\nNoColonHere\r\n\r\n",
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 27\r\nTransfer-Encoding: chunked\r\n\r\n" + leak,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 27\r\nContent-Length: 5\r\n\r\n" + leak,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: -27\r\n\r\n" + leak,
        b"POST /publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\nzz\r\n" + leak + b"\r\n0\r\n\r\n",
        b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n",
        b"GET\r\n\r\n",
    ]
    for data in cases:
        refused_by_http(data)


def test_truncated_requests(suite: Suite) -> None:
    """Requests cut short (then closed) publish nothing and leave no trace."""
    leak = b'{"channel":"leak","data":1}'
    for data in [
        post(leak)[:-5],
        post(leak).partition(b"\r\n\r\n")[0],
        b"POST /publish HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        b"Content-Type: application/json\r\n\r\n1b\r\n" + leak[:10],
        b"GET /events?channel=c HTTP/1.1\r\nHost: x\r\nLast-Event-ID: 1",
    ]:
        with socket.create_connection(("127.0.0.1", suite.server.port), timeout=5) as sock:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(5)
            reply = b""
            try:
                while chunk := sock.recv(65536):
                    reply += chunk
            except ConnectionResetError:
                pass
        assert reply == b"" or reply.startswith(b"HTTP/1.1 4"), reply


def test_pipelined_requests(suite: Suite) -> None:
    """Pipelined requests are answered in order; only the valid publishes go out."""
    first = {"channel": "pipe", "data": 1}
    second = {"channel": "pipe", "event": "two", "text": "2"}
    data = (
        post(json.dumps(first).encode())
        + post(b'{"channel":"pipe","event":"x\\ny","data":3}')
        + get(b"/health")
        + post(json.dumps(second).encode())
        + post(b"[1]", {"Content-Type": "text/plain"})
        + get(b"/events?channel=%00")
    )
    answers = raw(data, responses=6)
    assert [a[0] for a in answers] == [200, 400, 200, 200, 415, 400]
    for a in (answers[1], answers[4], answers[5]):
        assert_json_error(a)
    suite.legit(answers[0][2], [("message", "1")])
    suite.legit(answers[3][2], [("two", "2")])


# Memory


def _attack_round() -> None:
    for _, body, status in BAD_BODIES:
        refused_json(post(body), status)
    refused_by_http(b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    refused_json(get(b"/events?" + b"channel=c&" * 1300 + b"channel=%0d"), 400)


def test_memory_returns_after_attacks(suite: Suite) -> None:
    """After a warm-up round, five more rounds of attacks grow the RSS by under 20 MiB."""
    pid = suite.server.pid
    _attack_round()
    before = rss(pid)
    for _ in range(5):
        _attack_round()
    suite.checkpoint()
    grown = rss(pid) - before
    assert grown < 20 * 1024 * 1024, f"RSS grew by {grown / 2**20:.1f} MiB"


# Once weaknesses, now fixed: kept as regression tests


def test_nesting_at_the_recursion_limit(suite: Suite) -> None:
    """Every nesting depth gets 200 or a JSON 4xx, never a 500 (and no traceback)."""
    statuses = set()
    for depth in range(850, 1050):
        data = "[" * depth + "]" * depth
        body = b'{"channel":"deep","data":' + data.encode() + b"}"
        [(status, headers, answer)] = raw(post(body))
        statuses.add(status)
        if status == 200:
            suite.legit(answer, [("message", data)])
        else:
            assert_json_error((status, headers, answer), 400)
    suite.checkpoint()
    assert statuses <= {200, 400}
