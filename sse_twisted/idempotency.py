"""
Idempotent publishing: a publisher that did not see its answer (a timeout, a
proxy error) sends the same request again, and it is published once.

An item published with an idempotency key is remembered for a window
(L{DEFAULT_WINDOW} seconds by default) as the key, a fingerprint of the item
(L{fingerprint}: what subscribers would receive) and the id it was published
with. A repeat of the key within the window is answered with that id, marked
C{duplicate}, and delivers nothing; the same key with another item is a
conflict (C{409} over HTTP).

Where the keys live (L{IIdempotency}): in memory (L{MemoryIdempotency}: one
process, bounded in count), in memory backed by a table of an SQLite file
(L{SQLiteIdempotency}: survives a restart) or in Redis (L{RedisIdempotency}:
shared by every node of a relay). L{publish_once} is the one algorithm over
all three, and L{sse_twisted.SSEBroker.publish_items} hands it every batch
that holds a key.

The algorithm, and why:
  1. Claim every key of the batch at once. A claim is C{new} (it is now
     this request's, "pending"), C{duplicate} (answered before: its id),
     C{conflict} (the key was used for another item) or C{pending} (another
     request holds it and has not been answered yet). Claiming is atomic per
     key (one dict in one thread; C{SET NX} in Redis), so two identical
     requests arriving together never both get C{new}.
  2. Any conflict: the request is refused whole (409) and its new claims
     released; nothing is published. Any pending: the new claims are
     released (two batches holding each other's keys cannot wait on each
     other) and the claim is tried again after a short, doubling pause, for
     at most L{PENDING_WAIT} seconds; then the request is refused (409, "in
     progress").
  3. Otherwise the new items (and those without a key) are published in one
     call of the broker's publish path, all or none; duplicates are
     answered from their claims. If publishing fails, the new claims are
     released, so that a retry can publish.
  4. The ids are recorded before the answer is given: with SQLite the
     answer waits for the row's commit, so an acknowledged key survives a
     crash.

Divergences and limits, on purpose:
  - The window counts from the first request's claim (in Redis: from the
    record of its answer), not from the last repeat: a publisher retrying
    for longer than the window publishes again.
  - A node that dies between storing an event in Redis and recording its
    key leaves the key pending there for the rest of the window: repeats are
    then refused (409 "in progress") rather than published twice.
  - With SQLite, the key is committed after the event is delivered: a crash
    in between (before the 200) forgets the key, and a retry publishes again.
"""

from __future__ import annotations

import hashlib
import json
import math
import sqlite3
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, Protocol

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from .event import InvalidItem, Item
from .publishing import Published

__all__ = [
    "DEFAULT_MAX_KEYS",
    "DEFAULT_WINDOW",
    "MAX_WINDOW",
    "PENDING_WAIT",
    "Claim",
    "IIdempotency",
    "IdempotencyError",
    "KeyConflict",
    "KeyInProgress",
    "MemoryIdempotency",
    "RedisIdempotency",
    "SQLiteIdempotency",
    "TooManyKeys",
    "fingerprint",
    "idempotency_for",
    "publish_once",
]

#: Seconds a key is remembered by default.
DEFAULT_WINDOW = 300.0
#: Longest window C{twistd sse} takes (a week): keys are kept, at most, that long.
MAX_WINDOW = 7 * 86400.0
#: Keys a memory (or SQLite) store holds at most within its window.
DEFAULT_MAX_KEYS = 100_000
#: Longest wait, in seconds, for another request holding the same key to be
#: answered before a repeat is refused as "in progress".
PENDING_WAIT = 5.0
#: The SQLite table of L{SQLiteIdempotency}.
TABLE = "sse_idempotency"

#: Where refusals at the key bound are logged.
log = Logger()


class IdempotencyError(Exception):
    """
    A keyed publish refused as a whole: nothing was published.

    @ivar status: the HTTP status that says it.
    @ivar index: the item whose key is at fault (C{None}: not one item's).
    @ivar retry_after: seconds after which trying again may succeed.
    """

    status = 409

    def __init__(self, message: str, index: int | None = None, retry_after: float = 0) -> None:
        super().__init__(message)
        self.index = index
        self.retry_after = retry_after


class KeyConflict(IdempotencyError):
    """The key was used, within the window, for another item (409)."""


