"""
Idempotent publishing (issue 13): the key keepers on a Clock, and POST /publish
and publish(...) with keys, over a real HTTPChannel.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock

from sse_twisted import SSEBroker
from sse_twisted.event import MAX_IDEMPOTENCY_KEY_LENGTH, Event, Item
from sse_twisted.idempotency import (
    DEFAULT_WINDOW,
    PENDING_WAIT,
    TABLE,
    Claim,
    KeyConflict,
    MemoryIdempotency,
    RedisIdempotency,
    SQLiteIdempotency,
    TooManyKeys,
    fingerprint,
    idempotency_for,
)

from ..support.conn import JSON, Conn, post, serve
from .test_relay import LoopRelay

ONE = {"channel": "c", "event": "e", "data": {"n": 1}}


def key(k: str) -> dict[bytes, bytes]:
    return {b"idempotency-key": k.encode()}


def result(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has fired (failures raised)."""
    out: list[Any] = []
    d.addBoth(out.append)
    assert out, "not fired"
    if hasattr(out[0], "raiseException"):
        out[0].raiseException()
    return out[0]


class Manual:
    """Runs the SQLite store's thread jobs when told (a disk that takes its time)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], None], Deferred[None]]] = []

    def __call__(self, f: Callable[[], None]) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.jobs.append((f, d))
        return d

    def run_all(self) -> int:
        ran = 0
        while self.jobs:
            f, d = self.jobs.pop(0)
            maybeDeferred(f).chainDeferred(d)
            ran += 1
        return ran


def at_once(f: Callable[[], None]) -> Deferred[None]:
    return maybeDeferred(f)


# --- the keeper --------------------------------------------------------------


def test_memory_claim_record_duplicate_conflict(clock: Clock) -> None:
    """
    A new key is claimed (then pending for a repeat); once recorded, a repeat
    is a duplicate with its id, another fingerprint a conflict; a released
    claim is new again.
    """
    store = MemoryIdempotency(10, reactor=clock)
    assert result(store.claim([("k", "f1")])) == [Claim("new")]
    assert result(store.claim([("k", "f1"), ("k2", "f1")])) == [Claim("pending"), Claim("new")]
    store.release(["k2"])
    result(store.record([("k", "f1", "id-1")]))
    assert result(store.claim([("k", "f1")])) == [Claim("duplicate", "id-1")]
    assert result(store.claim([("k", "f2")])) == [Claim("conflict")]
    assert result(store.claim([("k2", "f1")])) == [Claim("new")]
    store.release(["k"])  # answered keys are not released
    assert result(store.claim([("k", "f1")])) == [Claim("duplicate", "id-1")]


def test_memory_window_expiry(clock: Clock) -> None:
    """A key is remembered for the window from its claim, then forgotten."""
    store = MemoryIdempotency(10, reactor=clock)
    result(store.claim([("k", "f")]))
    result(store.record([("k", "f", "id-1")]))
    clock.advance(9.9)
    assert result(store.claim([("k", "f")])) == [Claim("duplicate", "id-1")]
    clock.advance(0.1)
    assert result(store.claim([("k", "f2")])) == [Claim("new")]
    assert len(store) == 1


def test_memory_bound_refuses_rather_than_forgets(clock: Clock) -> None:
    """
    At max_keys, a claim of a new key fails (TooManyKeys, retry after the
    oldest expires) and claims nothing; known keys are still answered, and
    no key is forgotten before its window ends.
    """
    store = MemoryIdempotency(10, max_keys=2, reactor=clock)
    for n in (1, 2):
        result(store.claim([(f"k{n}", "f")]))
        result(store.record([(f"k{n}", "f", f"id-{n}")]))
        clock.advance(1)
    with pytest.raises(TooManyKeys) as info:
        result(store.claim([("k1", "f"), ("k3", "f")]))
    assert info.value.status == 503 and info.value.retry_after == pytest.approx(8)
    assert store.refused == 1
    assert result(store.claim([("k1", "f")])) == [Claim("duplicate", "id-1")]
    assert result(store.claim([("k2", "f")])) == [Claim("duplicate", "id-2")]
    clock.advance(8)  # k1 expires
    assert result(store.claim([("k3", "f")])) == [Claim("new")]


def test_fingerprint_is_what_subscribers_receive() -> None:
    """
    The fingerprint ignores the key and JSON spacing, and changes with any
    field that changes what is sent.
    """
    base = Item.from_mapping(json.loads('{"channel": "c", "data": {"a": 1,  "b": [1, 2]}}'))
    same = Item.from_mapping(
        {"channel": "c", "data": {"a": 1, "b": [1, 2]}, "idempotency_key": "x"}
    )
    assert fingerprint(base) == fingerprint(same)
    for other in (
        Item.create("c", data={"a": 1, "b": [1, 3]}),
        Item.create("d", data={"a": 1, "b": [1, 2]}),
        Item.create("c", "e", {"a": 1, "b": [1, 2]}),
        Item.create("c", data={"a": 1, "b": [1, 2]}, retry=5),
        Item.create("c", data={"a": 1, "b": [1, 2]}, id="i"),
    ):
        assert fingerprint(other) != fingerprint(base)


# --- POST /publish -------------------------------------------------------------


def test_header_repeat_is_a_duplicate_and_delivers_nothing(clock: Clock) -> None:
    """
    A repeat of an Idempotency-Key is answered with the first id, clients 0
    and "duplicate": true, and no subscriber receives it again.
    """
    broker, site = serve(clock)
    sub = Conn(site, b"/events?channel=c")
    first = post(site, ONE, key("order-7"))
    assert (first.status, first.json()) == (200, {"id": "t-1", "clients": 1})
    again = post(site, {"event": "e", "data": {"n": 1}, "channel": "c"}, key("order-7"))
    assert (again.status, again.json()) == (200, {"id": "t-1", "clients": 0, "duplicate": True})
    assert [(e.data, e.last_event_id) for e in sub.events()] == [('{"n":1}', "t-1")]
    assert broker.stats.published == 1


def test_same_key_other_body_is_409(clock: Clock) -> None:
    """A key reused with a different body is a 409 JSON error; nothing is delivered."""
    broker, site = serve(clock)
    post(site, ONE, key("k"))
    sub = Conn(site, b"/events?channel=c")
    r = post(site, {**ONE, "data": {"n": 2}}, key("k"))
    assert r.status == 409
    assert "different event" in r.json()["error"]
    assert sub.events() == [] and broker.stats.published == 1


def test_batch_field_mixed_duplicates_and_new(clock: Clock) -> None:
    """
    In a batch, each item's "idempotency_key" counts alone: repeats are
    answered as duplicates, new and unkeyed items are published, in order.
    """
    broker, site = serve(clock)
    sub = Conn(site, b"/events?channel=c")
    r1 = post(site, [{**ONE, "idempotency_key": "a"}, {"channel": "c", "data": 2}])
    assert r1.json() == [{"id": "t-1", "clients": 1}, {"id": "t-2", "clients": 1}]
    r2 = post(
        site,
        [
            {"channel": "c", "data": 3, "idempotency_key": "b"},
            {**ONE, "idempotency_key": "a"},
            {"channel": "c", "data": 2},
        ],
    )
    assert r2.json() == [
        {"id": "t-3", "clients": 1},
        {"id": "t-1", "clients": 0, "duplicate": True},
        {"id": "t-4", "clients": 1},
    ]
    assert [e.data for e in sub.events()] == ['{"n":1}', "2", "3", "2"]


def test_batch_conflict_publishes_nothing(clock: Clock) -> None:
    """
    One conflicting key in a batch refuses it whole (409 naming the item);
    its new keys stay free.
    """
    broker, site = serve(clock)
    post(site, [{**ONE, "idempotency_key": "a"}])
    r = post(
        site,
        [
            {"channel": "c", "data": 9, "idempotency_key": "b"},
            {**ONE, "idempotency_key": "a", "data": 0},
        ],
    )
    assert r.status == 409 and r.json()["error"].startswith("item 1: ")
    assert broker.stats.published == 1
    r = post(site, [{"channel": "c", "data": 9, "idempotency_key": "b"}])
    assert r.json() == [{"id": "t-2", "clients": 0}]


@pytest.mark.parametrize(
    "body, headers, words",
    [
        ([{**ONE, "idempotency_key": "a"}, {**ONE, "idempotency_key": "a"}], {}, "item 1: "),
        ([ONE], key("a"), "give each item of a batch"),
        ({**ONE, "idempotency_key": "a"}, key("b"), "differ"),
        ({**ONE, "idempotency_key": "x" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)}, {}, "1 to 255"),
        (ONE, key("x" * (MAX_IDEMPOTENCY_KEY_LENGTH + 1)), "1 to 255"),
        (ONE, key("has space"), "visible ASCII"),
        (ONE, {b"idempotency-key": "clé".encode()}, "visible ASCII"),
        (ONE, {b"idempotency-key": b""}, "visible ASCII"),
        ({**ONE, "idempotency_key": 7}, {}, "idempotency_key must be a string"),
    ],
)
def test_bad_keys_are_400(clock: Clock, body: Any, headers: dict[bytes, bytes], words: str) -> None:
    """
    Keys are 1 to 255 visible ASCII characters, one per item, once per
    batch: else 400, and nothing is published.
    """
    broker, site = serve(clock)
    r = post(site, body, headers)
    assert r.status == 400, r.json()
    assert words in r.json()["error"]
    assert broker.stats.published == 0


def test_longest_key_is_accepted(clock: Clock) -> None:
    """A key of exactly 255 characters is taken."""
    _, site = serve(clock)
    longest = "~" * MAX_IDEMPOTENCY_KEY_LENGTH
    assert post(site, ONE, key(longest)).status == 200
    assert post(site, ONE, key(longest)).json()["duplicate"] is True


def test_window_expiry_publishes_again(clock: Clock) -> None:
    """After the window, the same key publishes again, with a new id."""
    broker, site = serve(clock, idempotency=30)
    assert post(site, ONE, key("k")).json() == {"id": "t-1", "clients": 0}
    clock.advance(29)
    assert post(site, ONE, key("k")).json()["duplicate"] is True
    clock.advance(1)
    assert post(site, ONE, key("k")).json() == {"id": "t-2", "clients": 0}


def test_keys_turned_off_are_refused(clock: Clock) -> None:
    """With idempotency off, a keyed publish is a 400 that says so, rather than a silent repeat."""
    broker, site = serve(clock, idempotency=0)
    assert broker.idempotency is None
    r = post(site, ONE, key("k"))
    assert r.status == 400 and "turned off" in r.json()["error"]
    assert post(site, ONE).status == 200


def test_full_store_is_503_with_retry_after(clock: Clock) -> None:
    """At the key bound a new key gets 503 and Retry-After; nothing is published."""
    broker, site = serve(clock, idempotency=MemoryIdempotency(60, max_keys=1, reactor=clock))
    post(site, ONE, key("a"))
    clock.advance(20)
    r = post(site, ONE, key("b"))
    assert r.status == 503 and r.header(b"retry-after") == b"40"
    assert "too many idempotency keys" in r.json()["error"]
    assert broker.stats.published == 1
    assert post(site, ONE, key("a")).json()["duplicate"] is True


def test_concurrent_repeat_waits_for_the_first(clock: Clock) -> None:
    """
    A repeat that arrives while the first is still being stored (a relay
    that has not answered) is not published: it waits and gets the first
    id as a duplicate.
    """
    relay = LoopRelay()
    relay.hold = True
    broker, site = serve(clock, relay=relay, id_prefix=None)
    sub = Conn(site, b"/events?channel=c")
    first = post(site, ONE, key("k"))
    second = post(site, ONE, key("k"))
    assert first.raw() == second.raw() == b""
    clock.advance(0.5)
    assert len(relay.stored) == 1 and second.raw() == b""
    relay.pending.pop().callback(["1000-0"])
    assert first.json() == {"id": "1000-0", "clients": 1}
    clock.advance(0.5)
    assert relay.pending == []  # nothing new to publish: the relay is not asked
    assert second.json() == {"id": "1000-0", "clients": 0, "duplicate": True}
    assert len(relay.stored) == 1
    assert [e.last_event_id for e in sub.events()] == ["1000-0"]


def test_repeat_while_first_hangs_is_409_in_progress(clock: Clock) -> None:
    """A repeat waits at most PENDING_WAIT for the first one's answer, then 409 'in progress'."""
    relay = LoopRelay()
    relay.hold = True
    broker, site = serve(clock, relay=relay, id_prefix=None)
    post(site, ONE, key("k"))
    second = post(site, ONE, key("k"))
    for _ in range(int(PENDING_WAIT / 0.25) + 10):
        clock.advance(0.25)
    assert second.status == 409 and "in progress" in second.json()["error"]
    assert second.header(b"retry-after") == b"1"
    assert len(relay.stored) == 1
    assert clock.getDelayedCalls() == []


