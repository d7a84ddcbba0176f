"""sse_twisted's own EventSource client against a real server: a cut, a resume, a restart."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import pytest_twisted

from sse_twisted.parser import MessageEvent

from ..support.processes import SSEServer, free_port
from ..support.proxy import Proxy

pytestmark = pytest.mark.interop


async def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.02, lambda: None)


async def in_thread(f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    from twisted.internet.threads import deferToThread

    return await deferToThread(f, *args, **kwargs)


@pytest_twisted.ensureDeferred
async def test_own_client_resumes_after_a_cut(
    start_server: Callable[..., SSEServer], start_proxy: Callable[..., Proxy]
) -> None:
    """After a dropped connection the client reconnects with Last-Event-ID: every event once."""
    from twisted.internet import reactor

    from sse_twisted.client import EventSource

    server = start_server("--retry", "200", "--heartbeat", "0")
    proxy = start_proxy(server.port)
    got: list[MessageEvent] = []
    opens: list[int] = []
    source = EventSource(
        f"{proxy.base}/events",
        channels=["own"],
        on_event=got.append,
        on_open=lambda: opens.append(1),
        reactor=reactor,
        retry=0.2,
    )
    source.start()
    await wait_for(lambda: len(opens) == 1)
    before = [(await in_thread(server.publish, "own", "n", i))["id"] for i in range(2)]
    await wait_for(lambda: len(got) == 2)
    assert await in_thread(proxy.cut) >= 1
    missed = [(await in_thread(server.publish, "own", "n", i))["id"] for i in range(2, 5)]
    await in_thread(server.publish, "elsewhere", "n", 99)
    proxy.release()
    await wait_for(lambda: len(opens) == 2)
    after = [(await in_thread(server.publish, "own", "n", 5))["id"]]
    await wait_for(lambda: len(got) >= 6)
    assert [e.last_event_id for e in got] == before + missed + after
    assert [json.loads(e.data) for e in got] == list(range(6))
    assert any(b"last-event-id: " + before[-1].encode() in h.lower() for h in proxy.heads)
    await source.close()


@pytest_twisted.ensureDeferred
async def test_own_client_sees_reset_after_restart(start_server: Callable[..., SSEServer]) -> None:
    """A restarted server (new history) sends sse.reset to the reconnecting client."""
    from twisted.internet import reactor

    from sse_twisted.client import EventSource

    port = free_port()
    first = start_server("--retry", "200", "--heartbeat", "0", port=port)
    got: list[MessageEvent] = []
    source = EventSource(f"{first.base}/events", on_event=got.append, reactor=reactor, retry=0.2)
    source.start()
    await wait_for(lambda: source.ready_state == 1)
    old = (await in_thread(first.publish, "c", "e", 1))["id"]
    await wait_for(lambda: len(got) == 1)
    await in_thread(first.stop)
    second = start_server("--retry", "200", "--heartbeat", "0", port=port)
    await wait_for(lambda: any(e.type == "sse.reset" for e in got))
    reset = next(e for e in got if e.type == "sse.reset")
    assert json.loads(reset.data) == {"lastEventId": old, "reason": "unknown-id"}
    await wait_for(lambda: second.request("GET", "/health")[2]["clients"] == 1)
    new = (await in_thread(second.publish, "c", "e", 2))["id"]
    await wait_for(lambda: got[-1].last_event_id == new)
    assert new != old
    await source.close()
