"""C{twistd sse}: its options and C{makeService}."""

from __future__ import annotations

import getopt
import importlib.util
import os
import re
import sqlite3
import sys
from typing import Any, cast
from urllib.parse import urlsplit

from twisted.application.service import IService, Service
from twisted.copyright import version as twisted_version
from twisted.logger import Logger
from twisted.python import usage

from ._config import Kind, config_arguments, read_config
from ._options import (
    check_cookie_name,
    check_endpoint_in,
    check_origin,
    check_token,
    count,
    endpoint_description,
    load_public_key,
    rate,
    read_secret_file,
    seconds,
)
from ._startup import options_line
from ._version import __version__
from .app import make_resource
from .auth import JWTAuth
from .broker import SSEBroker
from .collector import CollectorSettings
from .cors import CORSPolicy
from .durable import HistoryFileError, SQLiteHistory
from .history import DEFAULT_HISTORY_BYTES
from .idempotency import DEFAULT_WINDOW, MAX_WINDOW, SQLiteIdempotency, idempotency_for
from .limits import DEFAULT_MAX_CHANNELS, RateLimiter, SubscriberLimits
from .paths import normalise_path
from .presence import DEFAULT_LEAVE_GRACE, PresenceEvents
from .publish import DEFAULT_MAX_BODY
from .service import SSEService
from .site import SSESite
from .subscriber import OVERFLOW_POLICIES
from .webhooks import HTTPSubscribeHook, HTTPUnsubscribeHook, hook_url

__all__ = ["Options", "makeService"]

#: The plugin's own log (warnings about options, at start).
log = Logger()

#: The secrets: each option, the option naming a file that holds it, and the
#: environment variable read when neither is given. The command line beats a
#: --config file, which beats the environment (inherited without asking, so
#: the weakest); within one of them, a value and a file is an error.
SECRETS: tuple[tuple[str, str | None, str], ...] = (
    ("jwt-secret", "jwt-secret-file", "SSE_JWT_SECRET"),
    ("publish-token", "publish-token-file", "SSE_PUBLISH_TOKEN"),
    ("redis", None, "SSE_REDIS_URL"),
)

#: The option a usage message starts with (C{--port 'x' is not ...}).
_OPTION_NAMED = re.compile(r"--([a-z][a-z-]*)")

