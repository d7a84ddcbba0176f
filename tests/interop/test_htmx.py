"""htmx 2 with its SSE extension (from npm) swapping fragments from `twistd sse`."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..support.processes import SSEServer
from ..support.proxy import Proxy

pytestmark = pytest.mark.interop


def test_htmx_sse_swaps_fragments_per_channel(
    page: Any,
    start_server: Callable[..., SSEServer],
    start_proxy: Callable[..., Proxy],
    htmx_assets: dict[str, tuple[bytes, str]],
) -> None:
    """
    Two `sse-connect` elements on two channels each swap in the HTML fragments
    published as text events on their own channel, and only those; a later
    fragment replaces the earlier one. (The proxy serves the page and the
    scripts on the stream's origin, since the server sends no CORS headers.)
    """
    server = start_server()
    proxy = start_proxy(server.port, htmx_assets)
    page.goto(f"{proxy.base}/htmx/page.html")
    page.wait_for_function("() => window.sseOpens === 2", timeout=10_000)

    server.publish("frag-a", "frag", text='<p id="fa">alpha <b>é漢字🙂</b></p>')
    server.publish("frag-b", "frag", text='<p id="fb">beta\nsecond line</p>')
    page.locator("#target-a #fa").wait_for()
    page.locator("#target-b #fb").wait_for()
    assert page.locator("#target-a").inner_html() == '<p id="fa">alpha <b>é漢字🙂</b></p>'
    assert page.locator("#target-b").inner_html() == '<p id="fb">beta\nsecond line</p>'

    # In stream order: the event with another name comes first, so it has been
    # handled (ignored) by the time the next fragment shows.
    server.publish("frag-a", "other", text='<p id="never">wrong name</p>')
    server.publish("frag-a", "frag", text='<p id="fa2">again</p>')
    page.locator("#target-a #fa2").wait_for()
    assert page.locator("#target-a #fa").count() == 0
    assert page.locator("#never").count() == 0
    assert page.locator("#target-b").inner_html() == '<p id="fb">beta\nsecond line</p>'
