"""
`twistd sse` refuses at option time what would fail later, and SSEService
fails at once, in one line, when it cannot listen (issue 9, items 2-4).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.python import usage
from twisted.web.resource import Resource
from twisted.web.server import Site

from sse_twisted import SSEBroker, SSEService, __version__
from sse_twisted.history import MemoryHistory
from sse_twisted.service import CannotListen
from sse_twisted.tap import Options, makeService

from ..support.tls import self_signed


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


def refused(*argv: str) -> str:
    """The UsageError message for argv (which must be refused)."""
    with pytest.raises(usage.UsageError) as info:
        parse(*argv)
    return str(info.value)


# --- the port -------------------------------------------------------------


@pytest.mark.parametrize(
    "port, words",
    [
        ("abc", "Unknown endpoint type: 'abc'"),
        ("tcp:abc", "invalid literal"),
        ("99999", "port must be 0-65535, got 99999"),
        ("tcp:70000:interface=127.0.0.1", "port must be 0-65535"),
        ("tcp:8080:bogus=1", "bogus"),
        ("ssl:8443:privateKey=/nonexistent/key.pem", "No such file"),
        ("systemd:domain=INET:index=0", "LISTEN_FDS"),
    ],
)
def test_unusable_port_is_a_usage_error(port: str, words: str) -> None:
    """--port that could never be listened on is one usage line naming --port and why."""
    message = refused("--port", port)
    assert message.startswith("--port ")
    assert words in message
    assert "\n" not in message


def test_usable_ports_pass() -> None:
    """Parsing an endpoint does not bind it or need a reactor; good forms pass."""
    for port in ["0", "8080", "tcp:0:interface=127.0.0.1", "tcp6:8080", "unix:/run/sse.sock"]:
        assert parse("--port", port)["port"]


# --- optional dependency --------------------------------------------------


def test_redis_without_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """--redis without hiredis is a usage error that names the extra to install."""
    monkeypatch.setitem(sys.modules, "hiredis", None)  # as if not installed
    message = refused("--redis", "redis://127.0.0.1:6379/0")
    assert "pip install 'sse-twisted[redis]'" in message


def test_redis_with_the_extra_and_its_timeout() -> None:
    """--redis-timeout reaches RedisBus as command_timeout (default 5 s)."""
    options = parse("--redis", "redis://127.0.0.1:6379/0")
    assert options["redis-timeout"] == 5.0
    options = parse("--redis", "redis://127.0.0.1:6379/0", "--redis-timeout", "0.5")
    relay = makeService(options).broker.relay  # type: ignore[attr-defined]
    assert relay.command_timeout == 0.5


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon"])
def test_redis_timeout_must_be_positive(value: str) -> None:
    """--redis-timeout of 0, below 0 or not a finite number is refused."""
    assert "--redis-timeout" in refused("--redis-timeout", value)


# --- JWT ------------------------------------------------------------------


def _public_pem(key: Any) -> bytes:
    data: bytes = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def test_jwt_public_key_rsa_and_ec(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """An RSA or an EC public key in PEM is loaded at option time."""
    for key in (rsa_key, ec.generate_private_key(ec.SECP256R1())):
        path = tmp_path / "key.pem"
        path.write_bytes(_public_pem(key))
        assert parse("--jwt-public-key", str(path))["jwt-public-key-pem"] == path.read_bytes()


def test_jwt_public_key_not_pem(tmp_path: Path) -> None:
    """A --jwt-public-key file that is not a PEM public key is refused in one line."""
    path = tmp_path / "key.pem"
    path.write_text("this is not a key\n")
    message = refused("--jwt-public-key", str(path))
    assert (
        message == f"--jwt-public-key {path} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
    )


def test_jwt_public_key_given_a_private_key(tmp_path: Path, rsa_key: rsa.RSAPrivateKey) -> None:
    """A private key is refused with how to get its public key."""
    path = tmp_path / "key.pem"
    path.write_bytes(
        rsa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    assert "private key" in refused("--jwt-public-key", str(path))


def test_jwt_public_key_of_another_kind(tmp_path: Path) -> None:
    """A public key neither RS256 nor ES256 can use (Ed25519) is refused."""
    path = tmp_path / "key.pem"
    path.write_bytes(_public_pem(ed25519.Ed25519PrivateKey.generate()))
    assert "RS256 needs an RSA key" in refused("--jwt-public-key", str(path))


def test_jwt_public_key_missing(tmp_path: Path) -> None:
    """An unreadable --jwt-public-key file is refused."""
    assert "cannot read --jwt-public-key" in refused("--jwt-public-key", str(tmp_path / "none"))


def test_empty_jwt_secret() -> None:
    """--jwt-secret= is refused rather than turning JWT off in silence."""
    assert refused("--jwt-secret=").startswith("--jwt-secret must not be empty")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--jwt-cookie", "token"], "--jwt-cookie needs"),
        (["--jwt-allow-no-exp"], "--jwt-allow-no-exp needs"),
        (["--jwt-secret", "s" * 32, "--jwt-cookie", "my token"], "not a cookie name"),
        (["--jwt-secret", "s" * 32, "--jwt-cookie", "jéton"], "not a cookie name"),
    ],
)
def test_bad_jwt_cookie(argv: list[str], words: str) -> None:
    """--jwt-cookie without a JWT key, or that is no cookie name, is refused."""
    assert words in refused(*argv)


# --- CORS and tokens ------------------------------------------------------


def test_non_ascii_cors_origin() -> None:
    """A non-ASCII origin is one usage line that gives its punycode form."""
    message = refused("--cors-origin", "https://bücher.example")
    assert message.startswith("--cors-origin 'https://bücher.example' is not ASCII")
    assert "https://xn--bcher-kva.example" in message


@pytest.mark.parametrize("origin", ["app.example", "https://app.example/page", "https://"])
def test_cors_origin_that_could_never_match(origin: str) -> None:
    """An origin without a scheme, or with a path, is refused: no browser would send it."""
    assert "is not an origin" in refused("--cors-origin", origin)


def test_good_cors_origins() -> None:
    """'*', scheme://host[:port] (a trailing slash dropped) and 'null' are kept."""
    options = parse(
        *("--cors-origin", "*", "--cors-origin", "https://app.example/"),
        *("--cors-origin", "http://localhost:8080", "--cors-origin", "null"),
    )
    assert options["cors-origin"] == ["*", "https://app.example", "http://localhost:8080", "null"]