class KeyInProgress(IdempotencyError):
    """Another request holds the key and was not answered within L{PENDING_WAIT} (409)."""


class TooManyKeys(IdempotencyError):
    """
    The store holds as many keys as it may (503): refused rather than
    forgetting a key before its window ends, which would let a retry of it
    publish twice.
    """

    status = 503


@dataclass(frozen=True, slots=True)
class Claim:
    """What a store says of one key: see the module docstring, step 1."""

    state: Literal["new", "duplicate", "conflict", "pending"]
    #: The first publish's id, for a duplicate.
    id: str | None = None


#: The key is new: publish, then record the answer.
NEW = Claim("new")
#: The key was used with another body: refuse (409).
CONFLICT = Claim("conflict")
#: The key's first publish is still being stored: wait, then ask again.
PENDING = Claim("pending")


def fingerprint(item: Item) -> str:
    """
    What identifies an item's content: a hash of what subscribers would
    receive (channel, event, id, retry and the payload as encoded), so that
    the JSON's spacing does not count but a changed value does (and key
    order within C{data} does, since it changes the bytes sent).
    """
    canonical = json.dumps(
        [item.channel, item.event, item.id, item.retry, item.payload], ensure_ascii=True
    )
    return hashlib.sha256(canonical.encode("ascii")).hexdigest()[:32]


