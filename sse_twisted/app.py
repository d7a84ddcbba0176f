"""The standalone server's routes, composed with Klein."""

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
from .limits import RateLimiter, SubscriberLimits
from .metrics import MetricsResource, metrics_registry
from .paths import normalise_path
from .resource import (
    DEFAULT_MAX_BODY,
    HealthResource,
    PageResource,
    PublishResource,
    StreamResource,
    json_response,
)

__all__ = ["DEMO_PAGE", "make_app", "make_resource"]

#: The demo page: static, no build step, no CDN.
DEMO_PAGE = files("sse_twisted") / "static" / "demo.html"


def make_app(
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
) -> Klein:
    """
    A Klein app serving the stream, publishing and health on their paths.

    Each route hands the request to a twisted.web resource, so the same
    resources serve embedded apps; Klein renders a returned resource as the
    response (and never finishes a stream early, as it would a route that
    returned C{NOT_DONE_YET}).

    C{cors}, C{limits}, C{auth} and C{publish_rate} configure the production
    features (all off by default); with C{auth}, the broker learns which
    channels are private.
    """
    app = Klein()
    stream = StreamResource(broker, cors=cors, limits=limits, auth=auth)
    publish = PublishResource(
        broker, token=publish_token, max_body=max_body, auth=auth, rate=publish_rate, cors=cors
    )
    health = HealthResource(broker)
    if auth is not None and auth.private_patterns:
        broker.private = auth.is_private
    app.stream_resource = stream  # type: ignore[attr-defined]  # for make_resource

    # Named functions: Klein keys routes by their endpoint function's name.
    @app.route(normalise_path(path), strict_slashes=False)
    def events(request: Request) -> Any:
        return stream

    @app.route(normalise_path(publish_path, "/publish"), strict_slashes=False)
    def publish_events(request: Request) -> Any:
        return publish

    @app.route(normalise_path(health_path, "/health"), strict_slashes=False)
    def health_check(request: Request) -> Any:
        return health

    if metrics_path:
        metrics = MetricsResource(metrics_registry(broker, publish.statuses))

        @app.route(normalise_path(metrics_path, "/metrics"), strict_slashes=False)
        def metrics_page(request: Request) -> Any:
            return metrics

    if demo:
        page = PageResource(DEMO_PAGE.read_bytes(), b"text/html; charset=utf-8")

        @app.route("/", strict_slashes=False)
        def demo_page(request: Request) -> Any:
            return page

    @app.handle_errors(NotFound)
    def not_found(request: Any, failure: Failure) -> Any:
        return json_response(request, 404, {"error": "not found"})

    return app


class _StreamFirst(Resource):
    """
    The standalone server's root: the stream path goes straight to the
    stream resource, everything else to the Klein app.

    Klein's per-request routing state (a bound URL map, an adapter, two
    C{notifyFinish} Deferreds) would otherwise live as long as each stream:
    about 2 KiB per idle subscriber, a fifth of the total. Other requests are
    short, so they keep Klein's routing.
    """

    isLeaf = True

    def __init__(self, path: str, stream: IResource, app: IResource) -> None:
        super().__init__()
        self._path = path.encode("utf-8")
        self._stream = stream
        self._app = app

    def render(self, request: Request) -> bytes | int:
        path = request.path
        if path == self._path or path == self._path + b"/":
            result: bytes | int = self._stream.render(request)
            return result
        result = self._app.render(request)
        return result


def make_resource(broker: SSEBroker, **kwargs: Any) -> IResource:
    """The standalone server's root resource: L{make_app}'s routes, streams first."""
    app = make_app(broker, **kwargs)
    path = normalise_path(kwargs.get("path"))
    return _StreamFirst(path, app.stream_resource, app.resource())  # type: ignore[attr-defined]
