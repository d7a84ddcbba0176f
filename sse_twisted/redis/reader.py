"""
This node's place in the stream: the cursor, the mirror, and whether
anything unread was lost.

Each read is an C{XREAD} after the cursor and an C{XRANGE cursor cursor}:
the first one after (re)connecting a C{MULTI} of the two, non-blocking;
then, while connected, a blocking C{XREAD} with the C{XRANGE} pipelined
behind it (L{StreamReader.read_blocking}). Streams are trimmed from their oldest end, so
"the cursor's entry is still there" proves that nothing after it was trimmed
unread; when it is gone, the stream's counters (C{XINFO STREAM}) decide. On
Redis 7 and later the check is exact (C{entries-added}); before 7, a cursor
trimmed away counts as a gap, and a burst trimmed before a node read
anything of an empty stream goes unnoticed.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from twisted.logger import Logger

from ..event import Event
from .entries import entry_event, stream_id_key
from .history import StreamHistory
from .link import Link, describe

__all__ = ["Gap", "StreamReader"]


class Gap(NamedTuple):
    """Entries after C{last_id} that this node never read are gone."""

    last_id: str
    #: C{"stream-trimmed"} or C{"stream-lost"}.
    reason: str


def _entries(reply: Any) -> list[Any]:
    """The entries of an C{XREAD} reply (C{None} when there were none)."""
    return [entry for _key, found in reply or () for entry in found]


def _stream_info(reply: Any) -> dict[str, Any] | None:
    """C{XINFO STREAM}'s fields as a dict; C{None} when the stream does not exist."""
    if not isinstance(reply, list):
        return None
    return dict(zip(reply[::2], reply[1::2], strict=False))