def test_failed_publish_releases_the_key(clock: Clock) -> None:
    """A publish that failed (503) leaves its key free: the retry publishes."""
    relay = LoopRelay()
    relay.hold = True
    broker, site = serve(clock, relay=relay, id_prefix=None)
    r = post(site, ONE, key("k"))
    relay.pending.pop().errback(ConnectionError("lost Redis"))
    assert r.status == 503
    relay.hold = False
    assert post(site, ONE, key("k")).json() == {"id": "1001-0", "clients": 0}


def test_relay_refusing_an_id_is_still_400(clock: Clock) -> None:
    """A keyed item that the relay refuses (its own id) is a 400, as unkeyed."""
    broker, site = serve(clock, relay=LoopRelay(), id_prefix=None)
    r = post(site, {**ONE, "id": "mine"}, key("k"))
    assert r.status == 400 and "chosen by the relay" in r.json()["error"]
    r = post(site, {**ONE, "id": "mine"}, key("k"))
    assert r.status == 400


# --- in code -------------------------------------------------------------------


def test_publish_with_idempotency_key(clock: Clock) -> None:
    """publish(idempotency_key=) publishes once; the repeat's event has the first id."""
    broker, site = serve(clock)
    sub = Conn(site, b"/events?channel=c")
    first = result(broker.publish("c", "e", {"n": 1}, idempotency_key="k"))
    again = result(broker.publish("c", "e", {"n": 1}, idempotency_key="k"))
    assert isinstance(first, Event) and first.id == again.id == "t-1"
    assert first.frame == again.frame
    assert len(sub.events()) == 1
    done = result(broker.publish_items([Item.create("c", "e", {"n": 1}, idempotency_key="k")]))
    assert done[0].duplicate and done[0].id == "t-1"
    with pytest.raises(KeyConflict):
        result(broker.publish("c", "e", {"n": 2}, idempotency_key="k"))
    with pytest.raises(ValueError, match="visible ASCII"):
        broker.publish("c", data=1, idempotency_key="")


