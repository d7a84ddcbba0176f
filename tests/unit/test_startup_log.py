"""
What `twistd sse` logs as it starts: the non-default options, secrets
redacted; and factories that log nothing of their own.
"""

from __future__ import annotations

import pytest
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python import usage

from sse_twisted._startup import non_default_options, options_line, redact_url
from sse_twisted.redis.resp import RespFactory
from sse_twisted.redis.session import SessionFactory
from sse_twisted.resource import PageResource
from sse_twisted.site import SSESite
from sse_twisted.tap import Options, makeService

TOKEN = "tok-0123456789abcdef0123456789abcdef"
SECRET = "jwt-secret-0123456789abcdef0123456789"
PASSWORD = "hunter2-redis-password"


def parse(*argv: str) -> Options:
    options = Options()
    options.parseOptions(list(argv))
    return options


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{PASSWORD}@db:6379/0", "redis://:REDACTED@db:6379/0"),
        (f"redis://alice:{PASSWORD}@db/2", "redis://alice:REDACTED@db/2"),
        (f"rediss://{PASSWORD}@db:6380", "rediss://REDACTED@db:6380"),
        ("redis://db:6379/0", "redis://db:6379/0"),
        ("tcp:8080:interface=127.0.0.1", "tcp:8080:interface=127.0.0.1"),
        (
            f"a redis://u:{PASSWORD}@h and https://x:y@z/",
            "a redis://u:REDACTED@h and https://x:REDACTED@z/",
        ),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    """A URL's password (or a user information without a ':', whole) is redacted; the rest kept."""
    assert redact_url(url) == shown


def test_defaults_say_so() -> None:
    """With every option at its default, the line says so rather than listing nothing."""
    assert options_line(parse()) == "options: all defaults"


def test_non_default_options_as_command_line_words(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    Each option that differs from its default is listed once (a repeatable
    one once per value, a flag bare), quoted for a shell; an option given at
    its default value is not.
    """
    monkeypatch.delenv("SSE_PUBLISH_TOKEN", raising=False)
    options = parse(
        "--history", "50",
        "--heartbeat", "15",  # the default
        "--no-demo",
        "--cors-origin", "https://a.example",
        "--cors-origin", "*",
        "--path", "/my events",
        "--history-ttl", "30",
    )  # fmt: skip
    assert non_default_options(options) == [
        "--no-demo",
        "--path='/my events'",
        "--history=50",
        "--history-ttl=30.0",
        "--cors-origin=https://a.example",
        "--cors-origin='*'",
    ]


def test_secrets_are_redacted(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    """
    The JWT secret, the publish token (from argv or the environment) and a
    Redis password are named but never written; a key read from its file
    (derived, not an option) is not listed.
    """
    pytest.importorskip("hiredis")
    monkeypatch.setenv("SSE_PUBLISH_TOKEN", TOKEN)
    options = parse(
        "--jwt-secret", SECRET,
        "--redis", f"redis://:{PASSWORD}@127.0.0.1:6379/0",
        "--private-channel", "user-*",
    )  # fmt: skip
    line = options_line(options)
    for secret in (TOKEN, SECRET, PASSWORD):
        assert secret not in line
    assert "--publish-token=REDACTED" in line
    assert "--jwt-secret=REDACTED" in line
    assert "--redis=redis://:REDACTED@127.0.0.1:6379/0" in line
    assert "--private-channel='user-*'" in line


def test_an_option_added_later_is_listed() -> None:
    """Options are read from their declarations: one this module never heard of is listed too."""

    class More(Options):
        optParameters = [["colour", None, "blue", "A new option."]]
        optFlags = [["loud", None, "A new flag."]]

    options = More()
    options.parseOptions(["--colour", "red", "--loud"])
    assert non_default_options(options) == ["--loud", "--colour=red"]
    options = More()
    options.parseOptions([])
    assert non_default_options(options) == []
    assert isinstance(options, usage.Options)


def test_banner_carries_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    """makeService's listening line ends with the options line, its secrets redacted."""
    monkeypatch.delenv("SSE_PUBLISH_TOKEN", raising=False)
    service = makeService(parse("--publish-token", TOKEN, "--queue-size", "8"))
    banner = service.listener.banner  # type: ignore[attr-defined]
    assert banner.endswith("\noptions: --publish-token=REDACTED --queue-size=8"), banner
    assert TOKEN not in banner


def test_factories_are_quiet() -> None:
    """The server's factories (its site, its Redis links') log nothing as they start or stop."""
    seen: list[str] = []

    def observe(event: dict[str, object]) -> None:
        seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        for factory in (
            SSESite(PageResource(b"ok", b"text/plain")),
            RespFactory(),
            SessionFactory(),
        ):
            factory.doStart()
            factory.doStop()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert [line for line in seen if "factory" in line.lower()] == []
