"""
Presence: who holds the open streams that receive a channel.

L{PresenceTracker} keeps, as streams open and end, the count of streams and
of each user's streams (a JWT's C{sub}), so that L{PresenceTracker.presence}
never walks the subscribers:
    - streams that name their channels: one tally per channel, updated on
      subscribe and end (O(1) per request, plus O(users) for the list);
    - streams of every channel with no filter: one tally, added to every
      channel's answer;
    - the rest ("wide": every channel with a private-channel filter, and
      pattern subscriptions where the broker has them): grouped by what
      they may read (one group per distinct token grant, or per distinct
      pattern set), each group asked once per request whether it receives
      the channel: O(distinct groups), not O(streams).

The user list is sorted and bounded (L{MAX_USERS}); beyond it,
C{users_truncated} says so. Anonymous streams (no C{sub}) count as clients,
never as users.

L{PresenceEvents} turns a user's first stream on a channel into an
C{sse.join} event on that channel, and their last one's end (after a grace
period, so that a reconnect is neither) into C{sse.leave}.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from ._reactor import default_reactor
from .auth import Grant
from .event import Item
from .publishing import Publishing, maybe_deferred
from .subscriber import Subscriber

__all__ = [
    "DEFAULT_LEAVE_GRACE",
    "JOIN",
    "LEAVE",
    "MAX_USERS",
    "Presence",
    "PresenceEvents",
    "PresenceTracker",
    "Tally",
    "merge",
]

#: The most users a presence answer lists (sorted; the first ones).
MAX_USERS = 1000

#: The event name of a user's first stream on a channel.
JOIN = "sse.join"
#: The event name of the end of a user's last stream on a channel (after the grace).
LEAVE = "sse.leave"

#: Seconds a user's last stream may be gone before C{sse.leave} is published.
DEFAULT_LEAVE_GRACE = 5.0


@dataclass(frozen=True, slots=True)
class Presence:
    """
    Who receives a channel: how many open streams, and the distinct users
    holding them (sorted, at most L{MAX_USERS}; C{users_truncated} when
    there are more).
    """

    channel: str
    clients: int
    users: tuple[str, ...]
    users_truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The C{GET /presence} answer (C{users_truncated} only when true)."""
        body: dict[str, Any] = {
            "channel": self.channel,
            "clients": self.clients,
            "users": list(self.users),
        }
        if self.users_truncated:
            body["users_truncated"] = True
        return body


class Tally:
    """Streams, and each user's streams, of one group (a channel, or a wide group)."""

    __slots__ = ("clients", "users")

    def __init__(self) -> None:
        self.clients = 0
        self.users: dict[str, int] = {}

    def add(self, user: str | None) -> bool:
        """Count one more stream; whether it is C{user}'s first here."""
        self.clients += 1
        if user is None:
            return False
        held = self.users.get(user, 0)
        self.users[user] = held + 1
        return held == 0

    def remove(self, user: str | None) -> bool:
        """Count one stream fewer; whether it was C{user}'s last here."""
        self.clients -= 1
        if user is None:
            return False
        held = self.users[user] - 1
        if held:
            self.users[user] = held
            return False
        del self.users[user]
        return True


def merge(
    channel: str, parts: Iterable[tuple[int, Iterable[str], bool]], bound: int = MAX_USERS
) -> Presence:
    """
    One L{Presence} from several parts (clients, users, truncated): tallies
    here, or other nodes' reports. Each part lists at least its first
    C{bound} users in order when truncated, so the first C{bound} of the union are exact.
    """
    clients = 0
    users: set[str] = set()
    truncated = False
    for count, names, cut in parts:
        clients += count
        users.update(names)
        truncated = truncated or cut
    first = heapq.nsmallest(bound + 1, users)
    truncated = truncated or len(first) > bound
    return Presence(channel, clients, tuple(first[:bound]), truncated)


def _grant_of(readable: object) -> Grant | bool | None:
    """
    The grant behind an L{sse_twisted.access.AllChannels} (C{None}: it allows
    no private channel), or C{False} when C{readable} is something else (an
    application's own container, which only its subscriber can be asked).
    """
    if type(readable).__name__ != "AllChannels":
        return False
    allows = getattr(readable, "_allows", None)
    if allows is None:
        return None
    owner = getattr(allows, "__self__", None)
    return owner if isinstance(owner, Grant) else False


def wide_key(sub: Subscriber) -> Hashable:
    """
    The group of a stream that does not name all its channels: streams in
    one group receive the same channels, so that one question per group
    answers for all. C{("all",)}: every channel, unfiltered.
    """
    patterns = getattr(sub, "patterns", None)  # pattern subscriptions, where the broker has them
    grant = _grant_of(sub.readable) if sub.channels is None or patterns else False
    if grant is False and sub.readable is not None and sub.readable is not sub.channels:
        return ("opaque", id(sub))
    subscribe = grant.subscribe if isinstance(grant, Grant) else None
    if patterns:
        return ("patterns", tuple(sorted(patterns)), tuple(sorted(sub.channels or ())), subscribe)
    if sub.readable is None:
        return ("all",)
    return ("grant", subscribe)