def test_publish_many_with_keys(clock: Clock) -> None:
    """publish_many takes "idempotency_key" in its mappings."""
    broker, _ = serve(clock)
    items = [{"channel": "c", "data": n, "idempotency_key": f"k{n}"} for n in range(3)]
    assert [e.id for e in result(broker.publish_many(items))] == ["t-1", "t-2", "t-3"]
    assert [e.id for e in result(broker.publish_many(items))] == ["t-1", "t-2", "t-3"]
    assert broker.stats.published == 3


# --- SQLite ---------------------------------------------------------------------


def test_sqlite_keys_survive_a_reopen(tmp_path: Path, clock: Clock) -> None:
    """
    Answered keys are read back when the file is opened again (a restart),
    until their window ends; expired rows are pruned.
    """
    path = str(tmp_path / "history.db")
    store = SQLiteIdempotency(path, 60, reactor=clock, run=at_once)
    result(store.claim([("k", "f"), ("old", "f")]))
    result(store.record([("k", "f", "run1-1"), ("old", "f", "run1-2")]))
    store.close()
    clock.advance(30)
    again = SQLiteIdempotency(path, 60, reactor=clock, run=at_once)
    assert result(again.claim([("k", "f")])) == [Claim("duplicate", "run1-1")]
    assert result(again.claim([("k", "g")])) == [Claim("conflict")]
    clock.advance(31)
    result(again.claim([("new", "f")]))
    result(again.record([("new", "f", "run2-1")]))
    again.close()
    third = SQLiteIdempotency(path, 60, reactor=clock, run=at_once)
    assert result(third.claim([("k", "f")])) == [Claim("new")]
    db = sqlite3.connect(path)
    assert db.execute(f"SELECT key FROM {TABLE}").fetchall() == [("new",)]
    db.close()
    third.close()


