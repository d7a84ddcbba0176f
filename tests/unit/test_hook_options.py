"""
The hook and lifetime options of C{twistd sse}: refused at parse time in one
line when they could never work, and handed to the broker otherwise.
"""

from __future__ import annotations

import pytest

from sse_twisted.tap import makeService
from sse_twisted.webhooks import HTTPSubscribeHook, HTTPUnsubscribeHook

from .test_options import parse, refused


@pytest.mark.parametrize("option", ["--subscribe-hook", "--unsubscribe-hook"])
@pytest.mark.parametrize("url", ["ftp://h/x", "http://", "/hook", "h:80/x", "http://h:99999/"])
def test_a_hook_url_that_is_not_http_is_refused(option: str, url: str) -> None:
    """A hook URL must be an absolute http(s) URL with a host: said at once, naming the option."""
    assert refused(f"{option}={url}").startswith(f"{option} must be an http")


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--hook-timeout", "0"], "--hook-timeout must be more than 0 seconds"),
        (["--max-lifetime", "-1"], "--max-lifetime must not be negative"),
        (["--max-lifetime", "inf"], "--max-lifetime must be a finite"),
    ],
)
def test_numbers(argv: list[str], words: str) -> None:
    """The timeout must be positive; the lifetime a finite number (0: off)."""
    assert words in refused(*argv)


def test_the_options_reach_the_broker() -> None:
    """
    Defaults: no hooks, no lifetime, a 5 s hook timeout. Given, the broker
    gets the HTTP hooks with that timeout and the lifetime.
    """
    options = parse()
    assert options["max-lifetime"] == 0 and options["hook-timeout"] == 5.0
    broker = makeService(parse("--port", "tcp:0")).broker  # type: ignore[attr-defined]
    assert broker.on_subscribe is None and broker._reports is None
    assert broker._lifetimes is None
    broker = makeService(  # type: ignore[attr-defined]
        parse(
            "--port=tcp:0",
            "--subscribe-hook=https://app.example/sse/subscribe",
            "--unsubscribe-hook=http://127.0.0.1:8000/ended",
            "--hook-timeout=2.5",
            "--max-lifetime=600",
        )
    ).broker
    hook = broker.on_subscribe
    assert isinstance(hook, HTTPSubscribeHook)
    assert hook.url == "https://app.example/sse/subscribe" and hook.timeout == 2.5
    reporter = broker._reports.hook
    assert isinstance(reporter, HTTPUnsubscribeHook) and reporter.timeout == 2.5
    assert broker._lifetimes.lifetime == 600
