"""
twisted.web resources: the stream (GET), health, and a fixed page.

Every refusal is the right 4xx/5xx with a JSON body C{{"error": "..."}}
(L{sse_twisted.errors}); publishing is L{sse_twisted.publish}.
"""

from __future__ import annotations

from typing import Any, Literal

from twisted.web.resource import Resource
from twisted.web.server import Request

from .access import AllChannels, validate_pattern
from .admission import admit
from .auth import Grant, InvalidToken, JWTAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .errors import BEARER, HTTPError, error_response, json_response, method_not_allowed
from .event import MAX_ID_LENGTH, validate_channel
from .limits import SubscriberLimits

__all__ = [
    "MAX_LAST_EVENT_ID",
    "MAX_REPLAY",
    "HealthResource",
    "PageResource",
    "ReadResource",
    "StreamResource",
    "query_channels",
]


def query_channels(request: Request, name: bytes = b"channel") -> list[str]:
    """
    The C{channel} (or C{pattern}) query parameters, validated.

    Empty values are ignored: as in the original broker, C{?channel=} means
    every channel.
    """
    raw = request.args.get(name, []) if request.args else []
    what = name.decode()
    check = validate_channel if name == b"channel" else validate_pattern
    channels: list[str] = []
    for value in raw:
        if not value:
            continue
        try:
            channel = value.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, f"{what} must be UTF-8") from None
        try:
            check(channel)
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        channels.append(channel)
    return channels


def _envelope(request: Request) -> bool:
    """C{?envelope=1}: events as JSON envelopes; C{0} or empty: as published; else 400."""
    values = request.args.get(b"envelope") if request.args else None
    raw = values[-1] if values else b""
    if raw not in (b"", b"0", b"1"):
        raise HTTPError(400, "envelope must be 1 (events as JSON envelopes) or 0")
    return raw == b"1"


#: Longest C{Last-Event-ID} looked up: the longest id an event may have.
MAX_LAST_EVENT_ID = MAX_ID_LENGTH

#: What a C{Last-Event-ID} the server cannot use (too long, not UTF-8) is
#: replaced with: a line break cannot be part of any event id, so no history
#: holds it, and the subscriber gets C{sse.reset} and the live stream.
UNUSABLE_LAST_EVENT_ID = "\n(unusable Last-Event-ID)"


def _last_event_id(request: Request) -> str | None:
    """
    The id to resume after: the C{Last-Event-ID} header (EventSource sends it
    on reconnect), else C{?lastEventId=} (for a first connect, since
    EventSource cannot set headers).

    Never a refusal: EventSource gives up for good on any answer but 200, so
    one odd id would stop a browser until the page is reloaded. An id that
    cannot be looked up resumes from L{UNUSABLE_LAST_EVENT_ID}, which the
    broker answers with C{sse.reset}.
    """
    raw = request.getHeader(b"last-event-id")
    if raw is None and request.args:
        values = request.args.get(b"lastEventId")
        raw = values[-1] if values else None
    if not raw:
        return None
    if len(raw) > MAX_LAST_EVENT_ID:
        return UNUSABLE_LAST_EVENT_ID
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return UNUSABLE_LAST_EVENT_ID


#: The largest C{?replay=N}: the history holds fewer than that (1,000 events by
#: default), and a replay never sends more than it holds; C{all} asks for all.
MAX_REPLAY = 1_000_000


def _replay(request: Request) -> int | Literal["all"]:
    """
    C{?replay=}: C{all}, or how many of the newest events to send first
    (C{0} or empty: none). Anything else is the page's mistake, refused
    with 400 at once rather than ignored.
    """
    values = request.args.get(b"replay") if request.args else None
    raw = values[-1] if values else b""
    if not raw:
        return 0
    if raw == b"all":
        return "all"
    if len(raw) > len(str(MAX_REPLAY)) or not raw.isdigit() or int(raw) > MAX_REPLAY:
        raise HTTPError(400, f"replay must be 'all' or a whole number from 0 to {MAX_REPLAY:,}")
    return int(raw)


