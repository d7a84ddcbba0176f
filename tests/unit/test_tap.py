"""`twistd sse`: the plugin is found, Options' defaults and forms, makeService."""

from __future__ import annotations

import pytest
from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.python import usage

from sse_twisted import SSEService
from sse_twisted.tap import Options, makeService


def test_plugin_is_found() -> None:
    """twistd finds the `sse` tap through the plugin system."""
    makers = {m.tapname: m for m in getPlugins(IServiceMaker)}
    assert makers["sse"].options is Options


def test_options_defaults() -> None:
    """Defaults are as documented."""
    o = Options()
    o.parseOptions([])
    assert o["port"] == "tcp:8080"
    assert (o["path"], o["publish-path"], o["queue-size"], o["overflow"]) == (
        "/events",
        "/publish",
        64,
        "drop",
    )
    assert (o["heartbeat"], o["drain-timeout"], o["max-body"], o["history"]) == (
        15.0,
        5.0,
        1 << 20,
        1000,
    )


def test_options_port_forms() -> None:
    """--port takes a number or an endpoint description."""
    for given, expected in [
        ("9000", "tcp:9000"),
        ("tcp:80:interface=127.0.0.1", "tcp:80:interface=127.0.0.1"),
        ("unix:/run/sse.sock", "unix:/run/sse.sock"),
    ]:
        o = Options()
        o.parseOptions(["--port", given])
        assert o["port"] == expected


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--overflow", "explode"], "--overflow"),
        (["--queue-size", "0"], "--queue-size"),
        (["--queue-size", "many"], "integer"),
        (["--heartbeat", "-1"], "negative"),
        (["--heartbeat", "nan"], "negative"),
        (["--max-body", "-5"], "negative"),
        (["--path", "/x", "--publish-path", "x/"], "must differ"),
        (["--history", "0", "--overflow", "catchup"], "catchup"),
    ],
)
def test_bad_options(argv: list[str], message: str) -> None:
    """Bad options raise UsageError with a message that says what is wrong."""
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(argv)


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """SSE_PUBLISH_TOKEN is the default publish token."""
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", "env-token")
    o = Options()
    o.parseOptions([])
    assert o["publish-token"] == "env-token"
    o = Options()
    o.parseOptions(["--publish-token", "flag"])
    assert o["publish-token"] == "flag"


def test_make_service() -> None:
    """makeService wires the broker settings into an SSEService."""
    o = Options()
    o.parseOptions(
        [
            "--port",
            "tcp:0",
            "--queue-size",
            "7",
            "--overflow",
            "disconnect",
            "--heartbeat",
            "0",
            "--drain-timeout",
            "2",
        ]
    )
    svc = makeService(o)
    assert isinstance(svc, SSEService)
    assert (svc.broker.queue_size, svc.broker.overflow, svc.broker.drain_timeout) == (
        7,
        "disconnect",
        2,
    )


def test_backlog_where_the_endpoint_listens() -> None:
    """
    A listening socket gets a backlog of 4,096 (sized for reconnection storms)
    unless its endpoint says its own; endpoints that do not create their
    socket (systemd's) get none.
    """
    from sse_twisted.service import with_backlog

    for given, expected in [
        ("tcp:9000", "tcp:9000:backlog=4096"),
        ("tcp:80:interface=127.0.0.1", "tcp:80:interface=127.0.0.1:backlog=4096"),
        ("unix:/run/sse.sock", "unix:/run/sse.sock:backlog=4096"),
        ("ssl:8443:privateKey=k.pem", "ssl:8443:privateKey=k.pem:backlog=4096"),
        ("tcp:80:backlog=16", "tcp:80:backlog=16"),
        (r"unix:/tmp/a\:backlog=1", r"unix:/tmp/a\:backlog=1:backlog=4096"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
    ]:
        assert with_backlog(given) == expected, given