class StreamReader:
    """
    Reads one stream after a cursor, keeps L{history} (the mirror) in step,
    and tells when entries this node never read are gone.

    It delivers nothing itself: L{take} turns each entry read into the
    event to deliver, and the caller hands it on, so that what happens
    around a delivery (stopping, errors of the callback) stays the bus's.

    @ivar cursor: the id of the last entry taken (or preloaded): where
        reading continues. C{None} until L{rebuild} decides it.
    @ivar added: entries the stream had taken up to and including the
        cursor (C{XINFO}'s C{entries-added}, Redis 7+), C{None} when
        unknown: tells a trim that removed only read entries from one that
        removed unread ones. Set it to C{None} when Redis restarted: its
        count may not be the one this node followed.
    """

    log = Logger()

    def __init__(self, stream: str, history: StreamHistory) -> None:
        self.stream = stream
        self.history = history
        self.cursor: str | None = None
        self.added: int | None = None

    async def read(self, link: Link, count: int) -> tuple[list[Any], Gap | None]:
        """
        The entries after the cursor (at most C{count}), read in one
        transaction with a check that Redis still holds the cursor's entry,
        and the gap before them if entries were lost (the mirror is then
        restarted or rebuilt already).

        The common case costs one small C{XRANGE} more. When the cursor's
        entry is gone, or when reading from the start of a stream that was
        empty, L{_read_checked} decides whether anything unread was lost.
        """
        cursor = self.cursor
        assert cursor is not None
        held, reply = await link.transaction(self._read_commands(cursor, count))
        entries = _entries(reply)
        if held or (cursor == "0-0" and not entries):
            return entries, None
        return await self._read_checked(link, cursor, count)

    async def read_blocking(
        self, link: Link, count: int, block_ms: int, timeout: float
    ) -> tuple[list[Any], Gap | None]:
        """
        The entries after the cursor (at most C{count}), waiting up to
        C{block_ms} for some, and the gap before them if entries were lost:
        L{read}'s answer in one round trip while nothing is lost.

        One write holds C{XREAD COUNT BLOCK} and, behind it, C{XRANGE cursor
        cursor}. Redis runs a connection's commands in order, so the
        C{XRANGE} runs once the read has returned: the cursor's entry still
        being there I{after} the read proves it was there during it, so
        nothing between it and what was read was trimmed (streams are
        trimmed from their oldest end, and a trimmed entry never comes back).
        Otherwise L{_read_checked} decides, reading again.
        """
        cursor = self.cursor
        assert cursor is not None
        read, check = link.pipeline(
            [
                ["XREAD", "COUNT", count, "BLOCK", block_ms, "STREAMS", self.stream, cursor],
                ["XRANGE", self.stream, cursor, cursor, "COUNT", 1],
            ],
            timeout=timeout,
        )
        try:
            reply = await read
        except BaseException:
            check.addErrback(lambda _: None)
            raise
        held = await check
        entries = _entries(reply)
        if held or (cursor == "0-0" and not entries):
            return entries, None
        return await self._read_checked(link, cursor, count)

    def take(self, entry_id: str, fields: Any) -> Event | None:
        """
        Move the cursor past entry C{entry_id} and mirror its event; the
        event, or C{None} for an entry that is not one (logged, skipped).
        """
        self.cursor = entry_id
        if self.added is not None:
            self.added += 1
        event = self._decode(entry_id, fields)
        if event is not None:
            self.history.append(event)
        return event

    def _decode(self, entry_id: str, fields: Any) -> Event | None:
        try:
            return entry_event(entry_id, fields)
        except (KeyError, TypeError, ValueError) as e:
            self.log.warn(
                "Skipping stream entry {id} that is not an event ({error})",
                id=entry_id,
                error=describe(e),
            )
            return None

    def _read_commands(self, cursor: str, count: int) -> list[list[Any]]:
        return [
            ["XRANGE", self.stream, cursor, cursor, "COUNT", 1],
            ["XREAD", "COUNT", count, "STREAMS", self.stream, cursor],
        ]

    async def _read_checked(
        self, link: Link, cursor: str, count: int
    ) -> tuple[list[Any], Gap | None]:
        """
        Read again, with the stream's counters (C{XINFO STREAM}) in the same
        transaction, and decide: Redis lost the stream (restarted empty, or
        ids went backwards: the mirror is rebuilt), or it trimmed entries
        this node never read (the mirror restarts), or only entries it had
        read (nothing to do).
        """
        held, reply, info = await link.transaction(
            [*self._read_commands(cursor, count), ["XINFO", "STREAM", self.stream]],
            errors_ok=True,
        )
        for result in (held, reply):
            if isinstance(result, Exception):
                raise link.refused(result)
        entries = _entries(reply)
        if held:
            return entries, None
        stats = _stream_info(info)
        last = stats.get("last-generated-id") if stats is not None else None
        if cursor != "0-0" and (
            not isinstance(last, str) or stream_id_key(last) < stream_id_key(cursor)
        ):
            # No stream, or its ids went backwards: Redis lost our place.
            await self.rebuild(link)
            return [], Gap(cursor, "stream-lost")
        assert stats is not None
        length = int(stats.get("length") or 0)
        added = stats.get("entries-added")
        first = stats.get("first-entry")
        first_id = first[0] if isinstance(first, list) and first else None
        lost: int | None = None
        if added is not None and self.added is not None:
            lost = int(added) - length - self.added
        if cursor == "0-0":
            # The stream was empty when last seen: without entries-added
            # (Redis < 7) there is no telling; see the module docstring.
            gap = lost is not None and lost > 0
        elif first_id is not None and stream_id_key(first_id) < stream_id_key(cursor):
            # The cursor's entry was deleted from the middle (XDEL by someone
            # else): what was deleted after it cannot be counted.
            gap, lost = True, None
        elif lost is not None:
            gap = lost > 0
        else:
            # Unknown: anything added after the cursor may have gone unread.
            gap = last != cursor
        if not gap:
            return entries, None
        self.log.warn(
            "Redis at {where} trimmed the stream past entry {last} before this node read"
            " {lost} entries after it (it reads slower than events arrive, or was away"
            " longer than the stream holds): open streams told (sse.reset), history"
            " restarted; make --history larger or publish less at once",
            where=link.where,
            last=cursor,
            lost="some" if lost is None else lost,
        )
        self.history.clear()
        self.added = int(added) - length if added is not None else None
        return entries, Gap(cursor, "stream-trimmed")

    async def rebuild(self, link: Link) -> None:
        """
        Decide where reading continues and fill the mirror from the stream:
        at the first connection, or when Redis no longer holds the cursor.
        """
        found, info = await link.transaction(
            [
                ["XREVRANGE", self.stream, "+", "-", "COUNT", self.history.size],
                ["XINFO", "STREAM", self.stream],
            ],
            errors_ok=True,
        )
        if isinstance(found, Exception):
            raise link.refused(found)
        tail = list(reversed(found or ()))
        newest = tail[-1][0] if tail else None
        stats = _stream_info(info)
        # Where the new cursor sits in the count of entries ever added (all
        # of them: it is the newest, or nothing was ever added).
        added = stats.get("entries-added") if stats is not None else 0
        self.added = int(added) if added is not None else None
        cursor = self.cursor
        if cursor is None:
            # First connection: what is there is history, not news.
            cursor = newest or "0-0"
        else:
            self.log.warn(
                "Redis at {where} no longer holds stream entry {last} (it restarted empty,"
                " or its ids went backwards): what it held after that entry is lost to this"
                " node; open streams told (sse.reset), history rebuilt from the stream, so"
                " clients resuming from before now get a reset",
                where=link.where,
                last=cursor,
            )
            if newest is None:
                # The stream is gone (Redis restarted empty): read it from the start.
                cursor = "0-0"
            elif stream_id_key(newest) < stream_id_key(cursor):
                # Its ids went backwards (another Redis, or an old snapshot):
                # treat what it holds as seen and read what comes next.
                cursor = newest
            else:
                # Our place was trimmed away: read on after it, uncounted.
                self.added = None
        self.history.clear()
        limit = stream_id_key(cursor)
        for entry_id, fields in tail:
            if stream_id_key(entry_id) <= limit:
                event = self._decode(entry_id, fields)
                if event is not None:
                    self.history.append(event)
        self.cursor = cursor
