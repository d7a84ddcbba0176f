"""C{twistd sse}: its options and C{makeService}."""

from __future__ import annotations

import importlib.util
import os
import sys

from twisted.application.service import IService, Service
from twisted.copyright import version as twisted_version
from twisted.logger import Logger
from twisted.python import usage

from ._options import (
    check_cookie_name,
    check_endpoint_in,
    check_origin,
    check_token,
    count,
    endpoint_description,
    load_public_key,
    rate,
    seconds,
)
from ._version import __version__
from .app import make_resource
from .auth import JWTAuth
from .broker import SSEBroker
from .cors import CORSPolicy
from .durable import HistoryFileError, SQLiteHistory
from .history import DEFAULT_HISTORY_BYTES
from .limits import DEFAULT_MAX_CHANNELS, RateLimiter, SubscriberLimits
from .paths import normalise_path
from .publish import DEFAULT_MAX_BODY
from .service import SSEService
from .site import SSESite
from .subscriber import OVERFLOW_POLICIES

__all__ = ["Options", "makeService"]


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
        ["jwt-allow-no-exp", None, "Accept JWTs without exp (they never expire); default: 401."],
    ]

    optParameters = [
        [
            "port",
            "p",
            "tcp:8080",
            "Port number or Twisted endpoint description "
            "(tcp:8080:interface=127.0.0.1, ssl:8443:privateKey=key.pem, unix:/run/sse.sock, ...).",
            endpoint_description,
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
            count("max-body"),
        ],
        [
            "queue-size",
            None,
            64,
            "Events queued per paused subscriber.",
            count("queue-size", least=1),
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
            count("history"),
        ],
        [
            "history-ttl",
            None,
            0.0,
            "Seconds after which a kept event is forgotten; 0 keeps it until pushed out.",
            seconds("history-ttl"),
        ],
        [
            "history-bytes",
            None,
            DEFAULT_HISTORY_BYTES,
            "Most bytes of events the history holds (the oldest go first); 0: no byte bound.",
            count("history-bytes"),
        ],
        [
            "history-db",
            None,
            None,
            "Keep the history in this SQLite file (created if missing), so clients resume "
            "across restarts and crashes; a publish is answered once it is on disk.",
        ],
        [
            "heartbeat",
            None,
            15.0,
            "Seconds between heartbeat comments; 0 turns them off.",
            seconds("heartbeat"),
        ],
        [
            "retry",
            None,
            2000,
            "Reconnection delay (ms) sent to clients as a stream opens.",
            count("retry"),
        ],
        [
            "header-timeout",
            None,
            10.0,
            "Seconds a client has to send a whole request, headers and body "
            "(slowloris guard); 0: no limit.",
            seconds("header-timeout"),
        ],
        [
            "max-clients",
            None,
            0,
            "Most open streams; beyond it a subscriber is told to retry later. 0: no limit.",
            count("max-clients"),
        ],
        [
            "max-clients-per-ip",
            None,
            0,
            "Most open streams per peer address. 0: no limit.",
            count("max-clients-per-ip"),
        ],
        [
            "max-channels",
            None,
            DEFAULT_MAX_CHANNELS,
            "Most channels in one subscription (more: 400). 0: no limit.",
            count("max-channels"),
        ],
        [
            "publish-rate",
            None,
            0.0,
            "Publish requests per second allowed per token (or per peer without one); "
            "more get 429. 0: no limit.",
            rate("publish-rate"),
        ],
        [
            "publish-burst",
            None,
            0,
            "Requests a publisher may send at once before --publish-rate applies "
            "(0: the rate, rounded, at least 1).",
            count("publish-burst"),
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
            seconds("drain-timeout"),
        ],
        [
            "write-timeout",
            None,
            0.0,
            "Abort a stream whose socket has taken no byte for this many seconds "
            "(a peer gone without a FIN); 0 turns it off.",
            seconds("write-timeout"),
        ],
        [
            "redis-timeout",
            None,
            5.0,
            "Seconds to wait for Redis to connect or answer before a publish gets 503.",
            seconds("redis-timeout", positive=True),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["cors-origin"] = []
        self["private-channel"] = []
        self._refused = False

    def parseOptions(self, options: list[str] | None = None) -> None:
        try:
            super().parseOptions(options)
        except usage.UsageError:
            self._refused = True
            raise

    def getUsage(self, width: int | None = None) -> str:
        """
        The options, or after a refusal only where to find them: twistd
        prints this usage before the error, and a screenful of options would
        bury the one line that says what is wrong.
        """
        if self._refused:
            return "Run 'twistd sse --help' for the options."
        return super().getUsage(width)

    def opt_cors_origin(self, origin: str) -> None:
        """Let this origin (scheme://host[:port], or *: publish needs a token) in; repeatable."""
        self["cors-origin"].append(check_origin(origin))

    def opt_version(self) -> None:
        """Print the versions of sse_twisted and Twisted, and exit."""
        print(f"sse_twisted {__version__}")
        print(f"Twisted {twisted_version}")
        sys.exit(0)

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
        check_endpoint_in(self["port"], self.parent)
        if self["redis"]:
            # find_spec, not an import: txredisapi imports (so installs) the
            # global reactor, which is not ours to choose while parsing.
            if importlib.util.find_spec("txredisapi") is None:
                raise usage.UsageError(
                    "--redis needs the 'redis' extra: pip install 'sse-twisted[redis]'"
                )
            from .redis import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"--redis: {e}") from None
        if self["history-db"] is not None:
            if self["redis"]:
                raise usage.UsageError(
                    "give --history-db or --redis, not both (with Redis, the history is "
                    "Redis's stream: make Redis persistent instead)"
                )
            if not self["history-db"]:
                raise usage.UsageError("--history-db must not be empty (give a file's path)")
            if self["history"] == 0:
                raise usage.UsageError("--history-db needs a history (--history N, N > 0)")
        if self["publish-burst"] and not self["publish-rate"]:
            raise usage.UsageError("--publish-burst needs --publish-rate")
        if self["jwt-secret"] == "":
            raise usage.UsageError(
                "--jwt-secret must not be empty (an empty secret would turn JWTs off in silence)"
            )
        if self["jwt-secret"] is not None and self["jwt-public-key"] is not None:
            raise usage.UsageError("give --jwt-secret or --jwt-public-key, not both")
        jwt = self["jwt-secret"] is not None or self["jwt-public-key"] is not None
        if self["private-channel"] and not jwt:
            raise usage.UsageError("--private-channel needs --jwt-secret or --jwt-public-key")
        if self["jwt-allow-no-exp"] and not jwt:
            raise usage.UsageError("--jwt-allow-no-exp needs --jwt-secret or --jwt-public-key")
        if self["jwt-cookie"] is not None:
            if not jwt:
                raise usage.UsageError("--jwt-cookie needs --jwt-secret or --jwt-public-key")
            check_cookie_name(self["jwt-cookie"])
        if self["jwt-public-key"] is not None:
            self["jwt-public-key-pem"] = load_public_key(self["jwt-public-key"])
        if self["publish-token"] is not None:
            check_token("--publish-token", self["publish-token"])
        else:
            self["publish-token"] = os.environ.get("SSE_PUBLISH_TOKEN") or None
            if self["publish-token"] is not None:
                check_token("$SSE_PUBLISH_TOKEN", self["publish-token"])
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
    if options["redis"]:
        # Imported only here: the redis extra is optional (checked in postOptions).
        from .redis import RedisBus

        relay = RedisBus(
            options["redis"],
            history_size=options["history"] or 1000,
            history_ttl=options["history-ttl"],
            command_timeout=options["redis-timeout"],
        )
        relay.history.max_bytes = options["history-bytes"]
    history: int | SQLiteHistory = options["history"]
    if options["history-db"] is not None:
        history = SQLiteHistory(
            options["history-db"],
            options["history"],
            options["history-ttl"],
            max_bytes=options["history-bytes"],
            open=False,  # when the service starts: after twistd forks and changes directory
        )
    broker = SSEBroker(
        relay=relay,
        queue_size=options["queue-size"],
        overflow=options["overflow"],
        heartbeat=options["heartbeat"],
        retry=options["retry"],
        history=history,
        log_clients=bool(options["log-clients"]),
        history_ttl=options["history-ttl"],
        history_bytes=options["history-bytes"],
        write_timeout=options["write-timeout"],
        drain_timeout=options["drain-timeout"],
    )
    auth = None
    if options["jwt-secret"] or options["jwt-public-key"]:
        auth = JWTAuth(
            secret=options["jwt-secret"],
            public_key=options.get("jwt-public-key-pem"),
            cookie=options["jwt-cookie"],
            private=options["private-channel"],
            allow_no_exp=bool(options["jwt-allow-no-exp"]),
        )
    publish_rate = (
        RateLimiter(options["publish-rate"], options["publish-burst"] or None)
        if options["publish-rate"]
        else None
    )
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
        publish_rate=publish_rate,
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
    service = SSEService(options["port"], site, broker, banner=banner)
    if isinstance(history, SQLiteHistory):
        # The first child: a file that cannot be used ends the start before
        # the port is bound (and logged as listening).
        opener = OpenHistory(history)
        opener.parent = service
        service.services.insert(0, opener)
    return service


class CannotOpenHistory(SystemExit, Exception):
    """
    The history's file cannot be used; the reason is already logged as one
    line. A C{SystemExit} (code 1) and an C{Exception}, as
    L{sse_twisted.service.CannotListen} (which says why): twistd exits 1 at
    once, without a traceback, and removes its pidfile.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.code = 1

    def __str__(self) -> str:
        return str(self.args[0])


class OpenHistory(Service):
    """
    Opens a L{SQLiteHistory}'s file as twistd starts the application: after
    it daemonised (SQLite connections must not cross a C{fork}) and changed
    to C{--rundir}, before the reactor runs. A file that cannot be used
    ends twistd with status 1 and one line, as a port that cannot be had does.
    """

    log = Logger()

    def __init__(self, history: SQLiteHistory) -> None:
        self.history = history

    def privilegedStartService(self) -> None:
        super().privilegedStartService()
        try:
            self.history.open()
        except HistoryFileError as e:
            self.log.critical("{message}", message=str(e))
            raise CannotOpenHistory(str(e)) from None
