"""
Presence over every node: each node reports who holds its streams to Redis,
with an expiry, and answers C{GET /presence} from its own tallies plus every
other live node's report.

Keys (C{prefix} is C{sse:presence} by default):
    - C{{prefix}:node:{id}}: a hash, one per node, C{PEXPIRE}d to
      L{REPORT_TTL} on every report (every L{REPORT_INTERVAL} seconds):
      field C{c:{channel}} holds C{[clients, users, truncated]} of the
      streams naming that channel (users sorted and cut at the bound), field
      C{w} the wide groups (every channel, tokens' grants, patterns) as
      C{[[description, clients, users, truncated], ...]}. A report sends only
      the channels that changed since the last one; a node whose hash is gone
      (expired while it could not reach Redis, or Redis restarted) writes all
      of it again.
    - C{{prefix}:nodes}: a sorted set of node ids (score: the reporting
      node's wall clock, ms), to find the hashes; an id whose hash has expired
      is skipped, and ids silent for ten TTLs are removed.
    - C{{prefix}:u:{channel}\\n{user}}: the set of nodes where a user holds
      streams naming a channel, for C{sse.join}/C{sse.leave} across nodes
      (L{RedisPresence.decide}).

A node that dies without a word drops out of every answer once its hash
expires: within L{REPORT_TTL} seconds of its last report, so at most
L{REPORT_TTL} seconds after it died. A node that stops cleanly deletes its
hash at once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._reactor import default_reactor
from ..presence import Presence, PresenceTracker, Tally, describe, merge, receives
from .bus import RedisBus

__all__ = ["REPORT_INTERVAL", "REPORT_TTL", "RedisPresence"]

#: Seconds between a node's reports.
REPORT_INTERVAL = 2.0
#: Seconds a node's report lives unless refreshed: a node that dies drops out
#: of presence within this time.
REPORT_TTL = 6.0


def _bounded(tally: Tally, bound: int) -> list[Any]:
    users = sorted(tally.users)
    return [tally.clients, users[:bound], len(users) > bound]


class RedisPresence(Service):
    """
    Reports this node's presence to Redis and reads every node's.

    @param bus: the node's L{RedisBus}: its publishing connection carries
        the reports and reads (L{RedisBus.transaction}).
    @param tracker: the broker's L{PresenceTracker}.
    @param is_private: which channels are private (C{JWTAuth.is_private}),
        to judge other nodes' subscribers of every channel as they would.
    @param interval: seconds between reports.
    @param ttl: seconds a report lives unless refreshed.

    A service: starting it starts the reports; stopping it (also done just
    before the reactor shuts down, since C{SSEService} stops only its port
    and broker) deletes this node's report, so that it drops out at once.
    """

    log = Logger()

    def __init__(
        self,
        bus: RedisBus,
        tracker: PresenceTracker,
        *,
        is_private: Callable[[str], bool] | None = None,
        prefix: str = "sse:presence",
        interval: float = REPORT_INTERVAL,
        ttl: float = REPORT_TTL,
        reactor: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not 0 < interval < ttl:
            raise ValueError(f"need 0 < interval < ttl, got {interval} and {ttl}")
        self.bus = bus
        self.tracker = tracker
        self.is_private = is_private
        self.prefix = prefix
        self.interval = interval
        self.ttl = ttl
        self.node = bus.client_name
        self.key = f"{prefix}:node:{self.node}"
        self.nodes_key = f"{prefix}:nodes"
        #: Reports sent, and reports that failed (monitoring, tests).
        self.reports = 0
        self.failures = 0
        self._reactor = reactor
        self._wall = clock
        self._loop: LoopingCall | None = None
        self._full = True
        self._sending = False
        self._trigger: Any = None

    def startService(self) -> None:
        """Start reporting; stop (and delete the report) before the reactor shuts down."""
        super().startService()
        self.start()
        self._trigger = default_reactor(self._reactor).addSystemEventTrigger(
            "before", "shutdown", self.stop
        )

    def stopService(self) -> Deferred[None]:
        """Stop reporting and delete this node's report."""
        super().stopService()
        trigger, self._trigger = self._trigger, None
        if trigger is not None:
            default_reactor(self._reactor).removeSystemEventTrigger(trigger)
        return self.stop()

    def start(self) -> None:
        """Report now and every C{interval} seconds."""
        self.tracker.changed = set()
        self._full = True
        loop = self._loop = LoopingCall(self.report)
        loop.clock = default_reactor(self._reactor)
        loop.start(self.interval, now=True)

    def stop(self) -> Deferred[None]:
        """Stop reporting and delete this node's report (best effort)."""
        loop, self._loop = self._loop, None
        if loop is None:
            return succeed(None)
        if loop.running:
            loop.stop()
        self.tracker.changed = None
        return (
            self.bus.transaction([["DEL", self.key], ["ZREM", self.nodes_key, self.node]])
            .addCallback(lambda _: None)
            .addErrback(lambda _: None)
        )

    # Reporting

    def _field(self, channel: str) -> str:
        return "c:" + channel

    def _wide(self) -> str:
        groups = []
        for key, group in self.tracker.groups.items():
            described = describe(key)
            if described is not None:
                groups.append([described, *_bounded(group.tally, self.tracker.bound)])
        return json.dumps(groups, separators=(",", ":"))

    def report(self) -> Deferred[None]:
        """Send what changed (or everything, when Redis lost this node's hash)."""
        if self._sending:
            return succeed(None)
        tracker = self.tracker
        bound = tracker.bound
        ttl_ms = int(self.ttl * 1000)
        now_ms = int(self._wall() * 1000)
        full = self._full
        changed = tracker.changed if tracker.changed is not None else set()
        tracker.changed = set()
        fields: list[Any] = []
        gone: list[str] = []
        for channel in tracker.by_channel if full else changed:
            tally = tracker.by_channel.get(channel)
            if tally is None:
                gone.append(self._field(channel))
            else:
                fields += [self._field(channel), json.dumps(_bounded(tally, bound))]
        if full or tracker.wide_changed:
            tracker.wide_changed = False
            fields += ["w", self._wide()]
        # Field w is in every full report: without it the hash is gone (or
        # only L{decide} wrote to it), and the whole report must be sent.
        commands: list[list[Any]] = [["HEXISTS", self.key, "w"]]
        if full:
            commands.append(["DEL", self.key])
        if fields:
            commands.append(["HSET", self.key, *fields])
        if gone:
            commands.append(["HDEL", self.key, *gone])
        commands += [
            ["PEXPIRE", self.key, ttl_ms],
            ["ZADD", self.nodes_key, now_ms, self.node],
            ["ZREMRANGEBYSCORE", self.nodes_key, "-inf", now_ms - 10 * ttl_ms],
        ]
        self._sending = True

        def sent(replies: list[Any]) -> Deferred[None]:
            self._sending = False
            self.reports += 1
            self._full = False
            if not full and not int(replies[0]):
                # Redis no longer held this node's hash: everything again, now.
                self._full = True
                return self.report()
            return succeed(None)

        def failed(failure: Failure) -> None:
            self._sending = False
            self.failures += 1
            self._full = True  # what changed meanwhile is sent with the rest
            if self.bus.ready:
                # While Redis is away the bus logs the outage, once; only a
                # failure with Redis up says something of its own.
                self.log.debug("Presence report failed: {error}", error=failure.value)

        return self.bus.transaction(commands).addCallbacks(sent, failed)

    # Reading

    def presence(self, channel: str) -> Deferred[Presence]:
        """Who receives C{channel} on every live node: these tallies, the others' reports."""
        tracker = self.tracker
        local = [(t.clients, list(t.users), False) for t in tracker.tallies(channel)]
        now_ms = int(self._wall() * 1000)
        listing = self.bus.transaction(
            [["ZRANGEBYSCORE", self.nodes_key, now_ms - 10 * int(self.ttl * 1000), "+inf"]]
        )

        def read(replies: list[Any]) -> Deferred[list[Any]] | list[Any]:
            others = [str(n) for n in replies[0] if str(n) != self.node]
            if not others:
                return []
            field = self._field(channel)
            return self.bus.transaction(
                [["HMGET", f"{self.prefix}:node:{n}", field, "w"] for n in others]
            )

        def combine(reports: list[Any]) -> Presence:
            parts = list(local)
            for report in reports:
                named, wide = report if isinstance(report, list) else (None, None)
                if named is not None:
                    clients, users, cut = json.loads(named)
                    parts.append((clients, users, cut))
                for described, clients, users, cut in json.loads(wide) if wide else ():
                    if receives(described, channel, self.is_private):
                        parts.append((clients, users, cut))
            return merge(channel, parts, tracker.bound)

        return listing.addCallback(read).addCallback(combine)

    # sse.join / sse.leave across nodes

    def _user_key(self, channel: str, user: str) -> str:
        return f"{self.prefix}:u:{channel}\n{user}"

    def decide(self, channel: str, user: str, joining: bool) -> Deferred[bool]:
        """
        Record that C{user} now holds (or no longer holds) streams naming
        C{channel} on this node, and say whether that is a join (a leave)
        for the whole deployment: whether no other live node (one whose
        report has not expired) holds one. The change and the reading of
        the other members are one transaction, so two nodes deciding at once
        cannot both see themselves alone. Members of nodes no longer live
        are removed on the way.
        """
        key = self._user_key(channel, user)
        change = ["SADD", key, self.node] if joining else ["SREM", key, self.node]
        ttl_ms = int(self.ttl * 1000)
        # This node's hash exists from now on (even before its first report
        # gets through), so that others count its membership as live.
        commands: list[list[Any]] = [
            change,
            ["SMEMBERS", key],
            ["HSET", self.key, "a", 1],
            ["PEXPIRE", self.key, ttl_ms],
        ]

        def members(replies: list[Any]) -> Deferred[bool] | bool:
            others = sorted({str(m) for m in replies[1]} - {self.node})
            if not others:
                return True
            return self.bus.transaction(
                [["EXISTS", f"{self.prefix}:node:{n}"] for n in others]
            ).addCallback(lambda there: alive(others, there))

        def alive(others: Sequence[str], there: list[Any]) -> bool:
            dead = [n for n, exists in zip(others, there, strict=True) if not int(exists)]
            if dead:
                self.bus.transaction([["SREM", key, *dead]]).addErrback(lambda _: None)
            return len(dead) == len(others)

        return self.bus.transaction(commands).addCallback(members)