#: Options a --config file cannot set, and why.
_COMMAND_LINE_ONLY = {
    "config": "cannot be set in a config file (one file, given on the command line)",
    "check": "can only be given on the command line",
    "help": "can only be given on the command line",
    "version": "can only be given on the command line",
}


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
        [
            "presence-events",
            None,
            "Publish sse.join on a channel when a user's (JWT sub) first stream naming it "
            "opens, and sse.leave when their last one has been gone --leave-grace seconds.",
        ],
        [
            "check",
            None,
            "Check the options (and the --config file, key and secret files), "
            "print ok and exit 0, or the error and exit non-zero, without listening.",
        ],
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
            "presence-path",
            None,
            "/presence",
            "URL path of presence (GET ?channel=NAME: clients and users; "
            "the same authority as publishing).",
        ],
        [
            "publish-token",
            None,
            None,
            "Bearer token required to publish (default: $SSE_PUBLISH_TOKEN; "
            "without one, only loopback peers may publish). On the command line every "
            "local user can read it: prefer --publish-token-file or the environment.",
        ],
        [
            "publish-token-file",
            None,
            None,
            "Read the publish token from this file (one trailing newline is dropped).",
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
            "redis://[:password@]host:port/db or rediss://... (needs the 'redis' extra; "
            "default: $SSE_REDIS_URL).",
        ],
        [
            "jwt-secret",
            None,
            None,
            "Verify subscriber/publisher JWTs with this HS256 secret (default: "
            "$SSE_JWT_SECRET). On the command line every local user can read it: "
            "prefer --jwt-secret-file or the environment.",
        ],
        [
            "jwt-secret-file",
            None,
            None,
            "Read the HS256 JWT secret from this file (one trailing newline is dropped).",
        ],
        [
            "jwt-public-key",
            None,
            None,
            "Verify JWTs (RS256/ES256) with the PEM public key in this file.",
        ],
        ["jwt-cookie", None, None, "Also read the JWT from this cookie."],
        [
            "config",
            None,
            None,
            "Read options from this TOML file (keys: the long option names; "
            "the command line overrides it).",
        ],
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
            "idempotency-window",
            None,
            DEFAULT_WINDOW,
            "Seconds a publish's Idempotency-Key is remembered (a repeat is not published"
            " again); 0: keys are refused.",
            seconds("idempotency-window"),
        ],
        [
            "leave-grace",
            None,
            DEFAULT_LEAVE_GRACE,
            "Seconds a user's last stream on a channel may be gone before sse.leave "
            "(--presence-events): a reconnect within it is neither a leave nor a join.",
            seconds("leave-grace"),
        ],
        [
            "redis-timeout",
            None,
            5.0,
            "Seconds to wait for Redis to connect or answer before a publish gets 503.",
            seconds("redis-timeout", positive=True),
        ],
        [
            "subscribe-hook",
            None,
            None,
            "POST each new stream's channels, patterns, peer and Cookie/Authorization/Origin "
            "to this http(s) URL; it answers what to grant, or 401/403 (see the README).",
            hook_url("subscribe-hook"),
        ],
        [
            "unsubscribe-hook",
            None,
            None,
            "POST the streams that ended (user, channels, reason, seconds), batched, "
            "to this http(s) URL.",
            hook_url("unsubscribe-hook"),
        ],
        [
            "hook-timeout",
            None,
            5.0,
            "Seconds a hook may take; a subscribe hook slower than that (or down) sends "
            "the client away to retry later.",
            seconds("hook-timeout", positive=True),
        ],
        [
            "max-lifetime",
            None,
            0.0,
            "End a stream cleanly after this many seconds (jittered by 10%); its client "
            "reconnects and resumes with no loss. 0 turns it off.",
            seconds("max-lifetime"),
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["cors-origin"] = []
        self["private-channel"] = []
        self._refused = False
        #: Lines to log as a warning at start (a secret given on the command line).
        self.warnings: list[str] = []
        self._given: set[str] = set()
        self._from_config: set[str] = set()

    def parseOptions(self, options: list[str] | None = None) -> None:
        argv = sys.argv[1:] if options is None else list(options)
        self._given = self._named_in(argv)
        try:
            super().parseOptions(argv)
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

    def _named_in(self, argv: list[str]) -> set[str]:
        """The long names of the options C{argv} gives (what a --config file may not override)."""
        try:
            opts, _ = getopt.getopt(argv, self.shortOpt, self.longOpt)
        except getopt.error:
            return set()  # parseOptions says what is wrong
        names = set()
        for opt, _arg in opts:
            name = opt.lstrip("-")
            name = self.synonyms.get(name, self.synonyms.get(name.replace("-", "_"), name))
            names.add(name.replace("_", "-"))
        return names

    def _config_kinds(self) -> dict[str, Kind]:
        """What each option a --config file may set must be there, from its default."""
        kinds: dict[str, Kind] = {str(flag[0]): "flag" for flag in self.optFlags}
        for parameter in self.optParameters:
            # Rows of mixed types: [long, short, default, doc(, coerce)].
            row = cast("list[Any]", parameter)
            name, default = str(row[0]), row[2]
            if name == "port":
                kinds[name] = "port"
            elif isinstance(default, int):
                kinds[name] = "integer"
            elif isinstance(default, float):
                kinds[name] = "number"
            else:
                kinds[name] = "string"
        kinds["cors-origin"] = kinds["private-channel"] = "strings"
        for name in _COMMAND_LINE_ONLY:
            kinds.pop(name, None)
        return kinds

    def _apply_config(self, path: str) -> None:
        """
        Set each option of the --config file C{path} that the command line
        did not give, through the command line's own coercers and handlers.
        A secret given on the command line in either form (value or file)
        replaces the file's, in either form.
        """
        elsewhere = dict(_COMMAND_LINE_ONLY)
        if self.parent is not None:
            runner = os.path.basename(sys.argv[0]) or "twistd"
            for long_name in getattr(self.parent, "longOpt", []):
                name = long_name.rstrip("=")
                elsewhere.setdefault(
                    name, f"is {runner}'s own option: give it on the command line before 'sse'"
                )
        arguments = config_arguments(read_config(path), self._config_kinds(), path, elsewhere)
        overridden = set(self._given)
        for secret, secret_file, _env in SECRETS:
            if secret_file is not None and {secret, secret_file} & self._given:
                overridden |= {secret, secret_file}
        held = [
            name
            for name, _file, _env in SECRETS
            if arguments.get(name) and name not in overridden
            if name != "redis" or _has_password(str(arguments[name][0]))
        ]
        if held and os.stat(path).st_mode & 0o004:
            self.warnings.append(
                f"{path} holds {', '.join(held)} and every local user can read it: "
                f"chmod o-r {path}, or name a file that holds the secret instead"
            )
        for name, args in arguments.items():
            if name in overridden:
                continue
            self._from_config.add(name)
            handler = self._dispatch[self.synonyms.get(name, name.replace("-", "_"))]
            for arg in args:
                try:
                    if isinstance(handler, usage.CoerceParameter):
                        handler.dispatch(name, arg)
                    else:
                        handler(name, arg)
                except usage.UsageError as e:
                    raise usage.UsageError(f"{path}: {e}") from None

    def _resolve_secrets(self) -> dict[str, str]:
        """
        Each secret from the command line, a --config file, a file it names,
        or else the environment; a warning for one given on the command line.

        @return: for each secret that is set, where it came from, for messages.
        """
        origins = {}
        for name, file_option, env in SECRETS:
            if file_option is not None and self[file_option] is not None:
                if self[name] is not None:
                    raise usage.UsageError(f"give --{name} or --{file_option}, not both")
                origins[name] = f"--{file_option} {self[file_option]}"
                self[name] = read_secret_file(f"--{file_option}", self[file_option])
            elif self[name] is not None:
                origins[name] = f"--{name}"
                if name in self._given and (name != "redis" or _has_password(self[name])):
                    instead = f"--{file_option}, ${env}" if file_option else f"${env}"
                    self.warnings.append(
                        f"--{name} on the command line can be read by every local user "
                        f"(ps, /proc/PID/cmdline): use {instead} or a --config file instead"
                    )
            else:
                self[name] = os.environ.get(env) or None
                origins[name] = f"${env}"
        return origins

    def _check(self) -> None:
        """--check: build the service as twistd would (without listening), say ok, exit 0."""
        try:
            makeService(self)
        except ValueError as e:
            raise usage.UsageError(str(e)) from None
        for warning in self.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        print(f"ok: would listen on {self['port']}")
        sys.exit(0)

    def postOptions(self) -> None:
        if self["config"] is not None:
            self._apply_config(self["config"])
        try:
            self._check_options()
        except usage.UsageError as e:
            # An option set by the config file: say which file.
            named = _OPTION_NAMED.match(str(e))
            if named and named.group(1) in self._from_config:
                raise usage.UsageError(f"{self['config']}: {e}") from None
            raise
        if self["check"]:
            self._check()

    def _check_options(self) -> None:
        """Refuse, in one line, options that could never work together (or at all)."""
        origins = self._resolve_secrets()
        if self["overflow"] not in OVERFLOW_POLICIES:
            raise usage.UsageError(
                f"--overflow must be one of {', '.join(OVERFLOW_POLICIES)}, "
                f"got {self['overflow']!r}"
            )
        if self["overflow"] == "catchup" and self["history"] == 0:
            raise usage.UsageError("--overflow catchup needs a history (--history N, N > 0)")
        check_endpoint_in(self["port"], self.parent)
        if self["redis"]:
            # find_spec, not an import: importing sse_twisted.redis is not
            # needed to tell whether the extra (hiredis) is installed.
            if importlib.util.find_spec("hiredis") is None:
                raise usage.UsageError(
                    "--redis needs the 'redis' extra: pip install 'sse-twisted[redis]'"
                )
            from .redis import parse_redis_url

            try:
                parse_redis_url(self["redis"])
            except ValueError as e:
                raise usage.UsageError(f"{origins['redis']}: {e}") from None
        if self["idempotency-window"] > MAX_WINDOW:
            raise usage.UsageError(
                f"--idempotency-window must be at most {MAX_WINDOW:g} seconds (a week),"
                f" got {self['idempotency-window']:g}"
            )
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
            check_token(origins["publish-token"], self["publish-token"])
        paths = [
            normalise_path(self["path"]),
            normalise_path(self["publish-path"], "/publish"),
            normalise_path(self["health-path"], "/health"),
            normalise_path(self["presence-path"], "/presence"),
        ]
        if not self["no-metrics"]:
            paths.append(normalise_path(self["metrics-path"], "/metrics"))
        if len(set(paths)) != len(paths):
            raise usage.UsageError(
                "--path, --publish-path, --health-path, --presence-path and --metrics-path"
                " must differ"
            )
        if "leave-grace" in self._given | self._from_config and not self["presence-events"]:
            raise usage.UsageError("--leave-grace needs --presence-events")


def _has_password(url: str) -> bool:
    """Whether a Redis URL carries a password (or a user: both are credentials)."""
    try:
        parts = urlsplit(url)
        return parts.password is not None or parts.username is not None
    except ValueError:
        return True


def makeService(options: Options) -> IService:
    """Build the broker, its Klein app and the service that serves and drains it."""
    for warning in getattr(options, "warnings", ()):
        log.warn("{warning}", warning=warning)
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
        idempotency=(idempotency := idempotency_for(options, relay)),
        max_lifetime=options["max-lifetime"],
        **hooks_for(options),
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
    presence = None
    if relay is not None:
        from .redis.presence import RedisPresence

        presence = RedisPresence(
            relay, broker.presence_tracker, is_private=auth.is_private if auth else None
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
        presence_path=options["presence-path"],
        presence_source=presence.presence if presence is not None else None,
    )
    site = SSESite(
        root, header_timeout=options["header-timeout"], access_log=bool(options["access-log"])
    )
    site.displayTracebacks = False
    banner = (
        f"; stream at {normalise_path(options['path'])}, publish at "
        f"{normalise_path(options['publish-path'], '/publish')}"
        f" ({'token required' if options['publish-token'] else 'loopback only'})"
        f"\n{options_line(options)}"  # secrets redacted
    )
    service = SSEService(options["port"], site, broker, banner=banner)
    CollectorSettings().setServiceParent(service)
    if options["presence-events"]:
        # Held by the tracker it listens to; quiet once the broker drains.
        PresenceEvents(
            broker,
            broker.presence_tracker,
            grace=options["leave-grace"],
            shared=presence.decide if presence is not None else None,
        )
    if presence is not None:
        presence.setServiceParent(service)
    if isinstance(history, SQLiteHistory):
        # The first child: a file that cannot be used ends the start before
        # the port is bound (and logged as listening).
        opener = OpenHistory(
            history, idempotency if isinstance(idempotency, SQLiteIdempotency) else None
        )
        opener.parent = service
        service.services.insert(0, opener)
    return service


def hooks_for(options: Options) -> dict[str, Any]:
    """The broker's hooks that C{--subscribe-hook} and C{--unsubscribe-hook} ask for."""
    hooks: dict[str, Any] = {}
    timeout = options["hook-timeout"]
    if options["subscribe-hook"]:
        hooks["on_subscribe"] = HTTPSubscribeHook(options["subscribe-hook"], timeout)
    if options["unsubscribe-hook"]:
        hooks["on_unsubscribe"] = HTTPUnsubscribeHook(options["unsubscribe-hook"], timeout)
    return hooks


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

    def __init__(self, history: SQLiteHistory, keys: SQLiteIdempotency | None = None) -> None:
        self.history = history
        self.keys = keys

    def privilegedStartService(self) -> None:
        """Open the history's file (and the idempotency keys in it), or end the start."""
        super().privilegedStartService()
        try:
            self.history.open()
        except HistoryFileError as e:
            self.log.critical("{message}", message=str(e))
            raise CannotOpenHistory(str(e)) from None
        if self.keys is not None:
            try:
                self.keys.open()
            except sqlite3.Error as e:
                message = f"--history-db {self.history.path}: idempotency keys: {e}"
                self.log.critical("{message}", message=message)
                raise CannotOpenHistory(message) from None
