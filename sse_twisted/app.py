"""
The standalone server's routes: as a Klein app (to embed or extend) and as a
plain root resource (what C{twistd sse} serves).
"""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from klein import Klein
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import Request
from werkzeug.exceptions import NotFound

from .auth import JWTAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .errors import json_response
from .limits import RateLimiter, SubscriberLimits
from .metrics import MetricsResource, metrics_registry
from .paths import normalise_path
from .presence_resource import PresenceResource, PresenceSource
from .publish import DEFAULT_MAX_BODY, PublishResource
from .resource import HealthResource, PageResource, StreamResource

__all__ = ["DEMO_PAGE", "make_app", "make_resource", "routes"]

#: The demo page: static, no build step, no CDN.
DEMO_PAGE = files("sse_twisted") / "static" / "demo.html"


def routes(
    broker: SSEBroker,
    *,
    path: str = "/events",
    publish_path: str = "/publish",
    health_path: str = "/health",
    publish_token: str | None = None,
    max_body: int = DEFAULT_MAX_BODY,
    demo: bool = True,
    metrics_path: str | None = "/metrics",
    cors: CORSPolicy | None = None,
    limits: SubscriberLimits | None = None,
    auth: JWTAuth | None = None,
    publish_rate: RateLimiter | None = None,
    presence_path: str | None = "/presence",
    presence_source: PresenceSource | None = None,
) -> dict[str, IResource]:
    """
    The server's resources by (normalised) path: stream, publish, health,
    and, when on, metrics, presence (C{presence_source} answers it: this
    broker's streams by default) and the demo page at C{/}.

    C{cors}, C{limits}, C{auth} and C{publish_rate} configure the production
    features (all off by default). Building routes never changes the
    broker: what a subscriber may read travels with its subscription.

    C{cors}'s C{"*"} applies to the stream only unless publishing needs a
    token (C{publish_token} or C{auth}): otherwise any page in a browser on
    the server's host could publish as a loopback peer. Origins listed by
    name apply to both.
    """
    publish_cors = cors
    if cors is not None and cors.any and publish_token is None and auth is None:
        publish_cors = cors.listed_only() or None
    publish = PublishResource(
        broker,
        token=publish_token,
        max_body=max_body,
        auth=auth,
        rate=publish_rate,
        cors=publish_cors,
    )
    table: dict[str, IResource] = {
        normalise_path(path): StreamResource(broker, cors=cors, limits=limits, auth=auth),
        normalise_path(publish_path, "/publish"): publish,
        normalise_path(health_path, "/health"): HealthResource(broker),
    }
    if metrics_path:
        table[normalise_path(metrics_path, "/metrics")] = MetricsResource(
            metrics_registry(broker, publish.statuses, publish.durations)
        )
    if presence_path:
        table[normalise_path(presence_path, "/presence")] = PresenceResource(
            broker, publish_token, auth=auth, source=presence_source
        )
    if demo:
        table["/"] = PageResource(DEMO_PAGE.read_bytes(), b"text/html; charset=utf-8")
    if len(table) != 3 + bool(metrics_path) + bool(presence_path) + bool(demo):
        raise ValueError("the stream, publish, health, metrics and presence paths must differ")
    return table


def make_app(broker: SSEBroker, **kwargs: Any) -> Klein:
    """
    A Klein app serving L{routes} (same keywords), to mount in an existing
    Klein application or to extend with routes of your own.

    Each route returns its twisted.web resource, which Klein renders (and
    never finishes early, as it would a route that returned C{NOT_DONE_YET}).
    """
    app = Klein()
    for where, resource in routes(broker, **kwargs).items():
        # Klein keys routes by endpoint name; bind each resource by default arg.
        def serve(request: Request, _resource: IResource = resource) -> IResource:
            return _resource

        app.route(where, strict_slashes=False, endpoint=f"sse:{where}")(serve)

    @app.handle_errors(NotFound)
    def not_found(request: Any, failure: Failure) -> Any:
        return json_response(request, 404, {"error": "not found"})

    return app


class _Router(Resource):
    """
    The standalone server's root: one dict lookup per request.

    Not Klein, measured: Klein's routing added about 85 µs to each publish
    request (a third of its cost), and its per-request state (a bound URL
    map, an adapter, two C{notifyFinish} Deferreds) lived as long as each
    stream, about 2 KiB per idle subscriber.
    """

    isLeaf = True

    def __init__(self, table: dict[str, IResource]) -> None:
        super().__init__()
        self._table = {k.encode("utf-8"): v for k, v in table.items()}

    def _route(self, path: bytes) -> IResource | None:
        if len(path) > 1 and path.endswith(b"/"):
            path = path[:-1]
        return self._table.get(path)

    def check_head(self, request: Request, method: bytes, path: bytes, length: int | None) -> int:
        """
        How many body bytes a request may send, from its method, path and
        headers (for L{sse_twisted.site.SSESite}, before any body byte is
        read; C{length} is the announced one, C{None} for chunked): the
        publish resource decides for its path; every other path, and an
        unknown one, takes no body.

        @raise sse_twisted.resource.HTTPError: to refuse the request.
        """
        resource = self._route(path)
        check = getattr(resource, "check_head", None)
        if check is None:
            return 0
        limit: int = check(request, method, length)
        return limit

    def render(self, request: Request) -> bytes | int:
        resource = self._route(request.path)
        if resource is None:
            return json_response(request, 404, {"error": "not found"})
        result: bytes | int = resource.render(request)
        return result


def make_resource(broker: SSEBroker, **kwargs: Any) -> IResource:
    """The standalone server's root resource: L{routes} (same keywords)."""
    return _Router(routes(broker, **kwargs))
