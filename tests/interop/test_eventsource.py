"""
A browser's own EventSource (headless Chromium) against real `twistd sse`
processes: delivery, channel filters, payload fidelity, agreement with the
Python clients, and reconnection with resume after a cut and a restart.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from ..support.clients import (
    start_httpx_sse,
    start_sseclient,
    subscribe,
    wait_open,
    wait_seen,
)
from ..support.processes import SSEServer, free_port
from ..support.proxy import Proxy

pytestmark = pytest.mark.interop

UNICODE = "é漢字🙂"
MULTILINE_IN = "line one\nline two\r\nline three\rline four"
MULTILINE_OUT = "line one\nline two\nline three\nline four"


def _ids(events: list[dict[str, str]]) -> list[str]:
    return [e["id"] for e in events]


def test_eventsource_channels_payloads_and_python_clients_agree(
    page: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    A bare EventSource receives named and unnamed events with their ids; a
    channel-b event never reaches a channel-a source while an all-channels
    source gets everything in publish order; multi-line text arrives joined
    by LF and non-ASCII JSON arrives intact; sseclient-py and httpx-sse on
    the same channel see exactly the browser's (type, data, id) sequence.
    """
    server = start_server("--heartbeat", "1")
    page.goto(f"{server.base}/health")  # same origin as the stream
    subscribe(page, "a", "/events?channel=a")
    subscribe(page, "b", "/events?channel=b")
    subscribe(page, "all", "/events")
    for key in ("a", "b", "all"):
        wait_open(page, key)
    py_readers = [
        start_sseclient(f"{server.base}/events?channel=a"),
        start_httpx_sse(f"{server.base}/events?channel=a"),
    ]

    sent = [
        ("a", server.publish("a", "tick", {"n": 1})),
        ("b", server.publish("b", "tick", {"n": 2})),
        ("a", server.publish("a", text=MULTILINE_IN)),
        ("a", server.publish("a", "tick", {"s": UNICODE, "n": 3})),
        ("a", server.publish("a", "done", "a")),
        ("b", server.publish("b", "done", "b")),
    ]
    expected_a = [
        {"type": "tick", "data": '{"n":1}', "id": sent[0][1]["id"]},
        {"type": "message", "data": MULTILINE_OUT, "id": sent[2][1]["id"]},
        {
            "type": "tick",
            "data": json.dumps({"s": UNICODE, "n": 3}, ensure_ascii=False, separators=(",", ":")),
            "id": sent[3][1]["id"],
        },
        {"type": "done", "data": '"a"', "id": sent[4][1]["id"]},
    ]
    expected_b = [
        {"type": "tick", "data": '{"n":2}', "id": sent[1][1]["id"]},
        {"type": "done", "data": '"b"', "id": sent[5][1]["id"]},
    ]
    done = "(es) => es.some((e) => e.type === 'done')"
    got_a = wait_seen(page, "a", done)
    got_b = wait_seen(page, "b", done)
    got_all = wait_seen(page, "all", "(es) => es.filter((e) => e.type === 'done').length === 2")

    assert got_a == expected_a
    assert got_b == expected_b
    assert _ids(got_all) == [answer["id"] for _, answer in sent]
    assert json.loads(got_a[2]["data"])["s"] == UNICODE
    ids = _ids(got_all)
    assert len(set(ids)) == len(ids), "ids must be unique"
    for reader in py_readers:
        assert reader.join() == got_a, reader.name