def test_sqlite_leaves_the_schema_version_alone(tmp_path: Path, clock: Clock) -> None:
    """The store adds its table to a file another owner versions, without touching user_version."""
    path = str(tmp_path / "history.db")
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE events (id TEXT)")
    db.execute("PRAGMA user_version = 7")
    db.commit()
    SQLiteIdempotency(path, 60, reactor=clock, run=at_once).close()
    SQLiteIdempotency(path, 60, reactor=clock, run=at_once).close()
    assert db.execute("PRAGMA user_version").fetchone() == (7,)
    names = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert names == {"events", TABLE}
    db.close()


def test_sqlite_answer_waits_for_the_commit(tmp_path: Path, clock: Clock) -> None:
    """
    POST /publish with a key answers only once the key's row is committed;
    records that arrive meanwhile are committed together, in the next
    transaction; a repeat after a reopen is a duplicate.
    """
    disk = Manual()
    path = str(tmp_path / "h.db")
    store = SQLiteIdempotency(path, 60, reactor=clock, run=disk)
    broker, site = serve(clock, idempotency=store)
    a = post(site, ONE, key("a"))
    b = post(site, ONE, key("b"))
    c = post(site, ONE, key("c"))
    assert a.raw() == b.raw() == c.raw() == b""
    assert len(disk.jobs) == 1  # a's commit; b's and c's wait for it
    assert disk.run_all() == 2
    assert [r.json()["id"] for r in (a, b, c)] == ["t-1", "t-2", "t-3"]
    store.close()
    reopened = SQLiteIdempotency(path, 60, reactor=clock, run=disk)
    _, site2 = serve(clock, idempotency=reopened)
    assert post(site2, ONE, key("b")).json() == {"id": "t-2", "clients": 0, "duplicate": True}
    reopened.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_commits_in_a_thread(tmp_path: Path) -> None:
    """By default the commit runs off the reactor thread (the reactor's pool) and fires after it."""
    import threading

    from twisted.internet import reactor

    path = str(tmp_path / "h.db")
    store = SQLiteIdempotency(path, 60)
    threads: list[str] = []
    # Called in the thread that runs each statement.
    store._db.set_trace_callback(lambda _: threads.append(threading.current_thread().name))
    await store.claim([("k", "f")])
    await store.record([("k", "f", "id-1")]).addTimeout(10, reactor)
    assert threads and threading.main_thread().name not in threads
    store.close()
    reopened = SQLiteIdempotency(path, 60)
    assert (await reopened.claim([("k", "f")])) == [Claim("duplicate", "id-1")]
    reopened.close()


