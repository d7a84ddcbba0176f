"""
C{GET /presence?channel=NAME}: who receives a channel, for whoever may
publish to it (the same authority: loopback with a loopback C{Host}, the
publish token, or a JWT whose C{publish} patterns cover the channel).
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from .auth import JWTAuth, PublishAuth
from .broker import SSEBroker
from .errors import HTTPError, error_response, finish_json, json_response, method_not_allowed
from .presence import Presence
from .resource import query_channels

__all__ = ["PresenceResource", "PresenceSource"]

#: Where an answer comes from: this node (L{SSEBroker.presence}), or every
#: node (L{sse_twisted.redis.presence.RedisPresence.presence}).
PresenceSource = Callable[[str], "Presence | Deferred[Presence]"]


def _channel(request: Request) -> str:
    """The one C{channel} query parameter, validated (else 400)."""
    values = request.args.get(b"channel", []) if request.args else []
    if not values or not values[0]:
        raise HTTPError(400, "give the channel: /presence?channel=NAME")
    if len(values) > 1:
        raise HTTPError(400, "give one channel per presence request")
    [channel] = query_channels(request)
    return channel


class PresenceResource(Resource):
    """
    GET answers C{200 {"channel", "clients", "users"}} (and
    C{"users_truncated": true} past L{sse_twisted.presence.MAX_USERS});
    401/403 without the authority to publish to the channel, 400 for a
    missing or bad channel, 503 when another node's presence (Redis)
    cannot be read.

    @param token: the publish token (C{--publish-token}).
    @param auth: also accept JWTs whose C{publish} patterns cover the channel.
    @param source: where answers come from; the broker's own streams by default.
    """

    isLeaf = True
    log = Logger()

    def __init__(
        self,
        broker: SSEBroker,
        token: str | None = None,
        *,
        auth: JWTAuth | None = None,
        source: PresenceSource | None = None,
    ) -> None:
        super().__init__()
        self.broker = broker
        self.publishers = PublishAuth(token, auth)
        self.source: PresenceSource = source if source is not None else broker.presence

    def render(self, request: Request) -> bytes | int:
        try:
            if request.method != b"GET":
                raise method_not_allowed(b"GET")
            grant, _identity = self.publishers.check(request)
            channel = _channel(request)
            if grant is not None and not grant.may_publish(channel):
                raise HTTPError(
                    403, f"your token does not allow publishing to {channel!r}, nor its presence"
                )
        except HTTPError as e:
            return error_response(request, e)
        answer = self.source(channel)
        if isinstance(answer, Presence):
            return json_response(request, 200, answer.to_json())

        def done(presence: Presence) -> None:
            finish_json(request, 200, presence.to_json())

        def failed(failure: Failure) -> None:
            self.log.warn(
                "Presence of {channel} failed: {error}", channel=channel, error=failure.value
            )
            finish_json(request, 503, {"error": f"presence unavailable: {failure.value}"})

        answer.addCallbacks(done, failed)
        return NOT_DONE_YET
