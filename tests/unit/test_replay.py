"""
C{?replay=} on a first connect, the C{Last-Event-ID} response header, and the
history lookups behind them (C{latest}, C{newest_id}, an O(1) C{since}).
"""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.task import Clock

from sse_twisted.event import Event
from sse_twisted.history import MemoryHistory

CHANNELS = ["a", "b", "c"]


def ev(n: int, channel: str = "c", size: int = 0, id: str | None = None) -> Event:
    return Event.create(channel, "e", "x" * size, id=id or f"t-{n}")


# The history against a reference


class HistoryModel(RuleBasedStateMachine):
    """
    L{MemoryHistory} against the plainest possible history (a list of what
    is held, trimmed by count, bytes and time): every lookup answers the same
    after any interleaving of appends (ids repeated too), time passing and
    clears. Pins the list-with-a-moving-head layout behind the O(1) lookup.
    """

    @initialize(
        size=st.integers(1, 6),
        ttl=st.sampled_from([0, 5]),
        max_bytes=st.sampled_from([0, 200, 400]),
    )
    def setup(self, size: int, ttl: float, max_bytes: int) -> None:
        self.clock = Clock()
        self.history = MemoryHistory(size, ttl, self.clock, max_bytes=max_bytes)
        self.size, self.ttl, self.max_bytes = size, ttl, max_bytes
        self.held: list[tuple[float, Event]] = []
        self.seen: list[str] = []
        self.n = 0

    def expire(self) -> None:
        if self.ttl:
            horizon = self.clock.seconds() - self.ttl
            self.held = [(t, e) for t, e in self.held if t > horizon]

    @rule(channel=st.sampled_from(CHANNELS), size=st.integers(0, 150), reuse=st.integers(0, 5))
    def append(self, channel: str, size: int, reuse: int) -> None:
        self.n += 1
        # Sometimes an id seen before (publishers may repeat theirs).
        event_id = self.seen[-reuse] if reuse and len(self.seen) >= reuse else f"t-{self.n}"
        event = ev(self.n, channel, size, event_id)
        self.history.append(event)
        self.seen.append(event_id)
        self.held.append((self.clock.seconds(), event))
        self.held = self.held[-self.size :]
        while self.max_bytes and len(self.held) > 1:
            if sum(len(e.frame) for _, e in self.held) <= self.max_bytes:
                break
            del self.held[0]
        self.expire()

    @rule(seconds=st.sampled_from([1, 3, 6]))
    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def clear(self) -> None:
        self.history.clear()
        self.held = []

    @invariant()
    def answers_as_the_reference(self) -> None:
        if not hasattr(self, "history"):
            return
        self.expire()
        h = self.history
        held = [e for _, e in self.held]
        assert list(h) == held
        assert len(h) == len(held)
        assert h.bytes == sum(len(e.frame) for e in held)
        assert h.newest_id == (held[-1].id if held else None)
        for channels in (None, frozenset({"a"}), frozenset({"a", "b"}), frozenset({"z"})):
            mine = [e for e in held if channels is None or e.channel in channels]
            for limit in (None, 1, 2, 100):
                expected = mine if limit is None else mine[len(mine) - min(limit, len(mine)) :]
                assert h.latest(channels, limit) == expected, (channels, limit)
                # A filter that is not a set takes the scanning path.
                if channels is not None:
                    assert h.latest(list(channels), limit) == expected
            for last_id in set(self.seen):
                # The newest event with that id is where a resume continues.
                at = [i for i, e in enumerate(held) if e.id == last_id]
                for limit in (1, 3, 100):
                    got = h.since(last_id, channels, limit)
                    if not at:
                        assert got is None
                        continue
                    after = held[at[-1] + 1 :]
                    want = [e for e in after if channels is None or e.channel in channels]
                    assert got == want[:limit], (last_id, channels, limit)


HistoryModel.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_history_model = HistoryModel.TestCase


def test_forgotten_events_are_freed_at_once() -> None:
    """
    An event pushed out of the history is not referenced any more (its frame
    can be freed): the byte bound holds for memory, not just for the count.
    """
    h = MemoryHistory(2)
    for n in range(1, 6):
        h.append(ev(n))
    assert sum(e is not None for e in h._events) == 2
    assert len(h._events) <= 4


def test_latest_and_newest_id() -> None:
    """latest() gives the newest events on the channels in publish order; newest_id the last id."""
    h = MemoryHistory(10)
    assert h.newest_id is None
    assert h.latest(None, 3) == []
    for n in range(1, 7):
        h.append(ev(n, "a" if n % 2 else "b"))
    assert [e.id for e in h.latest(None, 2)] == ["t-5", "t-6"]
    assert [e.id for e in h.latest(frozenset({"a"}), 2)] == ["t-3", "t-5"]
    assert [e.id for e in h.latest(frozenset({"a"}), None)] == ["t-1", "t-3", "t-5"]
    assert [e.id for e in h.latest(frozenset({"a", "b"}), 1)] == ["t-6"]
    assert h.latest(None, 0) == []
    assert h.newest_id == "t-6"