# --- options ----------------------------------------------------------------------


def test_idempotency_for_options(tmp_path: Path, clock: Clock) -> None:
    """The window option picks the store: none for 0, the file with --history-db, else memory."""
    assert idempotency_for({"idempotency-window": 0.0}) is None
    memory = idempotency_for({"idempotency-window": 12.0}, reactor=clock)
    assert isinstance(memory, MemoryIdempotency) and memory.window == 12
    path = str(tmp_path / "h.db")
    sqlite = idempotency_for({"idempotency-window": 5.0, "history-db": path}, reactor=clock)
    assert isinstance(sqlite, SQLiteIdempotency) and sqlite.path == path
    sqlite.close()

    class Bus:
        stream = "sse:events"

    redis = idempotency_for({"idempotency-window": 7.0}, Bus())
    assert isinstance(redis, RedisIdempotency) and redis.prefix == "sse:events:idempotency:"
    assert SSEBroker(reactor=clock).idempotency.window == DEFAULT_WINDOW  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="window"):
        MemoryIdempotency(-1)


def test_idempotency_window_option() -> None:
    """--idempotency-window: default 300, 0 turns keys off; bad values are one usage line."""
    from twisted.python import usage

    from sse_twisted.tap import Options, makeService

    options = Options()
    options.parseOptions([])
    assert options["idempotency-window"] == DEFAULT_WINDOW
    service = makeService(options)
    assert service.broker.idempotency.window == DEFAULT_WINDOW  # type: ignore[attr-defined]
    options = Options()
    options.parseOptions(["--idempotency-window", "0"])
    assert makeService(options).broker.idempotency is None  # type: ignore[attr-defined]
    for bad, words in [
        ("-1", "must not be negative"),
        ("abc", "must be a number of seconds"),
        ("nan", "finite"),
        ("1e9", "at most 604800 seconds"),
    ]:
        with pytest.raises(usage.UsageError) as info:
            Options().parseOptions(["--idempotency-window", bad])
        assert words in str(info.value) and "\n" not in str(info.value)
        assert str(info.value).startswith("--idempotency-window")


