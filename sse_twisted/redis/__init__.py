"""
Scale-out through Redis: one Redis Stream carries every node's events.

Each node publishes by C{XADD}ing to the stream (a batch in one
C{MULTI}/C{EXEC}) and delivers by reading it on a connection of its own, so
every node delivers every event exactly once, in the stream's one global
order, including the node that published it: L{RedisBus.publish} does not
dispatch locally. Each read is an C{XREAD} after the cursor with an
C{XRANGE cursor cursor} behind it: while connected, one write of a
C{XREAD COUNT BLOCK} and the C{XRANGE} (one round trip). Streams are
trimmed from their oldest end, so "the cursor's entry is still there" proves
that nothing after it was trimmed unread: a node that falls further behind
than the stream holds notices, instead of skipping silently.
The stream is also the history: it is bounded with C{MAXLEN ~ history_size} (and
C{XTRIM MINID ~ now - ttl} when a TTL is set), event ids I{are} the stream ids,
and each node keeps a local mirror of the stream's tail (L{StreamHistory}) so
that the broker's synchronous C{history.since()} answers a C{Last-Event-ID}
from any node, after any node restarts.

Faults: connecting, losing Redis and getting it back are Twisted's
C{ClientService}, with capped, jittered backoff on the bus's clock. An
outage logs one warning when it starts (Redis lost, or unreachable at the
first attempt) and one info line when Redis is back, with how long it was
away; the retries in between log nothing (twistd
writes debug lines too) and are counted instead (L{RedisBus.connect_attempts},
L{RedisBus.outages}, read by the metrics). A Redis that hangs is noticed by
a C{PING} every L{RedisBus.ping_interval} seconds on the publishing
connection, answered within C{command_timeout} or the connection is given up.
While Redis is away C{ready} is C{False} and L{RedisBus.publish} errbacks
with L{RedisUnavailable}: an event is reported published only once Redis has
stored it. On reconnect the reader continues from the last stream id it
delivered, so events that reached Redis meanwhile are delivered.

Gaps: if entries this node never read are gone (the stream was trimmed past
its cursor because it read slower than events arrived or was away too long,
or Redis restarted empty), a warning says so, L{RedisBus.on_gap} is called
(the broker then sends C{sse.reset} to every open stream) and the mirror is
restarted, so resuming clients get the broker's unknown-id signal instead of
a replay with a hole in it; what the stream still holds is delivered. On
Redis 7 and later the check is exact (C{entries-added} of C{XINFO STREAM});
before 7, a cursor trimmed away counts as a gap, and a burst trimmed before
a node read anything of an empty stream goes unnoticed. A batch larger than
the stream holds would lose its head to C{MAXLEN} inside its own
transaction: L{RedisBus.publish} refuses it (L{BatchTooLarge}).

The modules, each importing only those above it:
    - C{url}: L{RedisAddress} and L{parse_redis_url};
    - C{entries}: stream ids (L{stream_id_key}) and an event's fields in
      an entry, written and read back in one place;
    - C{history}: L{StreamHistory}, the mirror;
    - C{resp}: the RESP protocol on C{hiredis.Reader} (pipelined commands,
      replies in order);
    - C{link}: the command client (one connection, a deadline on every
      reply, transactions in one write) and its errors;
    - C{reader}: this node's place in the stream and gap detection;
    - C{session}: a connected period as C{ClientService} holds it;
    - C{bus}: L{RedisBus}, the connect/reconnect loop, delivery, publishing.

Intentional divergences, and why:
    - A publish that sets C{id} is refused (C{ValueError}), not silently
      renumbered: with Redis the id is the stream id, chosen by Redis, and a
      publisher that sets ids expects clients to see them.
    - A publish whose reply is lost (connection dropped or no answer within
      C{command_timeout}) errbacks although Redis may have stored it; a
      publisher that retries can then publish twice. Reporting success for an
      event that may not be stored would be worse.
    - Continuity after a reconnect is judged by whether the stream still
      holds the last id this node delivered, not by C{run_id} alone: a Redis
      restarted with persistence keeps the stream, and its resuming clients
      keep their place. A changed C{run_id} is logged.
    - The TTL is applied by stream id time (Redis's clock when it created the
      entry), in the mirror as in the stream, not by when this node saw it.
    - The Redis client is our own small one (L{sse_twisted.redis.resp}), not
      a client library: the bus needs a few commands, cheap on the read
      path; C{hiredis} parses a whole read's entries in one call, in C.
"""

from __future__ import annotations

from ..relay import BatchTooLarge
from .bus import RedisBus
from .entries import stream_id_key
from .history import StreamHistory
from .link import RedisCommandError, RedisUnavailable
from .url import RedisAddress, parse_redis_url

__all__ = [
    "BatchTooLarge",
    "RedisAddress",
    "RedisBus",
    "RedisCommandError",
    "RedisUnavailable",
    "StreamHistory",
    "parse_redis_url",
    "stream_id_key",
]
