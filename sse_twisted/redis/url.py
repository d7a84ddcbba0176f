"""Where Redis is and how to log in: C{redis://} URLs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

__all__ = ["RedisAddress", "parse_redis_url"]


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is and how to log in, from a C{redis://} URL."""

    host: str
    port: int
    db: int
    username: str | None
    password: str | None
    tls: bool

    def __str__(self) -> str:
        # Never the password: this goes into logs.
        scheme = "rediss" if self.tls else "redis"
        return f"{scheme}://{self.host}:{self.port}/{self.db}"


def _redacted(url: str) -> str:
    """C{url} without its password, for messages (a URL in argv, a variable or a file)."""
    return re.sub(r"(//[^/@]*?:)[^/@]*@", r"\1***@", url)


def parse_redis_url(url: str) -> RedisAddress:
    """
    Parse C{redis://[[user]:password@]host[:port][/db]} (C{rediss://} for TLS).

    @raise ValueError: for another scheme, a bad port or a bad database number.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(
            f"Redis URL must look like redis://[:password@]host:port/db (or rediss:// for TLS),"
            f" got {_redacted(url)!r}"
        )
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"Redis URL has a bad port: {_redacted(url)!r}") from None
    path = parts.path.strip("/")
    if path and not path.isdigit():
        raise ValueError(f"Redis URL path must be a database number like /0, got {parts.path!r}")
    return RedisAddress(
        host=parts.hostname or "localhost",
        port=port,
        db=int(path) if path else 0,
        username=unquote(parts.username) if parts.username else None,
        password=unquote(parts.password) if parts.password is not None else None,
        tls=parts.scheme == "rediss",
    )
