"""
C{POST /publish}: one event (a JSON object) or a batch (a JSON list).

Every refusal is the right 4xx/5xx with a JSON body, and nothing is
published unless the whole request is valid.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .auth import Grant, JWTAuth, PublishAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .durable import HistoryUnavailable
from .errors import HTTPError, error_response, finish_json, json_response, method_not_allowed
from .event import InvalidItem, Item
from .idempotency import IdempotencyError
from .limits import RateLimiter
from .publishing import Published, maybe_deferred
from .relay import BatchTooLarge
from .stats import Histogram

__all__ = ["DEFAULT_MAX_BODY", "PublishResource"]

#: Largest publish body accepted by default (1 MiB).
DEFAULT_MAX_BODY = 1 << 20


class PublishResource(Resource):
    """
    POST publishes one event (a JSON object) or a batch (a JSON list).

    @param token: when set, every request needs C{Authorization: Bearer
        <token>}; when C{None}, only loopback peers that name a loopback
        C{Host} may publish (see L{PublishAuth}).
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
        self.publishers = PublishAuth(token, auth)
        self.rate = rate
        self.cors = cors or None
        self.max_body = max_body
        #: Answers given, by status (for metrics; a handful of keys at most).
        self.statuses: dict[int, int] = {}
        #: Seconds from L{render} to the answer, of requests that reached
        #: publishing (for C{sse_publish_duration_seconds}); L{timer} reads the
        #: time (monotonic: the reactor's clock is the wall clock, which steps).
        self.durations = Histogram()
        self.timer: Callable[[], float] = time.perf_counter

    def _count(self, request: Request) -> None:
        self.statuses[request.code] = self.statuses.get(request.code, 0) + 1

    def check_head(self, request: Request, method: bytes, length: int | None) -> int:
        """
        Decide from the headers alone, before any byte of the body is read:
        how many body bytes this request may send (0 for anything but a
        POST).

        A POST is authorised, rate limited, and its Content-Type and
        announced C{length} (C{None}: chunked) checked here; L{render} then
        takes the outcome from the request instead of checking again.

        @raise HTTPError: the request is refused; its body is never read.
        """
        if method != b"POST":
            return 0
        if self.cors is not None:
            self.cors.apply(request)
        try:
            grant = self._admit(request)
            if length is not None and length > self.max_body:
                raise HTTPError(413, f"body larger than {self.max_body} bytes")
        except HTTPError as e:
            self.statuses[e.status] = self.statuses.get(e.status, 0) + 1
            raise
        setattr(request, _ADMITTED, (grant,))
        return self.max_body

    def _admit(self, request: Request) -> Grant | None:
        grant, identity = self.publishers.check(request)
        if self.rate is not None:
            wait = self.rate.allow(identity)
            if wait:
                raise HTTPError(
                    429,
                    f"too many publish requests; retry in {wait:.2f}s",
                    {b"retry-after": b"%d" % max(1, math.ceil(wait))},
                )
        _check_content_type(request)
        return grant

    def render(self, request: Request) -> bytes | int:
        started = self.timer()
        admitted: tuple[Grant | None] | None = getattr(request, _ADMITTED, None)
        if self.cors is not None and admitted is None:
            if request.method == b"OPTIONS" and self.cors.preflight(request, b"POST, OPTIONS"):
                request.setResponseCode(204)
                self._count(request)
                return b""
            self.cors.apply(request)
        try:
            if admitted is not None:
                grant = admitted[0]
            else:
                if request.method != b"POST":
                    raise method_not_allowed(b"POST")
                grant = self._admit(request)
            broker = self.broker
            if broker.draining:
                raise HTTPError(503, "server is draining; publish to another node")
            if broker.relay is not None and not broker.relay.ready:
                raise HTTPError(503, "the relay (Redis) is not connected; nothing was published")
            batch, items = self._items(_with_key(self._read_json(request), request), grant)
            try:
                done = broker.publish_items(items)
            except InvalidItem as e:
                raise _item_error(e, batch) from None
            except BatchTooLarge as e:  # over the relay's history: nothing stored
                raise HTTPError(413, str(e)) from None
            except HistoryUnavailable as e:  # the history's file failed: nothing published
                raise HTTPError(503, str(e)) from None
        except HTTPError as e:
            body = error_response(request, e)
            self._count(request)
            return body
        if isinstance(done, list) and not broker.durable:  # no relay: published already
            body = json_response(request, 200, _answer(done, batch))
            self._count(request)
            self.durations.observe(self.timer() - started)
            return body
        waiting = maybe_deferred(done)
        if broker.durable:  # delivered; answered once committed to disk
            waiting.addCallback(
                lambda published: broker.committed().addCallback(lambda _: published)
            )

        def answer(published: list[Published]) -> None:
            self._finish(request, 200, _answer(published, batch))

        def failed(failure: Failure) -> None:
            refused = _refusal(failure.value, batch) if failure.value is not None else None
            if refused is not None:
                error_response(request, refused)  # its status and headers
                self._finish(request, refused.status, {"error": refused.message})
                return
            if broker.durable:  # delivered live, but not committed: not acknowledged
                self._finish(request, 503, {"error": f"not committed: {failure.value}"})
                return
            self.log.warn("Publish through the relay failed: {error}", error=failure.value)
            self._finish(request, 503, {"error": f"not published: {failure.value}"})

        waiting.addCallbacks(answer, failed)
        waiting.addCallback(lambda _: self.durations.observe(self.timer() - started))
        return NOT_DONE_YET

    def _finish(self, request: Request, status: int, body: Any) -> None:
        if finish_json(request, status, body):
            self._count(request)

    def _read_json(self, request: Request) -> Any:
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

    def _items(self, body: Any, grant: Grant | None) -> tuple[bool, list[Item]]:
        """The body's items, validated (once, here) and authorised, all or none."""
        batch = isinstance(body, list)
        items: list[Item] = []
        for index, raw in enumerate(body if batch else [body]):
            try:
                item = Item.from_mapping(raw, index if batch else None)
            except InvalidItem as e:
                raise _item_error(e, batch) from None
            if grant is not None and not grant.may_publish(item.channel):
                where = f"item {index}: " if batch else ""
                raise HTTPError(
                    403, f"{where}your token does not allow publishing to {item.channel!r}"
                )
            items.append(item)
        return batch, items


