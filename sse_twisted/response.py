"""The head of an event-stream response, and the short answer that sends a client away."""

from __future__ import annotations

from twisted.web.http import HTTPChannel
from twisted.web.server import NOT_DONE_YET, Request

__all__ = ["set_stream_headers", "turn_away"]


def set_stream_headers(request: Request) -> None:
    """200 and the headers every peer agrees on; no Connection header (HTTP/2 forbids it)."""
    request.setResponseCode(200)
    headers = request.responseHeaders
    headers.setRawHeaders(b"content-type", [b"text/event-stream; charset=utf-8"])
    headers.setRawHeaders(b"cache-control", [b"no-cache, no-transform"])
    headers.setRawHeaders(b"x-accel-buffering", [b"no"])


def turn_away(request: Request, reason: str, retry: int) -> int:
    """
    Answer C{request} with a stream that says why (a comment), asks the
    client to come back after C{retry} ms, and ends.

    A 200 event stream, because EventSource gives up for good on any other
    status, while an ended stream makes it reconnect later.

    @return: C{NOT_DONE_YET}, for a resource's C{render} to return.
    """
    set_stream_headers(request)
    comment = reason.replace("\r", " ").replace("\n", " ").encode("utf-8")
    request.write(b": %s\nretry: %d\n\n" % (comment, retry))
    channel = request.channel
    request.finish()
    if isinstance(channel, HTTPChannel):
        # Free the socket too, not just the stream (HTTP/2 streams share one).
        channel.loseConnection()
    return NOT_DONE_YET
