"""
The durable history as a model (hypothesis): appends, commits that run or
not, crashes (the process dies: what was not committed is gone) and clean
closes, reopens with the same file, the clock moving (TTL). At every step,
the history holds exactly the newest committed-or-pending events the bounds
keep, in publish order; after a crash it holds exactly the committed ones
the bounds keep, and a resume from any held id gives exactly the rest.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from twisted.internet.task import Clock

from sse_twisted.durable import SQLiteHistory
from sse_twisted.event import Event

from .test_durable import ManualRunner

SIZE = 5
TTL = 10.0


class DurableModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="sse-durable-model-"))
        self.path = self.dir / "h.db"
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.n = 0
        #: (id, channel, time) of every event appended, in order, and how many are durable.
        self.appended: list[tuple[str, str, float]] = []
        self.committed = 0
        self.ttl = 0.0

    @initialize(ttl=st.sampled_from([0.0, TTL]))
    def start(self, ttl: float) -> None:
        """One TTL per run of the model (0: events stay until pushed out)."""
        self.ttl = ttl
        self.open_history()

    def open_history(self) -> None:
        self.runner = ManualRunner()
        self.history = SQLiteHistory(
            self.path, SIZE, self.ttl, self.clock, runner=self.runner, max_bytes=0
        )

    def expected(self, upto: int) -> list[str]:
        """The ids the bounds keep out of the first `upto` events appended."""
        kept = self.appended[:upto][-SIZE:]
        now = self.clock.seconds()
        return [i for i, _, t in kept if not (self.ttl and t <= now - self.ttl)]

    @rule(channel=st.sampled_from(["a", "b"]), count=st.integers(1, 3))
    def append(self, channel: str, count: int) -> None:
        for _ in range(count):
            self.n += 1
            event = Event.create(channel, None, self.n, id=f"e-{self.n}")
            self.history.append(event)
            self.appended.append((f"e-{self.n}", channel, self.clock.seconds()))

    @rule()
    def turn(self) -> None:
        """A reactor turn: a commit starts if one is due."""
        self.clock.advance(0)

    @precondition(lambda self: bool(self.runner.jobs))
    @rule()
    def commit(self) -> None:
        """The writer finishes its current transaction."""
        upto = len(self.appended) - len(self.history._pending)  # the job holds the rest
        self.runner.run()
        self.committed = max(self.committed, upto)

    @rule(seconds=st.sampled_from([1.0, 4.0, 11.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @rule()
    def crash_and_restart(self) -> None:
        """SIGKILL: what was not committed is lost; reopen."""
        self.history._file.close()  # type: ignore[union-attr]  # the process is gone
        self.appended = self.appended[: self.committed]
        self.open_history()

    @rule()
    def stop_and_restart(self) -> None:
        """SIGTERM: close() commits what is pending, then reopen."""
        self.clock.advance(0)
        closed = self.history.close()
        self.runner.run_all()
        assert closed.called
        self.committed = len(self.appended)
        self.open_history()

    @invariant()
    def holds_what_the_bounds_keep(self) -> None:
        if not hasattr(self, "history"):
            return
        held = [str(e.id) for e in self.history]
        assert held == self.expected(len(self.appended))
        for k, event_id in enumerate(held):
            rest = self.history.since(event_id, None, 100)
            assert rest is not None and [e.id for e in rest] == held[k + 1 :]
            only_a = self.history.since(event_id, {"a"}, 100)
            channels = {i: c for i, c, _ in self.appended}
            assert only_a is not None
            assert [e.id for e in only_a] == [i for i in held[k + 1 :] if channels[i] == "a"]

    def teardown(self) -> None:
        if not hasattr(self, "history"):
            shutil.rmtree(self.dir, ignore_errors=True)
            return
        file: Any = self.history._file
        if file is not None:
            file.close()
        shutil.rmtree(self.dir, ignore_errors=True)


DurableModel.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestDurableModel = pytest.mark.timeout(300)(DurableModel.TestCase)