#: The request attribute where L{PublishResource.check_head} leaves its
#: outcome (the grant) for L{PublishResource.render}.
_ADMITTED = "sse_publish_admitted"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _check_content_type(request: Request) -> None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";", 1)[0].strip().lower()
    if ctype != b"application/json" and not ctype.endswith(b"+json"):
        raise HTTPError(415, "Content-Type must be application/json")


def _item_error(error: InvalidItem, batch: bool) -> HTTPError:
    where = f"item {error.index}: " if batch and error.index is not None else ""
    return HTTPError(400, f"{where}{error}")


def _answer(published: list[Published], batch: bool) -> Any:
    """
    The 200 answer: each event's id and how many subscribers here it went
    to; a repeat of an idempotency key is marked C{"duplicate": true}.
    """
    answers: list[dict[str, Any]] = [{"id": p.id, "clients": p.clients} for p in published]
    for answer, p in zip(answers, published, strict=True):
        if p.duplicate:
            answer["duplicate"] = True
    return answers if batch else answers[0]


def _with_key(body: Any, request: Request) -> Any:
    """A single event's body with the C{Idempotency-Key} header's key, if any."""
    header = request.getHeader(b"idempotency-key")
    if header is None:
        return body
    key = header.decode("latin-1").strip()
    if isinstance(body, list):
        raise HTTPError(
            400,
            "Idempotency-Key is for a single event; give each item of a batch"
            ' its own "idempotency_key"',
        )
    if isinstance(body, dict):
        if body.get("idempotency_key", key) != key:
            raise HTTPError(400, 'Idempotency-Key and "idempotency_key" differ')
        return {**body, "idempotency_key": key}
    return body


def _refusal(error: BaseException, batch: bool) -> HTTPError | None:
    """The answer to a publish that failed after render returned, if not a 503."""
    if isinstance(error, IdempotencyError):
        where = f"item {error.index}: " if batch and error.index is not None else ""
        retry = {b"retry-after": b"%d" % math.ceil(error.retry_after)} if error.retry_after else {}
        return HTTPError(error.status, f"{where}{error}", retry)
    if isinstance(error, InvalidItem):
        return _item_error(error, batch)
    if isinstance(error, BatchTooLarge):
        return HTTPError(413, str(error))
    return None
