"""
twisted.web resources: the stream (GET), publishing (POST) and health.

Every refusal is the right 4xx/5xx with a JSON body C{{"error": "..."}}, and
nothing is published unless the whole request is valid.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import math
import re
from functools import lru_cache
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .auth import Grant, InvalidToken, JWTAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .event import MAX_ID_LENGTH, Event, validate_channel
from .limits import RateLimiter, SubscriberLimits, peer_key

__all__ = [
    "DEFAULT_MAX_BODY",
    "HealthResource",
    "PageResource",
    "PublishResource",
    "StreamResource",
    "json_response",
]

#: Largest publish body accepted by default (1 MiB).
DEFAULT_MAX_BODY = 1 << 20

_ITEM_FIELDS = frozenset({"channel", "event", "data", "text", "id", "retry"})


class HTTPError(Exception):
    """A refusal: its status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(request: Request, status: int, body: Any) -> bytes:
    """Set C{status} and JSON headers on C{request}; return the encoded body."""
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return encode_json_body(body)


def encode_json_body(body: Any) -> bytes:
    """
    C{body} as compact UTF-8 JSON, whatever strings it holds.

    A lone surrogate (from a C{"\\ud800"} escape in a request) cannot be
    encoded as UTF-8: such a body falls back to ASCII-only JSON, whose
    C{\\uXXXX} escapes carry any string.
    """
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def safe_message(message: str) -> str:
    """
    C{message} with anything UTF-8 cannot carry (lone surrogates echoed from
    the input) written as a backslash escape, so an error can always be sent.
    """
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def _error(request: Request, error: HTTPError) -> bytes:
    for name, value in error.headers.items():
        request.responseHeaders.setRawHeaders(name, [value])
    return json_response(request, error.status, {"error": safe_message(error.message)})


def _method_not_allowed(allow: bytes) -> HTTPError:
    return HTTPError(405, f"method not allowed; use {allow.decode()}", {b"allow": allow})


def _query_channels(request: Request) -> list[str]:
    """
    The C{channel} query parameters, validated.

    Empty values are ignored: as in the original broker, C{?channel=} means
    every channel.
    """
    raw = request.args.get(b"channel", []) if request.args else []
    channels: list[str] = []
    for value in raw:
        if not value:
            continue
        try:
            channel = value.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "channel must be UTF-8") from None
        try:
            validate_channel(channel)
        except ValueError as e:
            raise HTTPError(400, str(e)) from None
        channels.append(channel)
    return channels


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
            self.cors.apply(request)
        try:
            if request.method != b"GET":
                raise _method_not_allowed(b"GET")
            channels = _query_channels(request)
            limits = self.limits
            if limits is not None and limits.max_channels and len(channels) > limits.max_channels:
                raise HTTPError(
                    400, f"at most {limits.max_channels} channels per subscription (--max-channels)"
                )
            last_id = _last_event_id(request)
            grant = self._authorise(request, channels)
        except HTTPError as e:
            return _error(request, e)
        if limits is not None:
            refusal = limits.refusal(request)
            if refusal is not None:
                return self.broker.turn_away(request, refusal)
        result = self.broker.subscribe(
            request,
            channels,
            last_id,
            allows=grant.may_subscribe if grant is not None else None,
            expires=grant.expires if grant is not None else None,
        )
        if limits is not None and not request.finished:
            limits.track(request)
        return result

    def _authorise(self, request: Request, channels: list[str]) -> Grant | None:
        auth = self.auth
        if auth is None:
            return None
        private = [c for c in channels if auth.is_private(c)]
        token = auth.token_from(request)
        if token is None:
            if private:
                raise HTTPError(
                    401, f"channel {private[0]!r} is private: a token is required", _BEARER
                )
            return None
        try:
            grant = auth.verify(token)
        except InvalidToken as e:
            raise HTTPError(401, f"invalid token: {e}", _BEARER) from None
        for channel in private:
            if not grant.may_subscribe(channel):
                raise HTTPError(403, f"your token does not allow subscribing to {channel!r}")
        return grant


_BEARER = {b"www-authenticate": b'Bearer realm="sse"'}


