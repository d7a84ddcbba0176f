"""URL path normalisation, as the original broker's normaliseSSEPath/resolveSSEPath."""

from __future__ import annotations

__all__ = ["DEFAULT_SSE_PATH", "normalise_path"]

#: Where the stream is served unless told otherwise.
DEFAULT_SSE_PATH = "/events"


def normalise_path(path: str | None, default: str = DEFAULT_SSE_PATH) -> str:
    """
    Surrounding spaces trimmed, exactly one leading slash, no trailing slash;
    an empty path or C{"/"} means C{default}.

    >>> normalise_path("  events/live/ ")
    '/events/live'
    """
    if path is None:
        return default
    path = path.strip().strip("/")
    if not path:
        return default
    return "/" + path