def describe(key: Hashable) -> dict[str, Any] | None:
    """
    A wide group's key as JSON for other nodes (L{receives}), or C{None}
    for one only its own subscriber can judge.
    """
    assert isinstance(key, tuple)
    kind = key[0]
    if kind == "all":
        return {"all": True}
    if kind == "grant":
        return {"grant": list(key[1]) if key[1] is not None else None}
    if kind == "patterns":
        return {
            "patterns": list(key[1]),
            "channels": list(key[2]),
            "grant": list(key[3]) if key[3] is not None else None,
        }
    return None


def receives(
    described: dict[str, Any], channel: str, is_private: Callable[[str], bool] | None
) -> bool:
    """
    Whether a wide group another node described (L{describe}) receives
    C{channel}, judged with this node's private channels (the nodes of one
    deployment share their options).
    """
    if described.get("all"):
        return True
    patterns = described.get("patterns")
    if patterns is not None and not (
        channel in described.get("channels", ()) or any(fnmatchcase(channel, p) for p in patterns)
    ):
        return False
    if is_private is None or not is_private(channel):
        return True
    grant = described.get("grant") or ()
    return any(fnmatchcase(channel, p) for p in grant)


class _Group:
    """Wide streams that receive the same channels: their tally and members."""

    __slots__ = ("members", "tally")

    def __init__(self) -> None:
        self.tally = Tally()
        self.members: set[Subscriber] = set()

    def receives(self, channel: str) -> bool:
        sub = next(iter(self.members))
        patterns = getattr(sub, "patterns", None)
        if patterns and not (
            (sub.channels is not None and channel in sub.channels)
            or any(fnmatchcase(channel, p) for p in patterns)
        ):
            return False
        return sub.may_read(channel)


#: Told C{(channel, user, present)} when a user's first stream naming a
#: channel opens (C{True}) or their last one ends (C{False}).
Listener = Callable[[str, str, bool], object]


class PresenceTracker:
    """
    The open streams by channel and user, kept as they open and end (the
    broker calls L{add} and L{remove}); see the module's docstring for the
    cost of a question.

    @ivar listeners: called on each user's first and last stream naming a
        channel (L{PresenceEvents}, the Redis reporter).
    @ivar changed: when not C{None}, the channels whose tallies changed since
        it was last emptied (for a reporter that sends only what changed);
        C{wide_changed} likewise for the wide groups.
    """

    def __init__(self, bound: int = MAX_USERS) -> None:
        self.bound = bound
        self.by_channel: dict[str, Tally] = {}
        self.groups: dict[Hashable, _Group] = {}
        self.listeners: list[Listener] = []
        self.changed: set[str] | None = None
        self.wide_changed = False
        self._where: dict[Subscriber, Hashable | None] = {}

    def __len__(self) -> int:
        return len(self._where)

    def add(self, sub: Subscriber) -> None:
        """Count an opening stream."""
        if sub in self._where:
            return
        user = sub.user
        if sub.channels is not None and not getattr(sub, "patterns", None):
            self._where[sub] = None
            firsts = []
            for channel in sub.channels:
                tally = self.by_channel.get(channel)
                if tally is None:
                    tally = self.by_channel[channel] = Tally()
                if tally.add(user):
                    firsts.append(channel)
            self._changed(sub.channels)
            for channel in firsts:
                self._tell(channel, user, True)
            return
        key = wide_key(sub)
        self._where[sub] = key
        group = self.groups.get(key)
        if group is None:
            group = self.groups[key] = _Group()
        group.members.add(sub)
        group.tally.add(user)
        self.wide_changed = True

    def remove(self, sub: Subscriber) -> None:
        """Forget an ended stream (one never added, or already removed, is ignored)."""
        if sub not in self._where:
            return
        key = self._where.pop(sub)
        user = sub.user
        if key is None:
            assert sub.channels is not None
            lasts = []
            for channel in sub.channels:
                tally = self.by_channel[channel]
                if tally.remove(user):
                    lasts.append(channel)
                if not tally.clients:
                    del self.by_channel[channel]
            self._changed(sub.channels)
            for channel in lasts:
                self._tell(channel, user, False)
            return
        group = self.groups[key]
        group.members.discard(sub)
        group.tally.remove(user)
        if not group.members:
            del self.groups[key]
        self.wide_changed = True

    def _changed(self, channels: Iterable[str]) -> None:
        if self.changed is not None:
            self.changed.update(channels)

    def _tell(self, channel: str, user: str | None, present: bool) -> None:
        if user is None:
            return
        for listener in self.listeners:
            listener(channel, user, present)

    def tallies(self, channel: str) -> list[Tally]:
        """This node's tallies that receive C{channel}."""
        found = [g.tally for g in self.groups.values() if g.receives(channel)]
        named = self.by_channel.get(channel)
        if named is not None:
            found.append(named)
        return found

    def presence(self, channel: str) -> Presence:
        """Who receives C{channel} here: streams, and their distinct users."""
        return merge(
            channel, ((t.clients, t.users, False) for t in self.tallies(channel)), self.bound
        )

    def named_users(self, channel: str) -> dict[str, int]:
        """Each user's streams that name C{channel} here (what join and leave follow)."""
        tally = self.by_channel.get(channel)
        return dict(tally.users) if tally is not None else {}


