"""Cross-origin access for browsers on other origins (CORS)."""

from __future__ import annotations

from collections.abc import Iterable

from twisted.web.server import Request

__all__ = ["CORSPolicy"]


class CORSPolicy:
    """
    Which origins may read the stream and publish, and how.

    Listed origins get their own origin echoed back with credentials allowed
    (so C{new EventSource(url, {withCredentials: true})} can send cookies);
    C{"*"} lets any origin in, without credentials, as the CORS rules
    require. With no origins configured, no CORS header is ever sent.
    """

    def __init__(self, origins: Iterable[str]) -> None:
        origins = [o.strip().rstrip("/") for o in origins if o.strip()]
        self.any = "*" in origins
        self.origins = frozenset(o.encode("ascii") for o in origins if o != "*")

    def __bool__(self) -> bool:
        return self.any or bool(self.origins)

    def listed_only(self) -> CORSPolicy:
        """
        The same policy without C{"*"}: only the origins listed by name.

        What publishing gets when it needs no token: with C{"*"}, any page
        open in a browser on the server's own host could publish as loopback.
        """
        policy = CORSPolicy(())
        policy.origins = self.origins
        return policy

    def apply(self, request: Request) -> bool:
        """Add the response headers for C{request}'s Origin; say whether it is allowed."""
        origin = request.getHeader(b"origin")
        if origin is None:
            return False
        headers = request.responseHeaders
        headers.addRawHeader(b"vary", b"Origin")
        if origin in self.origins:
            headers.setRawHeaders(b"access-control-allow-origin", [origin])
            headers.setRawHeaders(b"access-control-allow-credentials", [b"true"])
            return True
        if self.any:
            headers.setRawHeaders(b"access-control-allow-origin", [b"*"])
            return True
        return False

    def preflight(self, request: Request, methods: bytes) -> bool:
        """Answer an OPTIONS preflight's headers; say whether the origin is allowed."""
        if not self.apply(request):
            return False
        headers = request.responseHeaders
        headers.setRawHeaders(b"access-control-allow-methods", [methods])
        asked = request.getHeader(b"access-control-request-headers")
        headers.setRawHeaders(
            b"access-control-allow-headers",
            [asked or b"Content-Type, Authorization, Last-Event-ID"],
        )
        headers.setRawHeaders(b"access-control-max-age", [b"600"])
        return True
