"""
The standalone server's hooks (C{--subscribe-hook}, C{--unsubscribe-hook}):
an HTTP backend (a Django, Flask or Klein application) decides who may
subscribe, with its own session cookie, and hears of every stream that ends.

Subscribe: the server POSTs::

    {"channels": [...], "patterns": [...], "peer": "ip:port",
     "headers": {"cookie": ..., "authorization": ..., "origin": ...}}

and the backend answers C{200 {"channels": [...], "patterns": [...],
"user": "..."}} (each key optional: a missing list grants what was asked),
or C{401}/C{403} (passed on to the client, with the backend's C{"error"}
when its body is JSON that has one). A backend that is down, that answers
anything else, or that takes longer than C{--hook-timeout} sends the client
away with a C{200} stream, a C{retry:} and an immediate end: EventSource
then tries again later, where a 5xx would stop it for good.

Unsubscribe: ended streams are POSTed in batches (every second, or at once
when 100 wait) as C{{"ended": [{"user": ..., "channels": ..., "patterns":
..., "peer": ..., "reason": ..., "seconds": ...}]}}, one POST at a time. At
most 10,000 wait: beyond that, and for a batch the backend did not take
(2xx), the reports are dropped and counted (L{HTTPUnsubscribeHook.dropped}).
As the broker stops, the drained streams' reports are sent at once
(L{HTTPUnsubscribeHook.flush}), for at most the timeout.

Failures are logged at warn, at most once per 10 seconds each.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlsplit

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.web.iweb import IResponse

from ._reactor import default_reactor
from .hooks import Admission, Ended, HookFailed, RateLimitedLog, Refused, peer_of
from .subscriber import EndReason

__all__ = ["HTTPSubscribeHook", "HTTPUnsubscribeHook", "check_hook_url", "hook_url"]

#: The largest answer read from a subscribe hook (a few channels and a user).
MAX_ANSWER = 64 * 1024

#: The request headers passed on to the subscribe hook.
_PASSED_HEADERS = (b"cookie", b"authorization", b"origin")


def check_hook_url(url: str) -> str:
    """
    C{url} if it is an absolute C{http} or C{https} URL with a host.

    @raise ValueError: saying what is wrong.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (raises ValueError for a port out of range)
    except ValueError as e:
        raise ValueError(f"must be an http or https URL: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"must be an http:// or https:// URL with a host, got {url!r}")
    return url


def hook_url(name: str) -> Any:
    """The coercer of a hook's URL option: refused at parse time, in one line."""

    def coerce(value: str) -> str:
        try:
            return check_hook_url(value)
        except ValueError as e:
            raise usage.UsageError(f"--{name} {e}") from None

    coerce.coerceDoc = "An http:// or https:// URL."  # type: ignore[attr-defined]
    return coerce


def _client(client: Any) -> Any:
    if client is not None:
        return client
    import treq  # the standalone server has it; an embedding app passes its own

    return treq


def _describe(failure: Failure, timeout: float) -> str:
    from twisted.internet.defer import TimeoutError as DeferredTimeout

    error = failure.value
    if isinstance(error, DeferredTimeout):
        return f"no answer within {timeout:g}s (--hook-timeout)"
    if isinstance(error, HookFailed):
        return str(error)
    return f"{type(error).__name__}: {error}".rstrip(": ")


class HTTPSubscribeHook:
    """
    An C{on_subscribe} that asks an HTTP backend (module docstring).

    @param url: the backend's http or https URL.
    @param timeout: seconds for the whole answer, body included.
    @param client: what to POST with: treq's functions C{post} and
        C{content} (C{treq} itself by default; a C{StubTreq} in tests).
    @param reactor: for the timeout; the global reactor when C{None}.
    """

    log = Logger()

    def __init__(
        self, url: str, timeout: float = 5.0, *, client: Any = None, reactor: Any = None
    ) -> None:
        self.url = check_hook_url(url)
        if not timeout > 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.timeout = timeout
        self._client = client
        self._reactor = reactor

    def body(self, request: Any, channels: tuple[str, ...], patterns: tuple[str, ...]) -> Any:
        """What is POSTed for C{request}."""
        headers: dict[str, str | None] = {}
        for name in _PASSED_HEADERS:
            values = request.requestHeaders.getRawHeaders(name)
            joined = (b"; " if name == b"cookie" else b", ").join(values) if values else None
            headers[name.decode()] = joined.decode("latin-1") if joined is not None else None
        return {
            "channels": list(channels),
            "patterns": list(patterns),
            "peer": peer_of(request),
            "headers": headers,
        }

    def __call__(
        self, request: Any, channels: tuple[str, ...], patterns: tuple[str, ...]
    ) -> Deferred[Admission]:
        client = _client(self._client)
        asked: Deferred[Any] = client.post(self.url, json=self.body(request, channels, patterns))

        def answered(response: IResponse) -> Deferred[Admission]:
            code = response.code
            length = response.length
            if isinstance(length, int) and length > MAX_ANSWER:
                raise HookFailed(f"{self.url} answered {length} bytes (at most {MAX_ANSWER})")
            read: Deferred[bytes] = client.content(response)
            return read.addCallback(self._decide, code)

        asked.addCallback(answered)
        asked.addTimeout(self.timeout, default_reactor(self._reactor))

        def failed(failure: Failure) -> Failure:
            if not failure.check(Refused, HookFailed):
                raise HookFailed(f"{self.url}: {_describe(failure, self.timeout)}")
            return failure

        asked.addErrback(failed)
        return asked

    def _decide(self, body: bytes, code: int) -> Admission:
        if code in (401, 403):
            message = "not allowed to subscribe"
            try:
                error = json.loads(body).get("error")
            except (ValueError, AttributeError):
                error = None
            if isinstance(error, str) and error:
                message = error
            raise Refused(code, message)
        if code != 200:
            raise HookFailed(f"{self.url} answered {code}")
        try:
            answer = json.loads(body)
        except ValueError:
            raise HookFailed(f"{self.url} answered 200 with a body that is not JSON") from None
        if not isinstance(answer, dict):
            raise HookFailed(f"{self.url} answered 200 with JSON that is not an object")
        user = answer.get("user")
        if user is not None and not isinstance(user, str):
            raise HookFailed(f"{self.url}: 'user' must be a string or null, got {user!r}")
        # Lists are checked by the admission (strings, valid channel names).
        return Admission(answer.get("channels"), answer.get("patterns"), user)


class HTTPUnsubscribeHook:
    """
    An C{on_unsubscribe} that reports ended streams to an HTTP backend, in
    batches, bounded in memory (module docstring).

    @param url: the backend's http or https URL.
    @param timeout: seconds a POST may take.
    @param client: treq's C{post} and C{content} (C{treq} by default).
    @param reactor: for the batching timer and the timeout.
    @param batch: the most reports per POST (sent at once when this many wait).
    @param interval: seconds a report waits for others to join its batch.
    @param max_pending: the most reports held; beyond, they are dropped.
    """

    log = Logger()

    def __init__(
        self,
        url: str,
        timeout: float = 5.0,
        *,
        client: Any = None,
        reactor: Any = None,
        batch: int = 100,
        interval: float = 1.0,
        max_pending: int = 10_000,
    ) -> None:
        self.url = check_hook_url(url)
        self.timeout = timeout
        self.batch = batch
        self.interval = interval
        self.max_pending = max_pending
        self._client = client
        self._reactor = reactor
        self._pending: list[dict[str, Any]] = []
        self._timer: Any = None
        self._sending = False
        # flush(): send what waits now, one batch after the other.
        self._flushing: list[Deferred[None]] = []
        #: Reports given up on: over C{max_pending}, or in a batch that failed.
        self.dropped = 0
        #: Reports the backend took.
        self.sent = 0
        self._warnings = RateLimitedLog(self.log)

    def __call__(self, ended: Ended, reason: EndReason) -> None:
        if len(self._pending) >= self.max_pending:
            self.dropped += 1
            self._warnings.warn(
                "full", f"unsubscribe hook {self.url}: {self.max_pending} reports wait; dropping"
            )
            return
        self._pending.append(
            {
                "user": ended.user,
                "channels": list(ended.channels) if ended.channels is not None else None,
                "patterns": list(ended.patterns),
                "peer": ended.peer,
                "reason": reason,
                "seconds": round(ended.seconds, 3),
            }
        )
        self._schedule()

    @property
    def pending(self) -> int:
        """Reports waiting to be sent."""
        return len(self._pending)

    def flush(self) -> Deferred[None]:
        """
        Send every waiting report now (the server stops: its streams were
        just drained); fires once they are sent, or after C{timeout}
        seconds, when what still waits is dropped and counted.
        """
        done: Deferred[None] = Deferred()
        self._flushing.append(done)
        clock = default_reactor(self._reactor)
        late = clock.callLater(self.timeout, self._give_up)
        done.addBoth(lambda result: late.cancel() if late.active() else None)
        self._schedule()
        return done

    def _give_up(self) -> None:
        self.dropped += len(self._pending)
        self._pending = []
        self._flushed()

    def _flushed(self) -> None:
        waiting, self._flushing = self._flushing, []
        for done in waiting:
            done.callback(None)

    def _schedule(self) -> None:
        if self._sending:
            return
        if not self._pending:
            self._flushed()
            return
        if self._flushing or len(self._pending) >= self.batch:
            self._send()
        elif self._timer is None:
            self._timer = default_reactor(self._reactor).callLater(self.interval, self._send)

    def _send(self) -> None:
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        batch, self._pending = self._pending[: self.batch], self._pending[self.batch :]
        if not batch:
            return
        self._sending = True
        client = _client(self._client)
        try:
            posted: Deferred[Any] = client.post(self.url, json={"ended": batch})
        except Exception:
            posted = Deferred()
            posted.errback()

        def answered(response: IResponse) -> Deferred[None]:
            read: Deferred[bytes] = client.content(response)  # frees the connection

            def judge(_: bytes) -> None:
                if not 200 <= response.code < 300:
                    raise HookFailed(f"answered {response.code}")

            return read.addCallback(judge)

        def done(_: object) -> None:
            self.sent += len(batch)

        def failed(failure: Failure) -> None:
            self.dropped += len(batch)
            self._warnings.warn(
                "failed",
                f"unsubscribe hook {self.url}: {_describe(failure, self.timeout)}; "
                f"{len(batch)} reports dropped ({self.dropped} in all)",
            )

        def next_batch(_: object) -> None:
            self._sending = False
            self._schedule()

        posted.addCallback(answered)
        posted.addTimeout(self.timeout, default_reactor(self._reactor))
        posted.addCallbacks(done, failed).addBoth(next_batch)
