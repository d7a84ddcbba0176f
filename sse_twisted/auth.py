"""
JWT authorisation of subscribers and publishers, through PyJWT.

A token's claim C{"sse": {"subscribe": [patterns], "publish": [patterns]}}
lists the channels its holder may subscribe and publish to (glob patterns,
C{"*"} for all). C{exp} is required (a number of seconds since the epoch)
and enforced, unless C{allow_no_exp} says that tokens without one are meant
to last for ever. Only channels named private need a token to subscribe;
publishing needs a token (or the static publish token) from anywhere but
loopback. C{sub}, when a string, names the holder (publish rate limits
count per C{sub}).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

import jwt
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.web.server import Request

from .errors import BEARER, HTTPError
from .limits import peer_key

__all__ = ["Grant", "InvalidToken", "JWTAuth", "PublishAuth"]


class InvalidToken(Exception):
    """The token is malformed, badly signed, expired, or otherwise unusable."""


@dataclass(frozen=True, slots=True)
class Grant:
    """What a valid token allows, and until when."""

    subscribe: tuple[str, ...]
    publish: tuple[str, ...]
    expires: float | None
    #: The token's C{sub} claim, when it is a string: who holds it.
    subject: str | None = None

    def may_subscribe(self, channel: str) -> bool:
        """Whether the grant's C{subscribe} patterns allow C{channel}."""
        return any(fnmatchcase(channel, p) for p in self.subscribe)

    def may_publish(self, channel: str) -> bool:
        """Whether the grant's C{publish} patterns allow C{channel}."""
        return any(fnmatchcase(channel, p) for p in self.publish)