class StreamResource(Resource):
    """
    GET subscribes the request to its broker; other methods get 405.

    @param cors: which other origins may read the stream.
    @param limits: caps on streams (over them a client is turned away so
        that EventSource retries later) and on channels per subscription.
    @param auth: JWT checks for private channels.
    """

    isLeaf = True

    def __init__(
        self,
        broker: SSEBroker,
        *,
        cors: CORSPolicy | None = None,
        limits: SubscriberLimits | None = None,
        auth: JWTAuth | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.cors = cors or None
        self.limits = limits or None
        self.auth = auth

    def render(self, request: Request) -> bytes | int:
        if self.cors is not None:
            if request.method == b"OPTIONS" and self.cors.preflight(request, b"GET"):
                request.setResponseCode(204)
                return b""
            if self.cors.apply(request):
                # So that a page on another origin can read its cursor.
                request.responseHeaders.setRawHeaders(
                    b"access-control-expose-headers", [b"Last-Event-ID"]
                )
        try:
            if request.method != b"GET":
                raise method_not_allowed(b"GET")
            channels = query_channels(request)
            patterns = query_channels(request, b"pattern")
            limits = self.limits
            if (
                limits is not None
                and limits.max_channels
                and len(channels) + len(patterns) > limits.max_channels
            ):
                raise HTTPError(
                    400,
                    f"at most {limits.max_channels} channels and patterns per subscription"
                    " (--max-channels)",
                )
            envelope = _envelope(request)
            last_id = _last_event_id(request)
            replay = _replay(request)
            grant = self._authorise(request, channels)
        except HTTPError as e:
            return error_response(request, e)
        if limits is not None:
            refusal = limits.refusal(request)
            if refusal is not None:
                return self.broker.turn_away(request, refusal)
        readable = None
        if (patterns or not channels) and self.auth is not None and self.auth.private_patterns:
            # Every channel, or what the patterns match: the private ones
            # only as far as the token grants them.
            allows = grant.may_subscribe if grant is not None else None
            readable = AllChannels(self.auth.is_private, allows)
        subscribe = self.broker.subscribe if self.broker.on_subscribe is None else self._admit
        result = subscribe(
            request,
            channels,
            last_id,
            readable=readable,
            expires=grant.expires if grant is not None else None,
            replay=replay,
            user=grant.subject if grant is not None else None,
            patterns=patterns,
            envelope=envelope,
        )
        if limits is not None and not request.finished:
            limits.track(request)
        return result

    def _admit(self, request: Request, *args: Any, **kwargs: Any) -> int:
        """Subscribe through the broker's C{on_subscribe} hook (L{admit})."""
        return admit(self.broker, request, *args, **kwargs)

    def _authorise(self, request: Request, channels: list[str]) -> Grant | None:
        auth = self.auth
        if auth is None:
            return None
        private = [c for c in channels if auth.is_private(c)]
        token = auth.token_from(request)
        if token is None:
            if private:
                raise HTTPError(
                    401, f"channel {private[0]!r} is private: a token is required", BEARER
                )
            return None
        try:
            grant = auth.verify(token)
        except InvalidToken as e:
            raise HTTPError(401, f"invalid token: {e}", BEARER) from None
        for channel in private:
            if not grant.may_subscribe(channel):
                raise HTTPError(403, f"your token does not allow subscribing to {channel!r}")
        return grant


class ReadResource(Resource):
    """A leaf answered to GET and HEAD (L{read}); other methods get 405."""

    isLeaf = True

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return error_response(request, method_not_allowed(b"GET, HEAD"))
        return self.read(request)

    def read(self, request: Request) -> bytes:
        """The body for a GET (or HEAD) of C{request}; set its headers and status."""
        raise NotImplementedError


class PageResource(ReadResource):
    """A fixed page (the demo)."""

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def read(self, request: Request) -> bytes:
        request.responseHeaders.setRawHeaders(b"content-type", [self.content_type])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-cache"])
        return self.body


class HealthResource(ReadResource):
    """
    200 while serving; 503 while draining, without the relay, or once the
    durable history failed to write (for load balancers).
    """

    def __init__(self, broker: SSEBroker) -> None:
        super().__init__()
        self.broker = broker

    def read(self, request: Request) -> bytes:
        if self.broker.draining:
            return json_response(request, 503, {"status": "draining", "clients": 0})
        relay = self.broker.relay
        if relay is not None and not relay.ready:
            return json_response(
                request, 503, {"status": "unavailable", "reason": "relay (Redis) not connected"}
            )
        if getattr(self.broker.history, "failed", None) is not None:  # --history-db's writes
            return json_response(
                request, 503, {"status": "unavailable", "reason": "writing the history failed"}
            )
        return json_response(request, 200, {"status": "ok", "clients": self.broker.client_count()})
