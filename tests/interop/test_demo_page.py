"""The demo page at `/` of `twistd sse`, driven in headless Chromium as a person would."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from ..support.processes import SSEServer, free_port

pytestmark = pytest.mark.interop


def _row(page: Any, **attrs: str) -> Any:
    selector = "tr[data-testid=event]" + "".join(f'[data-{k}="{v}"]' for k, v in attrs.items())
    return page.locator(selector)


def _cells(row: Any) -> dict[str, str]:
    return {
        name: row.locator(f"td.{name}").inner_text()
        for name in ("time", "channel", "event", "id", "data")
    }


def _published(page: Any) -> dict[str, Any]:
    """Wait for the publish form's answer to be 200; return its JSON."""
    out = page.get_by_test_id("publish-result")
    page.wait_for_function(
        "() => ['ok', 'error'].includes(document.getElementById('publish-result').dataset.status)"
    )
    text = out.inner_text()
    assert out.get_attribute("data-status") == "ok", text
    assert text.startswith("200 ")
    return dict(json.loads(text.split(": ", 1)[1]))


def test_demo_page_subscribes_shows_events_and_publishes(
    page: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    The demo page holds one envelope stream and shows every event with the
    channel it came on: with nothing picked, all channels (the README's own
    example event, named "story", shows with its channel "news"); then
    channels and a pattern on the same one connection; an event published
    elsewhere appears once, labelled with its channel, name, id and data;
    the page's own publish form publishes JSON under any name and text,
    shows the server's answer, and shows a refusal's JSON error.
    """
    server = start_server("--heartbeat", "1")
    page.goto(f"{server.base}/")
    assert page.title() == "sse_twisted demo"
    page.locator("[data-testid=connection][data-state=open]").wait_for()
    assert page.get_by_test_id("connection").inner_text() == "all channels: open"

    # The README's example, as its curl publishes it.
    story = server.publish("news", "story", {"title": "hello"})
    row = _row(page, id=story["id"])
    row.wait_for()
    cells = _cells(row)
    assert (cells["channel"], cells["event"]) == ("news", "story")
    assert json.loads(cells["data"]) == {"title": "hello"}

    page.get_by_label("Channels").fill("demo-a, demo-b")
    page.get_by_label("Patterns").fill("orders/*")
    page.get_by_role("button", name="Subscribe").click()
    page.locator(
        '[data-testid=connection][data-channels="demo-a,demo-b"]'
        '[data-patterns="orders/*"][data-state=open]'
    ).wait_for()
    assert page.get_by_test_id("connection").count() == 1
    assert page.get_by_test_id("connection").inner_text() == "demo-a, demo-b, orders/*: open"

    # Published from outside the page: a channel, and two the pattern matches.
    answer = server.publish("demo-a", "tick", {"n": 1, "s": "é漢字🙂"})
    server.publish("elsewhere", "tick", {"n": 2})
    order = server.publish("orders/42", "created", {"total": 3})
    for channel, name in (("orders/7", "paid"), ("orders/8", None)):
        server.publish(channel, name, {"c": channel})
    row = _row(page, id=answer["id"])
    row.wait_for()
    cells = _cells(row)
    assert cells["channel"] == "demo-a"
    assert cells["event"] == "tick"
    assert cells["id"] == answer["id"]
    assert json.loads(cells["data"]) == {"n": 1, "s": "é漢字🙂"}
    assert re.search(r"\d", cells["time"])
    row = _row(page, id=order["id"])
    row.wait_for()
    assert (_cells(row)["channel"], _cells(row)["event"]) == ("orders/42", "created")
    _row(page, channel="orders/8", event="message").wait_for()
    assert _row(page, channel="elsewhere").count() == 0

    # The publish form, JSON data, under a name the page was never told of.
    pub = page.get_by_test_id("publish-form")
    pub.get_by_label("Channel", exact=True).fill("demo-b")
    pub.get_by_label("Event name").fill("custom.evt")
    pub.get_by_label("JSON").check()
    pub.get_by_label("Data", exact=True).fill('{"msg": "hi from the form"}')
    page.get_by_role("button", name="Publish").click()
    published = _published(page)
    assert published["clients"] == 1
    row = _row(page, id=published["id"])
    row.wait_for()
    cells = _cells(row)
    assert (cells["channel"], cells["event"]) == ("demo-b", "custom.evt")
    assert json.loads(cells["data"]) == {"msg": "hi from the form"}

    # Text data without an event name: an unnamed ("message") multi-line event.
    pub.get_by_label("Event name").fill("")
    pub.get_by_label("text").check()
    pub.get_by_label("Data", exact=True).fill("line one\nline two")
    page.get_by_role("button", name="Publish").click()
    published = _published(page)
    row = _row(page, id=published["id"])
    row.wait_for()
    assert _cells(row)["event"] == "message"
    assert _cells(row)["data"] == "line one\nline two"

    # Bad JSON is caught in the page; the server's refusals are shown as JSON.
    pub.get_by_label("JSON").check()
    pub.get_by_label("Data", exact=True).fill("{oops")
    page.get_by_role("button", name="Publish").click()
    out = page.get_by_test_id("publish-result")
    page.wait_for_function(
        "() => document.getElementById('publish-result').dataset.status === 'error'"
    )
    assert "not valid JSON" in out.inner_text()
    pub.get_by_label("Data", exact=True).fill("1")
    pub.get_by_label("Channel", exact=True).fill("x" * 201)
    page.get_by_role("button", name="Publish").click()
    page.wait_for_function(
        "() => document.getElementById('publish-result').textContent.startsWith('400')"
    )
    assert out.get_attribute("data-status") == "error"
    error = json.loads(out.inner_text().split(": ", 1)[1])
    assert "channel must be 1 to 200 characters" in error["error"]

    # Every event appeared once, newest first.
    ids = page.locator("tr[data-testid=event]").evaluate_all("rs => rs.map(r => r.dataset.id)")
    assert len(ids) == len(set(ids)) == 7
    assert ids[-1] == story["id"]

    # A subscription the server refuses (a bad pattern) is said, not silent.
    page.get_by_label("Patterns").fill("bad\u0001")
    page.get_by_role("button", name="Subscribe").click()
    page.locator("[data-testid=connection][data-state=closed]").wait_for()
    assert "refused" in page.get_by_test_id("subscribe-error").inner_text()
    page.get_by_role("button", name="Disconnect").click()
    assert page.get_by_test_id("connection").count() == 0


def test_demo_page_shows_reconnecting_then_open_across_a_restart(
    page: Any, start_server: Callable[..., SSEServer]
) -> None:
    """
    The stream's state follows the connection: open, then reconnecting while
    the server is away, then open again; the new server's `sse.reset` shows
    in the log (an envelope with no channel).
    """

    port = free_port()
    first = start_server("--retry", "300", port=port)
    page.goto(f"{first.base}/?channels=r")
    conn = page.locator('[data-testid=connection][data-channels="r"]')
    page.locator('[data-testid=connection][data-channels="r"][data-state=open]').wait_for()
    answer = first.publish("r", "tick", {"n": 1})
    _row(page, id=answer["id"]).wait_for()

    first.stop()
    page.locator('[data-testid=connection][data-channels="r"][data-state=reconnecting]').wait_for()
    start_server("--retry", "300", port=port)
    page.locator(
        '[data-testid=connection][data-channels="r"][data-state=open][data-opens="2"]'
    ).wait_for(timeout=20_000)
    assert conn.inner_text() == "r: open"
    reset = _row(page, event="sse.reset", channel="(server)")
    reset.wait_for()
    assert json.loads(_cells(reset)["data"])["lastEventId"] == answer["id"]