def test_reconnects_through_cut_and_resumes_without_gap_or_duplicate(
    page: Any, start_server: Callable[..., SSEServer], start_proxy: Callable[..., Proxy]
) -> None:
    """
    When the network drops the stream, the browser reconnects by itself with
    Last-Event-ID and receives each event it missed exactly once, in order,
    then live events.
    """
    server = start_server("--retry", "300")
    proxy = start_proxy(server.port)
    page.goto(f"{proxy.base}/health")
    subscribe(page, "c", "/events?channel=c")
    wait_open(page, "c")
    before = [server.publish("c", "tick", {"n": n})["id"] for n in (1, 2)]
    wait_seen(page, "c", "(es) => es.length === 2")

    assert proxy.cut(hold=True) > 0
    page.wait_for_function("window.conns.c.errors >= 1", timeout=10_000)
    missed = [server.publish("c", "tick", {"n": n})["id"] for n in (3, 4, 5)]
    server.publish("other", "tick", {"n": 0})  # another channel: must not be replayed
    proxy.release()

    wait_open(page, "c", opens=2)
    live = server.publish("c", "tick", {"n": 6})["id"]
    got = wait_seen(page, "c", f"(es) => es.some((e) => e.id === {json.dumps(live)})")

    assert _ids(got) == [*before, *missed, live]
    assert [json.loads(e["data"])["n"] for e in got] == [1, 2, 3, 4, 5, 6]
    reconnect = proxy.heads[-1].decode("latin-1").lower()
    assert reconnect.startswith("get /events?channel=c ")
    assert f"last-event-id: {before[-1]}\r\n".lower() in reconnect


def test_restart_on_same_port_gives_reset_then_live_events(
    page: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    A server stopped with SIGTERM drains its streams; a new server on the same
    port meets the browser's automatic reconnect, whose Last-Event-ID it has
    never issued: the stream says so with an `sse.reset` event (no id)
    before the new server's live events.
    """
    port = free_port()
    first = start_server("--retry", "300", port=port)
    page.goto(f"{first.base}/health")
    subscribe(page, "d", "/events?channel=d")
    wait_open(page, "d")
    old = [first.publish("d", "tick", {"n": n})["id"] for n in (1, 2)]
    wait_seen(page, "d", "(es) => es.length === 2")

    first.stop()
    page.wait_for_function("window.conns.d.errors >= 1", timeout=10_000)
    assert page.evaluate("window.conns.d.es.readyState") == 0, "EventSource gave up"
    second = start_server("--retry", "300", port=port)
    wait_open(page, "d", opens=2, timeout_ms=20_000)
    new = second.publish("d", "tick", {"n": 3})["id"]
    got = wait_seen(page, "d", f"(es) => es.some((e) => e.id === {json.dumps(new)})")

    assert new not in old
    resets = [e for e in got if e["type"] == "sse.reset"]
    assert [e["type"] for e in got] == ["tick", "tick", "sse.reset", "tick"], got
    # No id line on the reset: the browser's lastEventId stays the old one.
    assert resets[0]["id"] == old[-1]
    assert json.loads(resets[0]["data"]) == {"lastEventId": old[-1], "reason": "unknown-id"}
    assert _ids(got)[-1] == new


def test_late_subscribers_resume_from_history_in_every_client(
    page: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    A subscriber that names an id it saw (`?lastEventId=` on the URL, or the
    Last-Event-ID header) first gets the later events of its channels from
    the history, in order, then live ones; a browser, sseclient-py and
    httpx-sse agree on that sequence. An id the server never issued gets
    `sse.reset` first.
    """
    server = start_server("--heartbeat", "1")
    ids = [server.publish("h", "tick", {"n": n})["id"] for n in (1, 2, 3)]
    server.publish("x", "tick", {"n": 0})  # another channel: never replayed here
    page.goto(f"{server.base}/health")
    subscribe(page, "h", f"/events?channel=h&lastEventId={ids[0]}")
    subscribe(page, "bogus", "/events?channel=h&lastEventId=no-such-run-1")
    wait_open(page, "h")
    wait_open(page, "bogus")
    readers = [
        start_sseclient(f"{server.base}/events?channel=h&lastEventId={ids[0]}"),
        start_httpx_sse(f"{server.base}/events?channel=h", headers={"Last-Event-ID": ids[0]}),
    ]
    done = server.publish("h", "done", "end")["id"]

    until_done = "(es) => es.some((e) => e.type === 'done')"
    got = wait_seen(page, "h", until_done)
    assert _ids(got) == [ids[1], ids[2], done]
    assert [e["type"] for e in got] == ["tick", "tick", "done"]
    for reader in readers:
        assert reader.join() == got, reader.name

    bogus = wait_seen(page, "bogus", until_done)
    assert [e["type"] for e in bogus] == ["sse.reset", "done"]
    assert json.loads(bogus[0]["data"]) == {"lastEventId": "no-such-run-1", "reason": "unknown-id"}