#: A Host header: a name or IPv4 address, or an IPv6 address in brackets; a port.
_HOST = re.compile(rb"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:]+))(?::[0-9]+)?")


@lru_cache(maxsize=256)  # a handful of distinct Host values; ipaddress is slow
def _is_loopback_host(host: bytes | None) -> bool:
    """
    Whether a C{Host} header names this machine by a loopback name:
    C{localhost}, C{127.x.x.x} or C{[::1]}, with any port (or no header, as
    from an HTTP/1.0 script: a browser always sends one).

    A page that rebinds its own DNS name to 127.0.0.1 still sends its own
    name here, so this tells such a page from a local program.
    """
    if host is None:
        return True
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return False
    name = match.group("v6") or match.group("name").rstrip(b".")
    if name == b"localhost":
        return True
    try:
        ip = ipaddress.ip_address(name.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _is_loopback(address: object) -> bool:
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        return _is_loopback_ip(address.host)
    return False


@lru_cache(maxsize=1024)  # peers repeat; ipaddress parsing is ~10 us a call
def _is_loopback_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_item(item: object, where: str) -> None:
    if not isinstance(item, dict):
        raise HTTPError(400, f"{where}must be a JSON object")
    unknown = set(item) - _ITEM_FIELDS
    if unknown:
        # ascii(): the names are the client's, and may hold lone surrogates.
        names = ", ".join(ascii(k) for k in sorted(unknown))
        raise HTTPError(400, f"{where}unknown field(s): {names}")
    if "channel" not in item:
        raise HTTPError(400, f"{where}missing field: channel")
    has_data, has_text = "data" in item, "text" in item
    if has_data == has_text:
        raise HTTPError(400, f"{where}give exactly one of 'data' (any JSON) or 'text' (a string)")
    for name in ("channel", "text", "id"):
        if name in item and not isinstance(item[name], str):
            raise HTTPError(400, f"{where}{name} must be a string")
    if item.get("event") is not None and not isinstance(item["event"], str):
        raise HTTPError(400, f"{where}event must be a string")
    retry = item.get("retry")
    if retry is not None and (not isinstance(retry, int) or isinstance(retry, bool) or retry < 0):
        raise HTTPError(400, f"{where}retry must be a non-negative integer (ms)")


class PublishResource(Resource):
    """
    POST publishes one event (a JSON object) or a batch (a JSON list).

    @param token: when set, every request needs C{Authorization: Bearer
        <token>}; when L{None}, only loopback peers that name a loopback
        C{Host} may publish (a DNS-rebinding page names its own host).
    @param max_body: largest body accepted, in bytes.
    @param auth: also accept JWTs whose C{publish} patterns cover every
        channel of the request.
    @param rate: a limit on publish requests per verified identity: the
        static token, a JWT's C{sub} (or the token itself), else the peer.
    @param cors: which other origins may publish (and their preflights).

    Served by L{sse_twisted.site.SSESite}, a request is authorised, rate
    limited and checked against C{max_body} by L{check_head} from its
    headers alone, before its body is read; elsewhere (a plain Site,
    Klein) L{render} does the same checks once the body is in.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        broker: SSEBroker,
        token: str | None = None,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        auth: JWTAuth | None = None,
        rate: RateLimiter | None = None,
        cors: CORSPolicy | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.auth = auth
        self.rate = rate
        self.cors = cors or None
        self._token = token.encode("utf-8") if token else None
        self.max_body = max_body
        #: Answers given, by status (for metrics; a handful of keys at most).
        self.statuses: dict[int, int] = {}

    def render(self, request: Request) -> bytes | int:
        body = self._render(request)
        if body is not NOT_DONE_YET:
            self._count(request)
        return body

    def _count(self, request: Request) -> None:
        self.statuses[request.code] = self.statuses.get(request.code, 0) + 1

    def check_head(self, request: Request, method: bytes, length: int | None) -> int:
        """
        Decide from the headers alone, before any byte of the body is read:
        how many body bytes this request may send (0 for anything but a
        POST).

        A POST is authorised, rate limited, and its Content-Type and
        announced C{length} (L{None}: chunked) checked here; L{render} then
        takes the outcome from the request instead of checking again.

        @raise HTTPError: the request is refused; its body is never read.
        """
        if method != b"POST":
            return 0
        if self.cors is not None:
            self.cors.apply(request)
        try:
            grant, identity = self._authorise(request)
            if self.rate is not None:
                self._limit_rate(identity)
            _check_content_type(request)
            if length is not None and length > self.max_body:
                raise HTTPError(413, f"body larger than {self.max_body} bytes")
        except HTTPError as e:
            self.statuses[e.status] = self.statuses.get(e.status, 0) + 1
            raise
        setattr(request, _ADMITTED, (grant,))
        return self.max_body

    def _render(self, request: Request) -> bytes | int:
        admitted: tuple[Grant | None] | None = getattr(request, _ADMITTED, None)
        if self.cors is not None and admitted is None:
            if request.method == b"OPTIONS" and self.cors.preflight(request, b"POST, OPTIONS"):
                request.setResponseCode(204)
                return b""
            self.cors.apply(request)
        try:
            if admitted is not None:
                grant = admitted[0]
            else:
                if request.method != b"POST":
                    raise _method_not_allowed(b"POST")
                grant, identity = self._authorise(request)
                if self.rate is not None:
                    self._limit_rate(identity)
            if self.broker.draining:
                raise HTTPError(503, "server is draining; publish to another node")
            if self.broker.relay is not None and not self.broker.relay.ready:
                raise HTTPError(503, "the relay (Redis) is not connected; nothing was published")
            body = self._read_json(request)
            if self.broker.relay is not None:
                return self._publish_relayed(request, body, grant)
            answer = self._publish(body, grant)
        except HTTPError as e:
            return _error(request, e)
        return json_response(request, 200, answer)

    def _authorise(self, request: Request) -> tuple[Grant | None, str]:
        """
        The static token allows everything; a JWT allows its C{publish}
        channels (checked per item); with neither configured nor presented,
        only loopback peers naming a loopback C{Host} may publish.

        @return: the JWT's grant when one was used, else L{None}; and the
            verified identity that the rate limit counts against: never
            anything the client can vary at will without a valid secret.
        """
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        if self._token is not None and given and hmac.compare_digest(given, self._token):
            return None, "token"
        if self.auth is not None:
            token = self.auth.token_from(request, query=False)
            if token is not None:
                try:
                    grant = self.auth.verify(token)
                except InvalidToken as e:
                    raise HTTPError(401, f"invalid token: {e}", _BEARER) from None
                if grant.subject is not None:
                    return grant, "sub:" + grant.subject
                digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
                return grant, "jwt:" + digest
        if self._token is not None or given:
            raise HTTPError(401, "missing or wrong bearer token", _BEARER)
        peer = request.getClientAddress()
        if not _is_loopback(peer):
            raise HTTPError(403, "publishing without a token is allowed from loopback only")
        # No browser connects to a UNIX socket, so no rebinding page can be its peer.
        if not isinstance(peer, UNIXAddress) and not _is_loopback_host(request.getHeader(b"host")):
            raise HTTPError(
                403,
                "publishing without a token needs a loopback Host "
                "(localhost, 127.0.0.1 or [::1]); set --publish-token to publish by another name",
            )
        return None, "peer:" + peer_key(request)

    def _limit_rate(self, identity: str) -> None:
        assert self.rate is not None
        wait = self.rate.allow(identity)
        if wait:
            raise HTTPError(
                429,
                f"too many publish requests; retry in {wait:.2f}s",
                {b"retry-after": b"%d" % max(1, math.ceil(wait))},
            )

    def _read_json(self, request: Request) -> Any:
        _check_content_type(request)
        length = request.getHeader(b"content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            raise HTTPError(413, f"body larger than {self.max_body} bytes")
        content = request.content
        raw = content.read(self.max_body + 1) if content is not None else b""
        if len(raw) > self.max_body:
            raise HTTPError(413, f"body larger than {self.max_body} bytes")
        try:
            return json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as e:
            # ValueError covers bad JSON, bad UTF-8 and over-long integers.
            raise HTTPError(400, f"body is not valid JSON: {str(e)[:200]}") from None

    def _publish_relayed(self, request: Request, body: Any, grant: Grant | None) -> int:
        """
        Publish through the relay and answer once it has stored the events.

        C{clients} is then how many subscribers of this node matched when
        the answer was written: the relay delivers on every node later.
        """
        batch, items = self._check(body, grant)
        try:
            stored = self.broker.publish_many(items)
        except (TypeError, ValueError) as e:
            if getattr(e, "http_status", None) == 413:
                # A batch over the history (RedisBus.BatchTooLarge): nothing stored.
                raise HTTPError(413, str(e)) from None
            raise _item_error(e, batch) from None

        def answer(events: list[Event]) -> None:
            answers = [
                {"id": ev.id, "clients": self.broker.client_count(ev.channel)} for ev in events
            ]
            self._finish(request, 200, answers if batch else answers[0])

        def failed(failure: Failure) -> None:
            self.log.warn("Publish through the relay failed: {error}", error=failure.value)
            self._finish(request, 503, {"error": f"not published: {failure.value}"})

        stored.addCallbacks(answer, failed)
        return NOT_DONE_YET

    def _finish(self, request: Request, status: int, body: Any) -> None:
        if getattr(request, "_disconnected", False):
            return
        request.write(json_response(request, status, body))
        request.finish()
        self._count(request)

    def _check(self, body: Any, grant: Grant | None) -> tuple[bool, list[Any]]:
        batch = isinstance(body, list)
        items = body if batch else [body]
        for n, item in enumerate(items):
            where = f"item {n}: " if batch else ""
            _parse_item(item, where)
            if grant is not None and not grant.may_publish(item["channel"]):
                raise HTTPError(
                    403, f"{where}your token does not allow publishing to {item['channel']!r}"
                )
        return batch, items

    def _publish(self, body: Any, grant: Grant | None) -> Any:
        batch, items = self._check(body, grant)
        try:
            events = self.broker.prepare_many(items)
        except (TypeError, ValueError) as e:
            raise _item_error(e, batch) from None
        answers = [{"id": ev.id, "clients": self.broker.dispatch(ev)} for ev in events]
        return answers if batch else answers[0]


#: The request attribute where L{PublishResource.check_head} leaves its
#: outcome (the grant) for L{PublishResource.render}.
_ADMITTED = "_sse_publish_admitted"


def _check_content_type(request: Request) -> None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if ctype != b"application/json" and not ctype.endswith(b"+json"):
        raise HTTPError(415, "Content-Type must be application/json")


def _item_error(error: Exception, batch: bool) -> HTTPError:
    where = f"item {getattr(error, 'sse_item', '?')}: " if batch else ""
    return HTTPError(400, f"{where}{error}")


class PageResource(Resource):
    """A fixed page (the demo), answered to GET and HEAD."""

    isLeaf = True

    def __init__(self, body: bytes, content_type: bytes) -> None:
        super().__init__()
        self.body = body
        self.content_type = content_type

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _error(request, _method_not_allowed(b"GET, HEAD"))
        request.responseHeaders.setRawHeaders(b"content-type", [self.content_type])
        request.responseHeaders.setRawHeaders(b"cache-control", [b"no-cache"])
        return self.body


class HealthResource(Resource):
    """GET answers 200 while serving, 503 while draining (for load balancers)."""

    isLeaf = True

    def __init__(self, broker: SSEBroker) -> None:
        super().__init__()
        self.broker = broker

    def render(self, request: Request) -> bytes:
        if request.method not in (b"GET", b"HEAD"):
            return _error(request, _method_not_allowed(b"GET, HEAD"))
        if self.broker.draining:
            return json_response(request, 503, {"status": "draining", "clients": 0})
        relay = self.broker.relay
        if relay is not None and not relay.ready:
            return json_response(
                request, 503, {"status": "unavailable", "reason": "relay (Redis) not connected"}
            )
        return json_response(request, 200, {"status": "ok", "clients": self.broker.client_count()})
