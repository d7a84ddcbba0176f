"""
The standalone server's Site: the bounded requests of L{sse_twisted.bounded}
(judged on their headers, whole in time), no form parsing, and an access log
that holds no credentials.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote_to_bytes

from twisted.web.http import combinedLogFormatter
from twisted.web.resource import IResource
from twisted.web.server import Request

from .bounded import BoundedSite

__all__ = ["SSESite", "redact_uri"]


def redact_uri(uri: bytes) -> bytes:
    """
    C{uri} with the value of every C{token} query parameter replaced by
    C{REDACTED}: an access log must not hold credentials.

    Names are compared decoded, as twisted.web's query parsing reads them,
    so C{?t%6Fken=...} is redacted too.
    """
    path, sep, query = uri.partition(b"?")
    if not sep:
        return uri
    parts = query.split(b"&")
    for n, part in enumerate(parts):
        name = part.partition(b"=")[0]
        if unquote_to_bytes(name.replace(b"+", b" ")) == b"token":
            parts[n] = b"token=REDACTED"
    return path + b"?" + b"&".join(parts)


class _RedactedRequest:
    """A view of a request for the access log, its URI redacted."""

    def __init__(self, request: Request) -> None:
        self._request = request
        self.uri = redact_uri(request.uri)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)


def _redacting_formatter(timestamp: str, request: Request) -> str:
    line: str = combinedLogFormatter(timestamp, _RedactedRequest(request))
    return line


class SSESite(BoundedSite):
    """
    A Site for the standalone server: C{header_timeout} seconds for a client
    to send a whole request, headers and body (0: no limit); bodies judged
    on their headers (L{BoundedSite.admit}); HTTP/2 negotiation as usual.

    It never parses form bodies (the API is JSON; twisted.web would parse each
    POST's Content-Type with the C{email} package, a sixth of a publish's
    cost), and it writes an access-log line per request only with
    C{access_log}, with C{?token=} values redacted.
    """

    #: No "Starting factory <SSESite object at 0x...>" at start and stop: the
    #: service logs one line of its own, with what it serves.
    noisy = False

    def __init__(
        self,
        resource: IResource,
        *,
        header_timeout: float = 10.0,
        access_log: bool = False,
        **kw: Any,
    ) -> None:
        kw.setdefault("logFormatter", _redacting_formatter)
        super().__init__(
            resource, header_timeout=header_timeout, parsePOSTFormSubmission=False, **kw
        )
        self.access_log = access_log

    def log(self, request: Any) -> None:
        if self.access_log:
            super().log(request)