def _patterns(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return tuple(value)
    raise InvalidToken("the sse claim's subscribe/publish must be lists of channel patterns")


class JWTAuth:
    """
    Verifies tokens (HS256 with C{secret}, or RS256/ES256 with C{public_key})
    and decides who may subscribe to which channels.

    @param cookie: also take a token from this cookie (EventSource cannot
        set headers; same-site pages can rely on a cookie).
    @param private: glob patterns of channels that need a token to subscribe.
    @param allow_no_exp: accept tokens without C{exp} (they never expire);
        by default such a token is refused, so that no token is valid for
        ever by mistake.
    @param clock: the time C{exp} is checked against (seconds since the
        epoch; the wall clock by default, as the token's issuer uses).
    """

    def __init__(
        self,
        *,
        secret: str | None = None,
        public_key: str | bytes | None = None,
        cookie: str | None = None,
        private: Iterable[str] = (),
        leeway: float = 0,
        allow_no_exp: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if (secret is None) == (public_key is None):
            raise ValueError("give exactly one of secret (HS256) or public_key (RS256/ES256)")
        self._key: Any = secret if secret is not None else public_key
        self.algorithms = ["HS256"] if secret is not None else ["RS256", "ES256"]
        self.cookie = cookie.encode() if cookie else None
        self.private_patterns = tuple(private)
        self.leeway = leeway
        self.allow_no_exp = allow_no_exp
        self._clock = clock
        # Channel names are user input: cache, but boundedly.
        self.is_private = lru_cache(maxsize=4096)(self._is_private)

    def _is_private(self, channel: str) -> bool:
        return any(fnmatchcase(channel, p) for p in self.private_patterns)

    def token_from(self, request: Request, *, query: bool = True) -> str | None:
        """The token from C{Authorization: Bearer}, C{?token=} or the cookie."""
        header: bytes | None = request.getHeader(b"authorization")
        if header:
            scheme, _, value = header.partition(b" ")
            if scheme.lower() == b"bearer" and value.strip():
                return value.strip().decode("ascii", "replace")
        if query and request.args:
            values: list[bytes] | None = request.args.get(b"token")
            if values and values[-1]:
                return values[-1].decode("ascii", "replace")
        if self.cookie is not None:
            cookie: bytes | None = request.getCookie(self.cookie)
            if cookie:
                return cookie.decode("ascii", "replace")
        return None

    def verify(self, token: str) -> Grant:
        """The grant a token carries. @raise InvalidToken: if it is not good."""
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=self.algorithms,
                leeway=self.leeway,
                # exp is checked below, where its type and range are ours to
                # decide: PyJWT takes a string exp, and compares 10**400.
                options={"require": [], "verify_exp": False},
            )
        except jwt.PyJWTError as e:
            raise InvalidToken(str(e)) from None
        except (ValueError, TypeError, OverflowError) as e:
            # Claims PyJWT converts with int() (iat, nbf) and chokes on.
            raise InvalidToken(f"bad claim: {e}") from None
        if not isinstance(claims, dict):
            raise InvalidToken("the claims must be an object")
        sse = claims.get("sse", {})
        if not isinstance(sse, dict):
            raise InvalidToken("the sse claim must be an object")
        sub = claims.get("sub")
        return Grant(
            _patterns(sse.get("subscribe")),
            _patterns(sse.get("publish")),
            self._expiry(claims),
            sub if isinstance(sub, str) else None,
        )

    def _expiry(self, claims: dict[str, Any]) -> float | None:
        """The token's C{exp} as a float, checked: present, a finite number, not past."""
        if "exp" not in claims:
            if self.allow_no_exp:
                return None
            raise InvalidToken("token has no exp (--jwt-allow-no-exp accepts such tokens)")
        exp = claims["exp"]
        if not isinstance(exp, (int, float)) or isinstance(exp, bool):
            raise InvalidToken("exp must be a number (seconds since the epoch)")
        try:
            expires = float(exp)
        except OverflowError:
            raise InvalidToken("exp is out of range") from None
        if not math.isfinite(expires) or expires > _LATEST_EXP:
            raise InvalidToken("exp is out of range")
        if expires + self.leeway <= self._clock():
            raise InvalidToken("Signature has expired")
        return expires


#: The latest C{exp} taken (the year 9999): past it, a timer cannot be set.
_LATEST_EXP = 253402300799.0


class PublishAuth:
    """
    Who may publish: the static C{token} allows everything; a JWT (through
    C{jwt}) allows its C{publish} channels (checked per item by the caller);
    with neither configured nor presented, only loopback peers naming a
    loopback C{Host} may publish (a DNS-rebinding page names its own host).
    """

    def __init__(self, token: str | None = None, jwt: JWTAuth | None = None) -> None:
        self._token = token.encode("utf-8") if token else None
        self.jwt = jwt

    def check(self, request: Request) -> tuple[Grant | None, str]:
        """
        @return: the JWT's grant when one was used, else C{None}; and the
            verified identity that a rate limit counts against: never
            anything the client can vary at will without a valid secret.
        @raise HTTPError: 401 or 403.
        """
        header = request.getHeader(b"authorization") or b""
        scheme, _, given = header.partition(b" ")
        given = given.strip() if scheme.lower() == b"bearer" else b""
        if self._token is not None and given and hmac.compare_digest(given, self._token):
            return None, "token"
        if self.jwt is not None:
            token = self.jwt.token_from(request, query=False)
            if token is not None:
                try:
                    grant = self.jwt.verify(token)
                except InvalidToken as e:
                    raise HTTPError(401, f"invalid token: {e}", BEARER) from None
                if grant.subject is not None:
                    return grant, "sub:" + grant.subject
                digest = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
                return grant, "jwt:" + digest
        if self._token is not None or given:
            raise HTTPError(401, "missing or wrong bearer token", BEARER)
        peer = request.getClientAddress()
        if not is_loopback(peer):
            raise HTTPError(403, "publishing without a token is allowed from loopback only")
        # No browser connects to a UNIX socket, so no rebinding page can be its peer.
        if not isinstance(peer, UNIXAddress) and not is_loopback_host(request.getHeader(b"host")):
            raise HTTPError(
                403,
                "publishing without a token needs a loopback Host "
                "(localhost, 127.0.0.1 or [::1]); set --publish-token to publish by another name",
            )
        return None, "peer:" + peer_key(request)


#: A Host header: a name or IPv4 address, or an IPv6 address in brackets; a port.
_HOST = re.compile(rb"(?:\[(?P<v6>[0-9a-f:.]+)\]|(?P<name>[^\[\]:]+))(?::[0-9]+)?")


@lru_cache(maxsize=256)  # a handful of distinct Host values; ipaddress is slow
def is_loopback_host(host: bytes | None) -> bool:
    """
    Whether a C{Host} header names this machine by a loopback name:
    C{localhost}, C{127.x.x.x} or C{[::1]}, with any port (or no header, as
    from an HTTP/1.0 script: a browser always sends one).

    A page that rebinds its own DNS name to 127.0.0.1 still sends its own
    name here, so this tells such a page from a local program.
    """
    if host is None:
        return True
    match = _HOST.fullmatch(host.strip().lower())
    if match is None:
        return False
    name = match.group("v6") or match.group("name").rstrip(b".")
    if name == b"localhost":
        return True
    try:
        ip = ipaddress.ip_address(name.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


def is_loopback(address: object) -> bool:
    """
    Whether a peer C{address} is this machine: a loopback IP, or a UNIX
    socket (which no remote peer, and no browser, can reach).
    """
    if isinstance(address, UNIXAddress):
        return True
    if isinstance(address, (IPv4Address, IPv6Address)):
        return _loopback_ip(address.host)
    return False


@lru_cache(maxsize=1024)  # peers repeat; ipaddress parsing is ~10 us a call
def _loopback_ip(host: str) -> bool:
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))
