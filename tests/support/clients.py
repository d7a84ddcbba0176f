"""Helpers shared by the interop tests: a recording EventSource in the page, and Python readers."""

from __future__ import annotations

import http.client
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import sseclient
from httpx_sse import connect_sse

#: Defines window.subscribe(key, url, names): a bare EventSource that records
#: what it sees in window.seen[key] and its opens/errors in window.conns[key].
RECORDER_JS = """
() => {
  if (window.subscribe) return;
  window.seen = {};
  window.conns = {};
  window.subscribe = (key, url, names) => {
    const es = new EventSource(url);
    const conn = { es, opens: 0, errors: 0 };
    window.seen[key] = [];
    window.conns[key] = conn;
    es.onopen = () => { conn.opens += 1; };
    es.onerror = () => { conn.errors += 1; };
    for (const name of names) {
      es.addEventListener(name, (e) => {
        window.seen[key].push({ type: e.type, data: e.data, id: e.lastEventId });
      });
    }
  };
}
"""

#: Event names every recording source listens for.
NAMES = ["message", "tick", "done", "sse.reset", "sse.dropped"]


def subscribe(page: Any, key: str, url: str, names: list[str] = NAMES) -> None:
    """Open a recording EventSource in C{page} (same origin as C{url})."""
    page.evaluate(RECORDER_JS)
    page.evaluate("([k, u, n]) => window.subscribe(k, u, n)", [key, url, names])


def wait_open(page: Any, key: str, opens: int = 1, timeout_ms: int = 10_000) -> None:
    page.wait_for_function(
        "([k, n]) => window.conns[k].opens >= n && window.conns[k].es.readyState === 1",
        arg=[key, opens],
        timeout=timeout_ms,
    )


def wait_seen(
    page: Any, key: str, predicate_js: str, timeout_ms: int = 10_000
) -> list[dict[str, str]]:
    """Wait until C{predicate_js} (a function of the list of events) holds; return the list."""
    page.wait_for_function(
        f"([k]) => ({predicate_js})(window.seen[k])", arg=[key], timeout=timeout_ms
    )
    return seen(page, key)


def seen(page: Any, key: str) -> list[dict[str, str]]:
    return list(page.evaluate("(k) => window.seen[k]", key))


@dataclass
class Reader:
    """A Python SSE client on its own thread, reading until an event named C{until}."""

    name: str
    events: list[dict[str, str]] = field(default_factory=list)
    error: BaseException | None = None
    thread: threading.Thread | None = None
    closer: Any = None

    def join(self, timeout: float = 15.0) -> list[dict[str, str]]:
        assert self.thread is not None
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.closer()
            self.thread.join(5)
            raise TimeoutError(f"{self.name} did not finish; got {self.events}")
        if self.error is not None:
            raise self.error
        return self.events


def start_sseclient(url: str, until: str = "done") -> Reader:
    """sseclient-py over http.client; returns once the stream's headers arrived (subscribed)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("GET", f"{parts.path}?{parts.query}", headers={"Accept": "text/event-stream"})
    resp = conn.getresponse()
    assert resp.status == 200, resp.status
    reader = Reader("sseclient-py", closer=conn.close)

    def run() -> None:
        try:
            for ev in sseclient.SSEClient(resp).events():
                reader.events.append({"type": ev.event, "data": ev.data, "id": ev.id or ""})
                if ev.event == until:
                    break
        except BaseException as e:  # reported by join()
            reader.error = e
        finally:
            conn.close()

    reader.thread = threading.Thread(target=run, name="sseclient-py", daemon=True)
    reader.thread.start()
    return reader


def start_httpx_sse(url: str, until: str = "done", headers: dict[str, str] | None = None) -> Reader:
    """httpx-sse; returns once the stream's headers arrived (subscribed)."""
    client = httpx.Client(timeout=httpx.Timeout(10.0))
    cm = connect_sse(client, "GET", url, headers=dict(headers or {}))
    source = cm.__enter__()
    assert source.response.status_code == 200, source.response.status_code
    reader = Reader("httpx-sse", closer=client.close)

    def run() -> None:
        try:
            for ev in source.iter_sse():
                # Unlike a browser, httpx-sse yields blocks without data
                # (the opening "retry:" block): not events, so skip them.
                if ev.data == "":
                    continue
                reader.events.append({"type": ev.event, "data": ev.data, "id": ev.id})
                if ev.event == until:
                    break
        except BaseException as e:  # reported by join()
            reader.error = e
        finally:
            cm.__exit__(None, None, None)
            client.close()

    reader.thread = threading.Thread(target=run, name="httpx-sse", daemon=True)
    reader.thread.start()
    return reader