def test_unkeyed_requests_are_unchanged(clock: Clock) -> None:
    """Without a key, publishing answers from render as before (no Deferred, no store)."""
    broker, site = serve(clock)
    assert isinstance(broker.publish_items([Item.create("c", data=1)]), list)
    r = Conn(site, b"/publish", method=b"POST", headers=JSON, body=b'{"channel":"c","data":1}')
    assert r.json() == {"id": "t-2", "clients": 0}
    assert len(broker.idempotency) == 0  # type: ignore[arg-type]


# --- the model ------------------------------------------------------------------


class KeysModel(RuleBasedStateMachine):
    """
    Keyed batches (a few keys, a few bodies) and time passing, against a
    model of what must happen: within the window a key is published at most
    once and every repeat is answered with its first id; another body with a
    live key refuses the whole batch; after the window the key publishes anew.
    """

    WINDOW = 10.0

    def __init__(self) -> None:
        super().__init__()
        self.clock = Clock()
        self.broker = SSEBroker(reactor=self.clock, heartbeat=0, idempotency=self.WINDOW)
        # key -> (data, id, claimed at): what the model says is remembered.
        self.known: dict[str, tuple[int, str, float]] = {}
        self.expected_published = 0

    def _live(self, key: str) -> tuple[int, str, float] | None:
        entry = self.known.get(key)
        if entry is not None and entry[2] + self.WINDOW > self.clock.seconds():
            return entry
        return None

    @rule(
        batch=st.lists(
            st.tuples(st.sampled_from("abcd"), st.integers(0, 2)),
            min_size=1,
            max_size=3,
            unique_by=lambda t: t[0],
        ),
        unkeyed=st.booleans(),
    )
    def publish(self, batch: list[tuple[str, int]], unkeyed: bool) -> None:
        items = [Item.create("c", data=n, idempotency_key=k) for k, n in batch]
        if unkeyed:
            items.append(Item.create("c", data=-1))
        out: list[Any] = []
        maybeDeferred(self.broker.publish_items, items).addBoth(out.append)
        if any((live := self._live(k)) is not None and live[0] != n for k, n in batch):
            assert isinstance(out[0].value, KeyConflict), out[0]
            return
        answers = out[0]
        assert len(answers) == len(items)
        for (k, n), p in zip(batch, answers, strict=False):
            live = self._live(k)
            if live is None:
                assert not p.duplicate
                self.known[k] = (n, p.id, self.clock.seconds())
                self.expected_published += 1
            else:
                assert p.duplicate and p.id == live[1] and p.clients == 0
        if unkeyed:
            assert not answers[-1].duplicate
            self.expected_published += 1

    @rule(seconds=st.sampled_from([0.5, 3.0, 9.9, 10.0]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @invariant()
    def published_as_the_model_says(self) -> None:
        assert self.broker.stats.published == self.expected_published


KeysModel.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_keys_model = KeysModel.TestCase