@pytest.mark.parametrize("token", ["", "two words", "tab\there", "jéton"])
def test_bad_publish_token(token: str) -> None:
    """A publish token that is empty or that no client could send as given is refused."""
    assert refused(f"--publish-token={token}").startswith("--publish-token must")


def test_bad_publish_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$SSE_PUBLISH_TOKEN is checked as --publish-token is, and named in the message."""
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "has space")
    assert refused().startswith("$SSE_PUBLISH_TOKEN must")


# --- numbers and --help ---------------------------------------------------


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--queue-size", "0"], "--queue-size must be a positive integer, got 0"),
        (["--heartbeat", "inf"], "--heartbeat must be a finite"),
        (["--publish-rate", "fast"], "--publish-rate must be a number of requests per second"),
        (["--publish-rate", "-1"], "--publish-rate must not be negative"),
        (["--publish-burst", "5"], "--publish-burst needs --publish-rate"),
        (["--write-timeout", "-1"], "--write-timeout must not be negative"),
        (["--history", "-1"], "--history must be a non-negative integer"),
    ],
)
def test_numbers(argv: list[str], words: str) -> None:
    """Numeric options say in words what they accept."""
    assert words in refused(*argv)


def test_write_timeout_reaches_the_broker() -> None:
    """--write-timeout defaults to 0 (off) and is passed to SSEBroker."""
    assert parse()["write-timeout"] == 0.0
    service = makeService(parse("--port", "tcp:0", "--write-timeout", "2.5"))
    assert service.broker.write_timeout == 2.5  # type: ignore[attr-defined]


def test_help_describes_the_options() -> None:
    """--help: --publish-rate is a rate, --queue-size positive, --publish-burst's default told."""
    text = " ".join(str(Options()).split())
    rate = text[text.index("--publish-rate=") : text.index("--publish-token=")]
    assert "Requests per second" in rate and "Seconds" not in rate
    queue = text[text.index("--queue-size=") : text.index("--redis=")]
    assert "A positive integer" in queue and "non-negative" not in queue
    burst = text[text.index("--publish-burst=") : text.index("--publish-path=")]
    assert "0: the rate, rounded, at least 1" in burst
    assert "--write-timeout=" in text and "--redis-timeout=" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints sse_twisted's version and Twisted's, and exits 0."""
    import twisted

    with pytest.raises(SystemExit) as info:
        parse("--version")
    assert info.value.code == 0
    assert capsys.readouterr().out == f"sse_twisted {__version__}\nTwisted {twisted.__version__}\n"


# --- the service ------------------------------------------------------------


class Relay:
    """A relay that records when it is started and stopped."""

    ready = True

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.history = MemoryHistory(10)
        self.on_event: Any = None
        self.on_gap: Any = None

    def start(self) -> None:
        self.calls.append("start")

    def stop(self) -> Deferred[None]:
        self.calls.append("stop")
        return succeed(None)

    def publish(self, items: Any) -> Deferred[list[str]]:
        raise NotImplementedError


class RefusingReactor(MemoryReactorClock):
    """A reactor whose listenTCP fails as bind() would on a port in use."""

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        raise CannotListenError(interface, port, OSError(98, "Address already in use"))


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """Every log event emitted during the test."""
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def service(reactor: Any, port: str = "tcp:8123:interface=127.0.0.1") -> SSEService:
    broker = SSEBroker(reactor=reactor, heartbeat=0, relay=Relay())
    return SSEService(port, Site(Resource()), broker, reactor=reactor, drain_timeout=1)


def relay_calls(svc: SSEService) -> list[str]:
    relay = svc.broker.relay
    assert isinstance(relay, Relay)
    return relay.calls


def test_binds_in_privileged_start() -> None:
    """The port is bound in privilegedStartService (before --uid); the relay starts after."""
    reactor = MemoryReactorClock()
    svc = service(reactor)
    svc.privilegedStartService()
    assert [p[0] for p in reactor.tcpServers] == [8123]
    assert relay_calls(svc) == []
    svc.startService()
    assert [p[0] for p in reactor.tcpServers] == [8123]  # not bound twice
    assert relay_calls(svc) == ["start"]
    svc.stopService()
    assert relay_calls(svc) == ["start", "stop"]


def test_cannot_listen_is_one_line_and_exits_1(logged: list[dict[str, Any]]) -> None:
    """A port in use: one critical line naming endpoint and reason; CannotListen, exit code 1."""
    svc = service(RefusingReactor())
    with pytest.raises(CannotListen) as info:
        svc.privilegedStartService()
    error = info.value
    # An Exception for twistd (which removes its pidfile and re-raises) and a
    # SystemExit with code 1 for Python (no traceback).
    assert isinstance(error, Exception) and isinstance(error, SystemExit)
    assert error.code == 1
    line = "Cannot listen on tcp:8123:interface=127.0.0.1: [Errno 98] Address already in use"
    assert str(error) == line
    assert [(e["log_level"], e["message"]) for e in logged] == [(LogLevel.critical, line)]
    assert not any("log_failure" in e for e in logged)
    assert relay_calls(svc) == []


def test_unknown_endpoint_type_cannot_listen(logged: list[dict[str, Any]]) -> None:
    """An endpoint that does not parse fails the same way (for services built in code)."""
    with pytest.raises(CannotListen, match="Cannot listen on abc: Unknown endpoint type"):
        service(MemoryReactorClock(), "abc").privilegedStartService()
    assert len(logged) == 1


def test_stop_after_failure_or_without_start_is_harmless() -> None:
    """stopService of a service that never listened fires at once, and drains."""
    for svc, start in [(service(RefusingReactor()), True), (service(MemoryReactorClock()), False)]:
        if start:
            with pytest.raises(CannotListen):
                svc.startService()
        fired: list[object] = []
        svc.stopService().addCallback(fired.append)
        assert fired == [None]
        assert svc.broker.draining and not svc.running
        assert relay_calls(svc) == ["stop"]


class LateEndpoint:
    """An endpoint whose listen() answers later (as one that waits on something)."""

    def __init__(self) -> None:
        self.listening: Deferred[Any] = Deferred()

    def listen(self, factory: Any) -> Deferred[Any]:
        return self.listening


def test_late_listen_failure_stops_the_reactor(logged: list[dict[str, Any]]) -> None:
    """A listen that fails after start is one critical line, and stops the reactor."""
    reactor = MemoryReactorClock()
    reactor.running = True
    svc = service(reactor, "late:")
    endpoint = LateEndpoint()
    svc.listener.endpoint = endpoint
    svc.startService()
    endpoint.listening.errback(CannotListenError("", 1, OSError(13, "Permission denied")))
    assert [e["message"] for e in logged] == [
        "Cannot listen on late:: [Errno 13] Permission denied"
    ]
    assert reactor.hasStopped


def test_endpoint_plugin_that_needs_the_reactor(monkeypatch: pytest.MonkeyPatch) -> None:
    """An endpoint parser that uses the reactor at once is left to start-up, not refused."""
    import sse_twisted._options

    def parser(reactor: Any, description: str) -> Any:
        return reactor.callLater  # as a plugin's parser might

    monkeypatch.setattr(sse_twisted._options, "serverFromString", parser)
    assert parse("--port", "someplugin:x")["port"] == "someplugin:x"


def test_usage_after_a_refusal_is_short() -> None:
    """After a refusal the usage (which twistd prints before the error) is one pointer line."""
    options = Options()
    full = options.getUsage()
    assert "--publish-rate=" in full
    with pytest.raises(usage.UsageError):
        options.parseOptions(["--queue-size", "0"])
    assert options.getUsage() == "Run 'twistd sse --help' for the options."


def test_port_files_are_found_from_twistd_rundir(tmp_path: Path) -> None:
    """A TLS key named relative to twistd's --rundir is checked there, as it will be opened."""
    from twisted.scripts.twistd import ServerOptions

    self_signed(tmp_path)
    port = "ssl:8443:privateKey=key.pem:certKey=cert.pem"
    twistd = ServerOptions()
    twistd.parseOptions(["--rundir", str(tmp_path), "sse", "--port", port])
    assert twistd.subOptions["port"] == port
    with pytest.raises(usage.UsageError, match="No such file"):
        ServerOptions().parseOptions(["sse", "--port", port])  # not in this folder


def test_restart_listens_again() -> None:
    """A service stopped and started again listens again."""
    reactor = MemoryReactorClock()
    svc = service(reactor)
    svc.startService()
    svc.stopService()
    svc.startService()
    assert [p[0] for p in reactor.tcpServers] == [8123, 8123]
    assert svc.port is not None
