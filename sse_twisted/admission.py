"""
Running a broker's subscribe hook (L{sse_twisted.hooks}) in front of
L{SSEBroker.subscribe}: the stream resource calls L{admit} instead of
C{subscribe} when the broker has an C{on_subscribe}.

The hook lives on the broker (C{SSEBroker(on_subscribe=...)}), next to
C{on_unsubscribe}, so that one object says who may hold its streams and
hears of every end; it is run here, where the request's channels and
patterns are known, after the checks every stream passes (method, query,
CORS, JWT, limits), so a hook only sees requests the server would take.

The render becomes asynchronous: the hook may answer later (an HTTP
backend). By then the client may have gone (then nothing is subscribed) or
the broker may be draining (then the client is sent away to retry, as
C{subscribe} does).
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from fnmatch import fnmatchcase
from typing import Literal

from twisted.internet.defer import maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import NOT_DONE_YET, Request

from . import _transport
from .broker import SSEBroker
from .errors import BEARER, HTTPError, error_response
from .event import validate_channel
from .hooks import Admission, HookFailed, RateLimitedLog, Refused

__all__ = ["admit"]

#: The admission's log (hook failures, rate-limited through L{warnings}).
log = Logger()

#: Hook failures come in storms (a backend down, every client retrying).
warnings = RateLimitedLog(log)


def admit(
    broker: SSEBroker,
    request: Request,
    channels: Iterable[str] | None = None,
    last_event_id: str | None = None,
    *,
    patterns: Iterable[str] | None = None,
    readable: Container[str] | None = None,
    expires: float | None = None,
    replay: int | Literal["all"] = 0,
    user: str | None = None,
    envelope: bool = False,
) -> int:
    """
    Ask C{broker.on_subscribe} what to grant C{request}, then subscribe it
    to that (L{SSEBroker.subscribe}'s arguments otherwise), refuse it (401
    or 403, L{Refused}), or send it away to retry (the hook failed).

    @return: C{NOT_DONE_YET}: the answer is written when the hook answers.
    """
    hook = broker.on_subscribe
    assert hook is not None
    asked = tuple(channels or ())
    asked_patterns = tuple(patterns or ())

    def granted(admission: object) -> None:
        if _transport.request_gone(request):
            return  # the client left while the hook thought
        if not isinstance(admission, Admission):
            raise HookFailed(f"on_subscribe returned {admission!r}, not an Admission")
        chans, pats = _granted(admission, asked, asked_patterns, readable)
        if (
            not chans
            and not pats
            and (asked or asked_patterns or admission.channels is not None or admission.patterns)
        ):
            raise Refused(403, "none of the channels asked for may be subscribed to")
        broker.subscribe(
            request,
            chans,
            last_event_id,
            readable=readable,
            expires=expires,
            replay=replay,
            user=admission.user if admission.user is not None else user,
            patterns=pats,
            envelope=envelope,
        )

    def failed(failure: Failure) -> None:
        if _transport.request_gone(request):
            return
        error = failure.value
        if isinstance(error, Refused):
            headers = BEARER if error.status == 401 else None
            body = error_response(request, HTTPError(error.status, error.message, headers))
            request.write(body)
            request.finish()
            return
        if isinstance(error, HookFailed):
            warnings.warn("failed", f"subscribe hook: {error}; client sent away to retry")
        else:
            if warnings.warn("raised", "on_subscribe hook failed; client sent away to retry"):
                log.failure("on_subscribe hook failed", failure)
        broker.turn_away(request, "cannot authorise now, reconnect later")

    answer = maybeDeferred(hook, request, asked, asked_patterns)
    answer.addCallback(granted).addErrback(failed)
    answer.addErrback(lambda f: log.failure("answering a subscribe hook's decision", f))
    return NOT_DONE_YET


def _granted(
    admission: Admission,
    asked: tuple[str, ...],
    asked_patterns: tuple[str, ...],
    readable: Container[str] | None,
) -> tuple[list[str], list[str]]:
    """
    What of the admission is kept: never more than was asked (a hook narrows,
    it does not widen, so the JWT checks made on what was asked still hold),
    except that a request for every channel may be narrowed to any channels
    the token may read (C{readable}).
    """
    everything = not asked and not asked_patterns
    if admission.channels is None:
        chans = list(asked)
    else:
        given = _strings(admission.channels, "channels")
        for channel in given:
            try:
                validate_channel(channel)
            except ValueError as e:
                raise HookFailed(f"on_subscribe granted a bad channel: {e}") from None
        if everything:
            chans = [c for c in given if readable is None or c in readable]
        else:
            wanted = set(asked)
            chans = [
                c for c in given if c in wanted or any(fnmatchcase(c, p) for p in asked_patterns)
            ]
    if admission.patterns is None:
        pats = list(asked_patterns)
    else:
        given = _strings(admission.patterns, "patterns")
        pats = given if everything else [p for p in given if p in asked_patterns]
    return list(dict.fromkeys(chans)), list(dict.fromkeys(pats))


def _strings(values: object, what: str) -> list[str]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise HookFailed(f"on_subscribe's {what} must be a list of strings, got {values!r}")
    out = list(values)
    if not all(isinstance(v, str) for v in out):
        raise HookFailed(f"on_subscribe's {what} must be a list of strings, got {out!r}")
    return out
