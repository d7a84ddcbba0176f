"""CollectorSettings: the garbage collector's young generation while a server runs."""

from __future__ import annotations

import gc
from collections import Counter
from collections.abc import Callable, Iterator

import pytest
from twisted.application.service import Service
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure

from sse_twisted import CollectorSettings
from sse_twisted.collector import YOUNG_THRESHOLD
from sse_twisted.tap import Options, makeService

from ..support.conn import Conn, make_site, serve, stream_service


@pytest.fixture(autouse=True)
def thresholds() -> Iterator[None]:
    """Each test starts from CPython's own thresholds and leaves them as found."""
    saved = gc.get_threshold()
    gc.set_threshold(700, 10, 10)
    try:
        yield
    finally:
        gc.set_threshold(*saved)


def test_raises_the_young_threshold_and_puts_it_back() -> None:
    """Only the youngest generation's threshold changes, and only while running."""
    settings = CollectorSettings()
    settings.startService()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    settings.stopService()
    assert gc.get_threshold() == (700, 10, 10)


def test_a_larger_threshold_is_kept() -> None:
    """A process that already collects less often is not made to collect more."""
    gc.set_threshold(50_000, 5, 20)
    settings = CollectorSettings()
    settings.startService()
    assert gc.get_threshold() == (50_000, 5, 20)
    settings.stopService()
    assert gc.get_threshold() == (50_000, 5, 20)


def test_thresholds_turned_off_stay_off() -> None:
    """A threshold of 0 (automatic collection off) is the application's choice."""
    gc.set_threshold(0, 10, 10)
    settings = CollectorSettings(young=5000)
    settings.startService()
    assert gc.get_threshold() == (0, 10, 10)
    settings.stopService()
    assert gc.get_threshold() == (0, 10, 10)


def test_twistd_sse_runs_one() -> None:
    """The standalone server's service tree holds the settings (once)."""
    options = Options()
    options.parseOptions(["--port", "tcp:0:interface=127.0.0.1"])
    service = makeService(options)
    assert sum(isinstance(child, CollectorSettings) for child in service) == 1  # type: ignore[attr-defined]


def test_other_children_stop_after_the_drain() -> None:
    """
    SSEService stops the children it did not make (the collector's settings,
    an application's own) once the streams are drained, not before: the
    settings hold while thousands of streams close.
    """
    reactor = MemoryReactorClock()
    svc, broker, root = stream_service(reactor, 8124)
    settings = CollectorSettings()
    settings.setServiceParent(svc)
    other = Service()
    other.setServiceParent(svc)
    svc.startService()
    assert gc.get_threshold()[0] == YOUNG_THRESHOLD and other.running
    Conn(make_site(root, reactor))
    done = svc.stopService()
    assert broker.draining
    assert settings.running and other.running and gc.get_threshold()[0] == YOUNG_THRESHOLD
    fired: list[object] = []
    done.addCallback(fired.append)
    reactor.advance(1.1)
    assert fired == [None]
    assert not settings.running and not other.running
    assert gc.get_threshold() == (700, 10, 10)


def _cyclic_garbage(run: Callable[[], None]) -> Counter[str]:
    """What only the cyclic collector would free of what C{run} left behind, by type."""
    gc.collect()
    gc.disable()
    try:
        run()
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = Counter(type(o).__name__ for o in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    return found


def _stream_and_lose(close: str) -> Callable[[], None]:
    def run() -> None:
        clock = Clock()
        broker, site = serve(clock, stream_only=True, header_timeout=10)
        conns = [Conn(site, b"/events?channel=a") for _ in range(3)]
        broker.publish("a", "e", {"n": 1})
        clock.advance(0)
        subscriber = next(iter(broker._subscribers))
        if close == "server":
            subscriber.close()
        elif close == "abort":
            subscriber.abort()
        for conn in conns:
            # As a TCP transport does once it is closed (it lets go of both).
            if conn.transport.producer is not None:
                conn.transport.unregisterProducer()
            conn.channel.connectionLost(Failure(ConnectionDone()))
        assert not broker._subscribers and broker.client_count() == 0

    return run


@pytest.mark.parametrize("close", ["client", "server", "abort"])
def test_a_closed_stream_leaves_no_reference_cycle(close: str) -> None:
    """
    However a stream ends, nothing of it (stream, request, channel) waits for
    a full collection: with the young generation raised, that could be long.
    """
    garbage = _cyclic_garbage(_stream_and_lose(close))
    ours = {k: n for k, n in garbage.items() if k in {"Subscriber", "BoundedRequest", "SSEChannel"}}
    assert ours == {}, garbage.most_common(12)
