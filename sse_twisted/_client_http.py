"""
The HTTP side of the L{sse_twisted.client.EventSource}: what it needs of an
HTTP client (and treq's, by default), a stream's body handed to callbacks as
it arrives, a body nobody wants stopped at once, and the response behind a
redirect that had no C{Location}.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any

import hyperlink
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import ResponseFailed
from twisted.web.error import RedirectWithNoLocation
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

__all__ = [
    "HTTPGetter",
    "StreamBody",
    "discard",
    "receive",
    "redirect_without_location",
    "stream_url",
    "treq_client",
]


class HTTPGetter(typing.Protocol):
    """
    What L{EventSource} needs of an HTTP client: treq's C{HTTPClient} and
    C{treq.testing.StubTreq} both provide it.
    """

    def get(self, url: str, /, *, headers: Headers, unbuffered: bool = ...) -> Deferred[Any]:
        """Issue a GET; fire with an C{IResponse}."""


def stream_url(url: str, channels: Sequence[str]) -> str:
    """
    C{url} with C{channel=NAME} added to its query for each of C{channels}.

    @raise ValueError: for a URL that is not C{http}/C{https}.
    @raise TypeError: for a channel that is not a C{str}.
    """
    parsed = hyperlink.DecodedURL.from_text(url)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"EventSource needs an http or https URL, got {url!r}")
    for channel in channels:
        if not isinstance(channel, str):
            raise TypeError(f"channel must be a str, not {type(channel).__name__}")
        parsed = parsed.add("channel", channel)
    text: str = parsed.to_uri().to_text()
    return text


def treq_client(reactor: IReactorTime) -> HTTPGetter:
    """treq's C{HTTPClient} on an C{Agent} on C{reactor}: the default."""
    # Imported on first use, by the sources that need no client of their own.
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    # Agent's __init__ has no annotations in Twisted.
    agent = Agent(reactor)
    client: HTTPGetter = HTTPClient(agent)
    return client


class StreamBody(Protocol):
    """Receives one response body: each chunk to C{on_data}, its end to C{on_end}."""

    def __init__(
        self,
        on_data: Callable[[bytes], None],
        on_end: Callable[[StreamBody, Failure], None],
    ) -> None:
        self._on_data = on_data
        self._on_end = on_end

    def dataReceived(self, data: bytes) -> None:
        self._on_data(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._on_end(self, reason)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]  # a TransportProxyProducer


class _Discard(Protocol):
    """Takes a response body nobody wants and stops it at once."""

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]  # always set here


def receive(response: IResponse, protocol: Protocol) -> None:
    """Deliver C{response}'s body to C{protocol}."""
    # IResponse.deliverBody has no annotations in Twisted.
    response.deliverBody(protocol)


def discard(response: IResponse) -> None:
    """Stop C{response}'s body unread (which frees its connection)."""
    receive(response, _Discard())


def redirect_without_location(reason: Failure) -> IResponse | None:
    """The response of a redirect that had no Location, if that is what failed."""
    error = reason.value
    if not isinstance(error, ResponseFailed):
        return None
    if any(isinstance(f.value, RedirectWithNoLocation) for f in error.reasons):
        response: IResponse | None = error.response
        return response
    return None
