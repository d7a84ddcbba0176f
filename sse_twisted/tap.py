"""C{twistd sse}: its options and C{makeService}."""

from __future__ import annotations

import os
from typing import Any

from twisted.application.service import IService
from twisted.python import usage

from .app import make_resource
from .auth import JWTAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .limits import RateLimiter, SubscriberLimits
from .paths import normalise_path
from .resource import DEFAULT_MAX_BODY
from .service import SSEService
from .site import SSESite
from .subscriber import OVERFLOW_POLICIES

__all__ = ["Options", "makeService"]


def _port(value: str) -> str:
    """An int means TCP on all interfaces; anything else is an endpoint string."""
    value = value.strip()
    if value.isdigit():
        return f"tcp:{value}"
    return value


def _positive_int(name: str) -> Any:
    def coerce(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be an integer, got {value!r}") from None
        if n < 0:
            raise usage.UsageError(f"--{name} must not be negative, got {n}")
        return n

    coerce.coerceDoc = "A non-negative integer."  # type: ignore[attr-defined]
    return coerce


def _seconds(name: str) -> Any:
    def coerce(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of seconds, got {value!r}") from None
        if not n >= 0:  # also refuses NaN
            raise usage.UsageError(f"--{name} must not be negative, got {value}")
        return n

    coerce.coerceDoc = "Seconds (a non-negative number)."  # type: ignore[attr-defined]
    return coerce


class Options(usage.Options):
    """Options of C{twistd sse}."""

    synopsis = "[options]"
    longdesc = (
        "A Server-Sent Events broker: subscribers GET the stream path, "
        "publishers POST JSON to the publish path."
    )

    optFlags = [
        ["no-demo", None, "Do not serve the demo page at /."],
        ["no-metrics", None, "Do not serve Prometheus metrics."],
        ["access-log", None, "Log a line per HTTP request (publishes, and streams as they end)."],
        ["log-clients", None, "Log each subscriber's connect and disconnect (debug level)."],
    ]

    optParameters = [
        [
            "port",
            "p",
            "tcp:8080",
            "Port number or Twisted endpoint description "
            "(tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem, unix:/run/sse.sock, ...).",
            _port,
        ],
        ["path", None, "/events", "URL path of the event stream."],
        ["publish-path", None, "/publish", "URL path for publishing (POST)."],
        ["health-path", None, "/health", "URL path of the health check."],
        ["metrics-path", None, "/metrics", "URL path of the Prometheus metrics."],
        [
            "publish-token",
            None,
            None,
            "Bearer token required to publish (default: $SSE_PUBLISH_TOKEN; "
            "without one, only loopback peers may publish).",
        ],
        [
            "max-body",
            None,
            DEFAULT_MAX_BODY,
            "Largest publish body in bytes.",
            _positive_int("max-body"),
        ],
        [
            "queue-size",
            None,
            64,
            "Events queued per paused subscriber.",
            _positive_int("queue-size"),
        ],
        [
            "overflow",
            None,
            "drop",
            "What a full queue does: drop (the event, counted and reported), disconnect, "
            "or catchup (feed the client from the history once it reads again).",
        ],
        [
            "history",
            None,
            1000,
            "Recent events kept for resuming clients (Last-Event-ID); 0 turns it off.",
            _positive_int("history"),
        ],
        [
            "history-ttl",
            None,
            0.0,
            "Seconds after which a kept event is forgotten; 0 keeps it until pushed out.",
            _seconds("history-ttl"),
        ],
        [
            "heartbeat",
            None,
            15.0,
            "Seconds between heartbeat comments; 0 turns them off.",
            _seconds("heartbeat"),
        ],
        [
            "retry",
            None,
            2000,
            "Reconnection delay (ms) sent to clients as a stream opens.",
            _positive_int("retry"),
        ],
        [
            "header-timeout",
            None,
            10.0,
            "Seconds a client has to send its request headers (slowloris guard); 0: no limit.",
            _seconds("header-timeout"),
        ],
        [
            "max-clients",
            None,
            0,
            "Most open streams; beyond it a subscriber is told to retry later. 0: no limit.",
            _positive_int("max-clients"),
        ],
        [
            "max-clients-per-ip",
            None,
            0,
            "Most open streams per peer address. 0: no limit.",
            _positive_int("max-clients-per-ip"),
        ],
        [
            "max-channels",
            None,
            0,
            "Most channels in one subscription (more: 400). 0: no limit.",
            _positive_int("max-channels"),
        ],
        [
            "publish-rate",
            None,
            0.0,
            "Publish requests per second allowed per token (or per peer without one); "
            "more get 429. 0: no limit.",
            _seconds("publish-rate"),
        ],
        [
            "publish-burst",
            None,
            0,
            "Requests a publisher may send at once above --publish-rate (default: the rate).",
            _positive_int("publish-burst"),
        ],
        [
            "redis",
            None,
            None,
            "Share fan-out and history with other nodes through Redis: "
            "redis://[:password@]host:port/db or rediss://... (needs the 'redis' extra).",
        ],
        ["jwt-secret", None, None, "Verify subscriber/publisher JWTs with this HS256 secret."],
        [
            "jwt-public-key",
            None,
            None,
            "Verify JWTs (RS256/ES256) with the PEM public key in this file.",
        ],
        ["jwt-cookie", None, None, "Also read the JWT from this cookie."],
        [
            "drain-timeout",
            None,
            5.0,
            "Seconds that stopping waits for streams to end before aborting them.",
            _seconds("drain-timeout"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["cors-origin"] = []
        self["private-channel"] = []

    def opt_cors_origin(self, origin: str) -> None:
        """Let this origin (or *) read the stream and publish; repeatable."""
        self["cors-origin"].append(origin)

    def opt_private_channel(self, pattern: str) -> None:
        """Channels matching this glob need a JWT to subscribe; repeatable."""
        self["private-channel"].append(pattern)

    def postOptions(self) -> None:
        if self["overflow"] not in OVERFLOW_POLICIES:
            raise usage.UsageError(
                f"--overflow must be one of {', '.join(OVERFLOW_POLICIES)}, "
                f"got {self['overflow']!r}"
            )
        if self["overflow"] == "catchup" and self["history"] == 0:
            raise usage.UsageError("--overflow catchup needs a history (--history N, N > 0)")
        if self["queue-size"] < 1:
            raise usage.UsageError("--queue-size must be at least 1")
        if self["redis"]:
            from .redis import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None
        if self["jwt-secret"] and self["jwt-public-key"]:
            raise usage.UsageError("give --jwt-secret or --jwt-public-key, not both")
        if self["private-channel"] and not (self["jwt-secret"] or self["jwt-public-key"]):
            raise usage.UsageError("--private-channel needs --jwt-secret or --jwt-public-key")
        if self["jwt-public-key"]:
            try:
                with open(self["jwt-public-key"], "rb") as f:
                    self["jwt-public-key-pem"] = f.read()
            except OSError as e:
                raise usage.UsageError(f"cannot read --jwt-public-key: {e}") from None
        if self["publish-token"] is None:
            self["publish-token"] = os.environ.get("SSE_PUBLISH_TOKEN") or None
        paths = [
            normalise_path(self["path"]),
            normalise_path(self["publish-path"], "/publish"),
            normalise_path(self["health-path"], "/health"),
        ]
        if not self["no-metrics"]:
            paths.append(normalise_path(self["metrics-path"], "/metrics"))
        if len(set(paths)) != len(paths):
            raise usage.UsageError(
                "--path, --publish-path, --health-path and --metrics-path must differ"
            )


def makeService(options: Options) -> IService:
    """Build the broker, its Klein app and the service that serves and drains it."""
    relay = None
    history: Any = options["history"]
    if options["redis"]:
        from .redis import RedisBus

        relay = RedisBus(
            options["redis"],
            history_size=options["history"] or 1000,
            history_ttl=options["history-ttl"],
        )
        history = relay.history
    broker = SSEBroker(
        relay=relay,
        queue_size=options["queue-size"],
        overflow=options["overflow"],
        heartbeat=options["heartbeat"],
        retry=options["retry"],
        history=history,
        log_clients=bool(options["log-clients"]),
        history_ttl=options["history-ttl"],
    )
    auth = None
    if options["jwt-secret"] or options["jwt-public-key"]:
        auth = JWTAuth(
            secret=options["jwt-secret"],
            public_key=options.get("jwt-public-key-pem"),
            cookie=options["jwt-cookie"],
            private=options["private-channel"],
        )
    rate = (
        RateLimiter(options["publish-rate"], options["publish-burst"] or None)
        if options["publish-rate"]
        else None
    )
    if relay is not None:
        relay.on_event = broker.dispatch
    root = make_resource(
        broker,
        path=options["path"],
        publish_path=options["publish-path"],
        health_path=options["health-path"],
        publish_token=options["publish-token"],
        max_body=options["max-body"],
        demo=not options["no-demo"],
        metrics_path=None if options["no-metrics"] else options["metrics-path"],
        cors=CORSPolicy(options["cors-origin"]) if options["cors-origin"] else None,
        limits=SubscriberLimits(
            options["max-clients"], options["max-clients-per-ip"], options["max-channels"]
        ),
        auth=auth,
        publish_rate=rate,
    )
    site = SSESite(
        root, header_timeout=options["header-timeout"], access_log=bool(options["access-log"])
    )
    site.displayTracebacks = False
    banner = (
        f"; stream at {normalise_path(options['path'])}, publish at "
        f"{normalise_path(options['publish-path'], '/publish')}"
        f" ({'token required' if options['publish-token'] else 'loopback only'})"
    )
    return SSEService(
        options["port"], site, broker, drain_timeout=options["drain-timeout"], banner=banner
    )