class IIdempotency(Protocol):
    """Where keys are claimed and their answers kept (see L{publish_once})."""

    #: Seconds a key is remembered.
    window: float

    def claim(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Claim]]:
        """
        Claim each C{(key, fingerprint)}: a C{new} claim is the caller's
        until it L{record}s or L{release}s it.

        @raise TooManyKeys: (as a failure) the store is full; nothing claimed.
        """
        ...

    def record(self, answers: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        """
        Record C{(key, fingerprint, id)} for claims that were published;
        fires once they are as durable as the store makes them.
        """
        ...

    def release(self, keys: Sequence[str]) -> None:
        """Give up claims whose publish failed: a retry may publish."""
        ...


#: A stored key: (key, fingerprint, id, expires).
_Row = tuple[str, str, str, float]


@dataclass(slots=True)
class _Entry:
    fingerprint: str
    id: str | None
    expires: float


class MemoryIdempotency:
    """
    Keys in memory, each forgotten C{window} seconds after its claim; at
    most C{max_keys} at once. At the bound, a request with a new key is
    refused (L{TooManyKeys}, 503 with C{Retry-After}: when the oldest key
    expires) rather than an older key forgotten early. One process only.

    @param reactor: an C{IReactorTime} (the global reactor if C{None}).
    """

    def __init__(
        self,
        window: float = DEFAULT_WINDOW,
        max_keys: int = DEFAULT_MAX_KEYS,
        reactor: Any = None,
    ) -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"idempotency window must be > 0 seconds, got {window}")
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, got {max_keys}")
        self.window = window
        self.max_keys = max_keys
        self._reactor = reactor
        # In claim order, which is expiry order (one window for all).
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        #: Requests refused because the store was full (monitoring).
        self.refused = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _now(self) -> float:
        return float(default_reactor(self._reactor).seconds())

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.expires > now:
                return
            del entries[key]

    def claim(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Claim]]:
        """Claim C{keys} (key, fingerprint); see L{IIdempotency.claim}."""
        now = self._now()
        self._expire(now)
        entries = self._entries
        claims = [self._judge(entries.get(key), fp) for key, fp in keys]
        fresh = {key for (key, _), c in zip(keys, claims, strict=True) if c is NEW}
        if fresh and len(entries) + len(fresh) > self.max_keys:
            self.refused += 1
            oldest = next(iter(entries.values())).expires if entries else now
            log.warn(
                "Refused a publish: {count} idempotency keys are held (the most);"
                " the oldest expires in {wait:.1f}s",
                count=len(entries),
                wait=oldest - now,
            )
            return fail(
                TooManyKeys(
                    f"too many idempotency keys within the window ({self.max_keys});"
                    " nothing was published, retry later",
                    retry_after=max(oldest - now, 0),
                )
            )
        expires = now + self.window
        for key, fp in keys:
            if key in fresh:
                entries[key] = _Entry(fp, None, expires)
        return succeed(claims)

    @staticmethod
    def _judge(entry: _Entry | None, fp: str) -> Claim:
        if entry is None:
            return NEW
        if entry.fingerprint != fp:
            return CONFLICT
        return PENDING if entry.id is None else Claim("duplicate", entry.id)

    def record(self, answers: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        """Record the ids the claimed keys were answered with; see L{IIdempotency.record}."""
        self._remember(answers)
        return succeed(None)

    def _remember(
        self, answers: Sequence[tuple[str, str, str]]
    ) -> list[tuple[str, str, str, float]]:
        """Set the ids of claimed keys; the rows to store (key, fp, id, expires)."""
        rows = []
        for key, fp, event_id in answers:
            entry = self._entries.get(key)
            if entry is None:  # expired while publishing: remember it from now
                entry = self._entries[key] = _Entry(fp, None, self._now() + self.window)
            entry.id = event_id
            rows.append((key, fp, event_id, entry.expires))
        return rows

    def release(self, keys: Sequence[str]) -> None:
        """Forget claims whose publish failed; see L{IIdempotency.release}."""
        for key in keys:
            entry = self._entries.get(key)
            if entry is not None and entry.id is None:
                del self._entries[key]


class SQLiteIdempotency(MemoryIdempotency):
    """
    L{MemoryIdempotency} whose answered keys are also written to a table of
    an SQLite file (the C{--history-db} file, say) and read back when it is
    opened again, so that a repeat after a restart is still a duplicate.

    Claims are decided in memory (this process owns the file's keys); each
    L{record} fires once its rows are committed (C{synchronous=FULL}),
    written off the reactor thread, one transaction at a time: the records
    that arrive while one commits go in the next. The table is created if it
    does not exist, from this store's own connection; the file's
    C{user_version} (its schema, owned by the history) is left alone.

    @param run: runs a function in a thread, a Deferred of its result
        (C{deferToThread} by default; tests pass one that runs it at once).
    """

    def __init__(
        self,
        path: str,
        window: float = DEFAULT_WINDOW,
        max_keys: int = DEFAULT_MAX_KEYS,
        reactor: Any = None,
        *,
        run: Callable[[Callable[[], None]], Deferred[None]] | None = None,
        open: bool = True,
    ) -> None:
        super().__init__(window, max_keys, reactor)
        self.path = path
        self._run = run
        self._queue: list[tuple[list[_Row], Deferred[None]]] = []
        self._busy = False
        self._max_keys = max_keys
        if open:
            self.open()

    def open(self) -> None:
        """
        Open the file and read back its unexpired keys. C{twistd sse} calls it
        as the application starts, with the history's file, after twistd
        daemonised: an SQLite connection must not cross a C{fork}.
        """
        max_keys = self._max_keys
        db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            with db:
                db.execute(
                    f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY,"
                    " fingerprint TEXT NOT NULL, event_id TEXT NOT NULL, expires REAL NOT NULL)"
                )
                db.execute(f"CREATE INDEX IF NOT EXISTS {TABLE}_expires ON {TABLE} (expires)")
            rows = db.execute(
                f"SELECT key, fingerprint, event_id, expires FROM {TABLE}"
                " WHERE expires > ? ORDER BY expires DESC LIMIT ?",
                (self._now(), max_keys),
            ).fetchall()
        except BaseException:
            db.close()
            raise
        self._db = db
        for key, fp, event_id, expires in reversed(rows):
            self._entries[key] = _Entry(fp, event_id, expires)

    def record(self, answers: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        """Record the ids the claimed keys were answered with; see L{IIdempotency.record}."""
        done: Deferred[None] = Deferred()
        self._queue.append((self._remember(answers), done))
        if not self._busy:
            self._commit_next()
        return done

    def _commit_next(self) -> None:
        batch, self._queue = self._queue, []
        self._busy = True
        rows = [row for rows, _ in batch for row in rows]
        now = self._now()

        def commit() -> None:
            with self._db:
                self._db.executemany(f"INSERT OR REPLACE INTO {TABLE} VALUES (?, ?, ?, ?)", rows)
                self._db.execute(f"DELETE FROM {TABLE} WHERE expires <= ?", (now,))

        def committed(result: Failure | None) -> None:
            self._busy = False
            for _, done in batch:
                if isinstance(result, Failure):
                    done.errback(result)
                else:
                    done.callback(None)
            if self._queue:
                self._commit_next()

        self._in_thread(commit).addBoth(committed)

    def _in_thread(self, f: Callable[[], None]) -> Deferred[None]:
        if self._run is not None:
            return self._run(f)
        from twisted.internet.threads import deferToThreadPool

        reactor = default_reactor(self._reactor)
        return deferToThreadPool(reactor, reactor.getThreadPool(), f)

    def close(self) -> None:
        """Close the file, if open (records still committing fail)."""
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()


class _Commands(Protocol):
    """What L{RedisIdempotency} needs of a relay: L{sse_twisted.redis.RedisBus}."""

    stream: str

    def transaction(self, commands: Sequence[Sequence[Any]]) -> Deferred[list[Any]]: ...


class RedisIdempotency:
    """
    Keys in Redis, shared by every node of a relay, on the relay's
    publishing connection: a claim is C{SET key "p <fingerprint>" NX PX
    window} and a C{GET} of what won, in one transaction, so exactly one of
    two identical requests on two nodes gets C{new}; the answer is recorded
    as C{"d <fingerprint> <id>"} for C{window} more seconds. Redis's memory
    is the bound on their number (each expires with its window).

    @param prefix: the keys' prefix; C{<relay stream>:idempotency:} by default.
    """

    def __init__(
        self, relay: _Commands, window: float = DEFAULT_WINDOW, prefix: str | None = None
    ) -> None:
        if not (window > 0 and math.isfinite(window)):
            raise ValueError(f"idempotency window must be > 0 seconds, got {window}")
        self.window = window
        self.relay = relay
        self.prefix = f"{relay.stream}:idempotency:" if prefix is None else prefix
        self._ms = max(1, math.ceil(window * 1000))

    def claim(self, keys: Sequence[tuple[str, str]]) -> Deferred[list[Claim]]:
        """Claim C{keys} (key, fingerprint); see L{IIdempotency.claim}."""
        commands: list[list[Any]] = []
        for key, fp in keys:
            name = self.prefix + key
            commands += [["SET", name, f"p {fp}", "NX", "PX", self._ms], ["GET", name]]

        def judge(replies: list[Any]) -> list[Claim]:
            claims = []
            for (_, fp), won, value in zip(keys, replies[::2], replies[1::2], strict=True):
                if won is not None:
                    claims.append(NEW)
                    continue
                state, _, rest = str(value or "").partition(" ")
                theirs, _, event_id = rest.partition(" ")
                if value is None:  # expired in between: try again
                    claims.append(PENDING)
                elif theirs != fp:
                    claims.append(CONFLICT)
                elif state == "d" and event_id:
                    claims.append(Claim("duplicate", event_id))
                else:
                    claims.append(PENDING)
            return claims

        return self.relay.transaction(commands).addCallback(judge)

    def record(self, answers: Sequence[tuple[str, str, str]]) -> Deferred[None]:
        """Record the ids the claimed keys were answered with; see L{IIdempotency.record}."""
        commands = [
            ["SET", self.prefix + key, f"d {fp} {event_id}", "PX", self._ms]
            for key, fp, event_id in answers
        ]
        return self.relay.transaction(commands).addCallback(lambda _: None)

    def release(self, keys: Sequence[str]) -> None:
        """Forget claims whose publish failed; see L{IIdempotency.release}."""
        if not keys:
            return

        def lost(failure: Failure) -> None:
            # The claims stay pending until they expire: repeats get 409.
            log.warn(
                "Could not release {count} idempotency key(s) in Redis ({error});"
                " repeats are refused as in progress until they expire",
                count=len(keys),
                error=failure.value,
            )

        self.relay.transaction([["DEL", *(self.prefix + key for key in keys)]]).addErrback(lost)


def publish_once(
    store: IIdempotency | None,
    items: Sequence[Item],
    publish: Callable[[Sequence[Item]], list[Published] | Deferred[list[Published]]],
    clock: Any,
) -> Deferred[list[Published]]:
    """
    Publish C{items}, those with an idempotency key at most once per key
    within C{store}'s window (the module docstring says how).

    @param publish: the broker's publish path, given the items to publish,
        their keys taken off.
    @param clock: an C{IReactorTime}, for waiting on a pending key.
    @raise InvalidItem: at once, when keys are off (C{store} is C{None}) or a
        key repeats within the batch; nothing is published.
    @return: one L{Published} per item, in order; a repeat's is marked
        C{duplicate}, with the first id and C{clients} 0. It fails with an
        L{IdempotencyError} (nothing published) or whatever C{publish}
        raised.
    """
    keyed: dict[str, int] = {}
    for index, item in enumerate(items):
        key = item.idempotency_key
        if key is None:
            continue
        if store is None:
            raise InvalidItem(
                "idempotency keys are turned off on this server (--idempotency-window 0)", index
            )
        if key in keyed:
            raise InvalidItem(f"idempotency_key {key!r} repeats item {keyed[key]}'s", index)
        keyed[key] = index
    assert store is not None
    prints = {key: fingerprint(items[index]) for key, index in keyed.items()}
    return Deferred.fromCoroutine(_publish_once(store, items, keyed, prints, publish, clock))


async def _publish_once(
    store: IIdempotency,
    items: Sequence[Item],
    keyed: Mapping[str, int],
    prints: Mapping[str, str],
    publish: Callable[[Sequence[Item]], list[Published] | Deferred[list[Published]]],
    clock: Any,
) -> list[Published]:
    pairs = [(key, prints[key]) for key in keyed]
    deadline = clock.seconds() + PENDING_WAIT
    pause = 0.01
    while True:
        claims = dict(zip(keyed, await store.claim(pairs), strict=True))
        fresh = [key for key, claim in claims.items() if claim.state == "new"]
        conflict = next((key for key, c in claims.items() if c.state == "conflict"), None)
        pending = next((key for key, c in claims.items() if c.state == "pending"), None)
        if conflict is None and pending is None:
            break
        store.release(fresh)
        if conflict is not None:
            raise KeyConflict(
                f"idempotency_key {conflict!r} was used for a different event"
                f" within the last {store.window:g}s; nothing was published",
                keyed[conflict],
            )
        assert pending is not None
        if clock.seconds() + pause > deadline:
            raise KeyInProgress(
                f"a request with idempotency_key {pending!r} is still in progress;"
                " this one published nothing, retry later",
                keyed[pending],
                retry_after=1,
            )
        await deferLater(clock, pause)
        pause = min(pause * 2, 0.25)
    news = [
        (index, item)
        for index, item in enumerate(items)
        if item.idempotency_key is None or claims[item.idempotency_key].state == "new"
    ]
    published: list[Published] = []
    if news:
        try:
            done = publish([replace(item, idempotency_key=None) for _, item in news])
            published = await done if isinstance(done, Deferred) else done
        except BaseException:
            store.release(fresh)
            raise
    answers: list[Published | None] = [None] * len(items)
    records = []
    for (index, item), result in zip(news, published, strict=True):
        answers[index] = replace(result, item=item)
        if item.idempotency_key is not None:
            records.append((item.idempotency_key, prints[item.idempotency_key], result.id))
    for key, index in keyed.items():
        claim = claims[key]
        if claim.state == "duplicate":
            assert claim.id is not None
            answers[index] = Published(items[index], claim.id, 0, duplicate=True)
    if records:
        try:
            await store.record(records)
        except Exception as e:
            # Published and delivered: the answer is still the truth about
            # the events; only a repeat after this may publish again.
            log.warn(
                "Could not record {count} idempotency key(s): {error}", count=len(records), error=e
            )
    return [answer for answer in answers if answer is not None]


def idempotency_for(
    options: Mapping[str, Any], relay: Any = None, reactor: Any = None
) -> IIdempotency | None:
    """
    The store C{twistd sse}'s options ask for: none with
    C{--idempotency-window 0}; with C{--redis}, in Redis (C{relay}, shared
    by the nodes); with C{--history-db}, in that file; else in memory.
    """
    window = float(options.get("idempotency-window", DEFAULT_WINDOW))
    if not window:
        return None
    if relay is not None:
        return RedisIdempotency(relay, window)
    path = options.get("history-db")
    if path:  # opened at start, with the history (OpenHistory in tap)
        return SQLiteIdempotency(path, window, reactor=reactor, open=False)
    return MemoryIdempotency(window, reactor=reactor)