class PresenceEvents(Service):
    """
    Publishes C{sse.join} when a user's first stream naming a channel opens
    and C{sse.leave} once their last one has been gone for C{grace}
    seconds: a stream back within the grace period (a reconnect) is neither.
    The data is C{{"user": ..., "clients": n}}, C{n} the channel's clients
    (L{PresenceTracker.presence}) as it is published. They go through the
    broker's one publish path, so they get ids, history and the relay.

    Only streams that name the channel count (a stream of every channel, or
    of a pattern, would join every channel there is), and only streams with
    a user: anonymous ones come and go without a word.

    @param publisher: the broker.
    @param tracker: its L{PresenceTracker}.
    @param grace: seconds the last stream may be gone before the leave.
    @param reactor: an C{IReactorTime} for the grace timers (the global
        reactor when C{None}).
    @param shared: across nodes, told C{(channel, user, joining)} as this
        node's first stream of a user opens (its last one's grace ends), and
        answering (a Deferred) whether that is a join (leave) for the whole
        deployment (L{sse_twisted.redis.presence.RedisPresence.decide}); by
        default every node decides alone. Once the broker drains (or this
        service stops) nothing more is published: a server that stops is no
        leave for the streams it ends.
    """

    log = Logger()

    def __init__(
        self,
        publisher: Publishing,
        tracker: PresenceTracker,
        *,
        grace: float = DEFAULT_LEAVE_GRACE,
        reactor: Any = None,
        shared: Callable[[str, str, bool], Deferred[bool]] | None = None,
    ) -> None:
        if not grace >= 0:
            raise ValueError(f"grace must be >= 0 seconds, got {grace}")
        self.publisher = publisher
        self.tracker = tracker
        self.grace = grace
        self.shared = shared
        self._reactor = reactor
        self._stopped = False
        self._leaving: dict[tuple[str, str], IDelayedCall] = {}
        self._joining: dict[tuple[str, str], IDelayedCall] = {}
        #: Who this node has announced (joined and not left), per channel.
        self.announced: set[tuple[str, str]] = set()
        tracker.listeners.append(self._changed)

    @property
    def pending(self) -> int:
        """Leaves waiting out their grace period, and joins about to go out."""
        return len(self._leaving) + len(self._joining)

    def _changed(self, channel: str, user: str, present: bool) -> None:
        if self._stopped or getattr(self.publisher, "draining", False):
            return
        key = (channel, user)
        clock = default_reactor(self._reactor)
        if present:
            leaving = self._leaving.pop(key, None)
            if leaving is not None:
                leaving.cancel()  # back within the grace period: no leave, no join
                return
            if key not in self.announced and key not in self._joining:
                # Not now: the broker is in the middle of opening the stream.
                self._joining[key] = clock.callLater(0, self._join, key)
            return
        joining = self._joining.pop(key, None)
        if joining is not None:
            joining.cancel()  # gone before it was announced
            return
        if key in self.announced and key not in self._leaving:
            self._leaving[key] = clock.callLater(self.grace, self._leave, key)

    def _join(self, key: tuple[str, str]) -> None:
        del self._joining[key]
        self.announced.add(key)
        self._decide(JOIN, key)

    def _leave(self, key: tuple[str, str]) -> None:
        del self._leaving[key]
        self.announced.discard(key)
        self._decide(LEAVE, key)

    def _decide(self, name: str, key: tuple[str, str]) -> None:
        if self.shared is None:
            self._publish(name, key)
            return

        def decided(alone: bool) -> None:
            if alone:
                self._publish(name, key)

        def failed(failure: Failure) -> None:
            self.log.warn(
                "Not publishing {name} of {user} on {channel}: {error}",
                name=name,
                user=key[1],
                channel=key[0],
                error=failure.value,
            )

        self.shared(key[0], key[1], name == JOIN).addCallbacks(decided, failed)

    def _publish(self, name: str, key: tuple[str, str]) -> None:
        channel, user = key
        clients = self.tracker.presence(channel).clients
        item = Item.create(channel, name, {"user": user, "clients": clients})
        try:
            done = maybe_deferred(self.publisher.publish_items([item]))
        except Exception:
            self.log.failure("Publishing {name} on {channel} failed", name=name, channel=channel)
            return

        def failed(failure: Failure) -> None:
            self.log.warn(
                "Publishing {name} on {channel} failed: {error}",
                name=name,
                channel=channel,
                error=failure.value,
            )

        done.addCallbacks(lambda _published: None, failed)

    def stopService(self) -> None:
        """Cancel what is pending, and publish nothing more."""
        super().stopService()
        self.stop()

    def stop(self) -> None:
        """Cancel what is pending (the server is stopping: no leave for streams it ends)."""
        self._stopped = True
        for calls in (self._leaving, self._joining):
            for call in calls.values():
                if call.active():
                    call.cancel()
            calls.clear()
