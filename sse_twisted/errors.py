"""
The HTTP error model shared by every resource: a refusal is the right 4xx/5xx
with a JSON body C{{"error": "..."}}, encodable whatever the input was.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.server import Request

from ._transport import request_gone

__all__ = [
    "BEARER",
    "HTTPError",
    "encode_json_body",
    "error_response",
    "finish_json",
    "json_response",
    "method_not_allowed",
    "safe_message",
]

#: The challenge sent with a 401.
BEARER = {b"www-authenticate": b'Bearer realm="sse"'}


class HTTPError(Exception):
    """A refusal: its status, message and extra headers."""

    def __init__(self, status: int, message: str, headers: dict[bytes, bytes] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def json_response(request: Request, status: int, body: Any) -> bytes:
    """Set C{status} and JSON headers on C{request}; return the encoded body."""
    request.setResponseCode(status)
    request.responseHeaders.setRawHeaders(b"content-type", [b"application/json"])
    request.responseHeaders.setRawHeaders(b"cache-control", [b"no-store"])
    return encode_json_body(body)


def finish_json(request: Request, status: int, body: Any) -> bool:
    """
    Answer C{request} with C{status} and a JSON C{body} after C{render}
    returned C{NOT_DONE_YET}: one write with a C{Content-Length}, as
    twisted.web sends a body returned from render.

    @return: whether it was answered (not when the client has gone).
    """
    if request_gone(request):
        return False
    data = json_response(request, status, body)
    request.setHeader(b"content-length", b"%d" % len(data))
    request.write(data)
    request.finish()
    return True


def encode_json_body(body: Any) -> bytes:
    """
    C{body} as compact UTF-8 JSON, whatever strings it holds.

    A lone surrogate (from a C{"\\ud800"} escape in a request) cannot be
    encoded as UTF-8: such a body falls back to ASCII-only JSON, whose
    C{\\uXXXX} escapes carry any string.
    """
    text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(body, separators=(",", ":")).encode("ascii")


def safe_message(message: str) -> str:
    """
    C{message} with anything UTF-8 cannot carry (lone surrogates echoed from
    the input) written as a backslash escape, so an error can always be sent.
    """
    return message.encode("utf-8", "backslashreplace").decode("utf-8")


def error_response(request: Request, error: HTTPError) -> bytes:
    """Answer C{request} with C{error}; return the body for C{render}."""
    for name, value in error.headers.items():
        request.responseHeaders.setRawHeaders(name, [value])
    return json_response(request, error.status, {"error": safe_message(error.message)})


def method_not_allowed(allow: bytes) -> HTTPError:
    """405, naming the methods allowed."""
    return HTTPError(405, f"method not allowed; use {allow.decode()}", {b"allow": allow})
