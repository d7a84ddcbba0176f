"""
The values of C{twistd sse}'s options, checked while twistd parses them:
coercers for the numeric options (their C{coerceDoc} is the C{--help} text)
and the checks that turn a value that could never work into a one-line
C{usage.UsageError} rather than a traceback, or a silent refusal, at start.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from twisted.internet.endpoints import serverFromString
from twisted.python import usage

from ._transport import endpoint_port

__all__ = [
    "check_cookie_name",
    "check_endpoint",
    "check_endpoint_in",
    "check_origin",
    "check_token",
    "count",
    "endpoint_description",
    "load_public_key",
    "number",
    "rate",
    "read_secret_file",
    "seconds",
]


def endpoint_description(value: str) -> str:
    """An int means TCP on all interfaces; anything else is an endpoint string."""
    value = value.strip()
    if value.isdigit():
        return f"tcp:{value}"
    return value


class _ReactorNeeded(Exception):
    pass


class _NoReactor:
    """Stands in for the reactor while an endpoint description is parsed."""

    def __getattr__(self, name: str) -> Any:
        raise _ReactorNeeded(name)


def check_endpoint(description: str) -> None:
    """
    Parse C{description} as L{SSEService} will, without a reactor or a bind.

    Twisted's own endpoint parsers only record their reactor, so a stand-in
    does: an unknown type, a bad parameter or a missing TLS key file is then a
    usage error rather than a traceback at start. (A plugin's parser that uses
    the reactor at once is left to fail, if it does, at start.) A TCP port
    outside 0-65535 is only refused by C{bind()}, so it is checked here too.
    """
    try:
        endpoint = serverFromString(_NoReactor(), description)
    except _ReactorNeeded:
        return
    except Exception as e:
        if description.startswith("systemd:") and isinstance(e, IndexError):
            reason = "systemd passed no such socket (LISTEN_FDS)"
        else:
            reason = str(e) or type(e).__name__
        raise usage.UsageError(
            f"--port {description!r} is not a usable endpoint: {reason}"
        ) from None
    # The port of tcp:, tcp6: and ssl: endpoints (if this Twisted does not
    # say, bind() will still say it at start).
    port = endpoint_port(endpoint)
    if port is not None and not 0 <= port <= 65535:
        raise usage.UsageError(f"--port {description!r}: port must be 0-65535, got {port}")


def check_endpoint_in(description: str, twistd: Mapping[str, Any] | None) -> None:
    """
    L{check_endpoint} from the folder twistd will bind in: the endpoint (a
    TLS key file, a UNIX socket) is opened after twistd's C{--rundir} took
    effect. Under C{--chroot} its paths are not ours to see.

    @param twistd: twistd's own options (the subcommand's C{parent}), or
        C{None} when the options are parsed outside twistd.
    """
    if twistd is not None and twistd.get("chroot"):
        return
    rundir = twistd.get("rundir", ".") if twistd is not None else "."
    here = os.getcwd()
    try:
        os.chdir(rundir)
    except OSError:
        return  # twistd says so itself as it starts
    try:
        check_endpoint(description)
    finally:
        os.chdir(here)


def count(name: str, *, least: int = 0) -> Any:
    """An integer option that must be at least C{least} (0 or 1)."""
    what = "a positive integer" if least == 1 else "a non-negative integer"

    def coerce(value: str) -> int:
        try:
            n = int(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be {what}, got {value!r}") from None
        if n < least:
            raise usage.UsageError(f"--{name} must be {what}, got {n}")
        return n

    coerce.coerceDoc = what[0].upper() + what[1:] + "."  # type: ignore[attr-defined]
    return coerce


def number(name: str, unit: str, *, positive: bool = False) -> Any:
    """A finite float option, non-negative (or, with C{positive}, above 0)."""
    doc = f"{unit[0].upper()}{unit[1:]} (a {'positive' if positive else 'non-negative'} number)."

    def coerce(value: str) -> float:
        try:
            n = float(value)
        except ValueError:
            raise usage.UsageError(f"--{name} must be a number of {unit}, got {value!r}") from None
        if not math.isfinite(n):  # NaN, inf
            raise usage.UsageError(f"--{name} must be a finite, non-negative number, got {value}")
        if n < 0:
            raise usage.UsageError(f"--{name} must not be negative, got {value}")
        if positive and n == 0:
            raise usage.UsageError(f"--{name} must be more than 0 {unit}, got {value}")
        return n

    coerce.coerceDoc = doc  # type: ignore[attr-defined]
    return coerce


def seconds(name: str, *, positive: bool = False) -> Any:
    return number(name, "seconds", positive=positive)


def rate(name: str) -> Any:
    return number(name, "requests per second")


def check_origin(origin: str) -> str:
    """
    A --cors-origin as browsers send it in C{Origin}: C{*}, or
    C{scheme://host[:port]} in ASCII (an international name in its punycode
    form), without a path: anything else could never match, so every
    cross-origin client would be refused in silence.
    """
    origin = origin.strip().rstrip("/")
    if origin == "*":
        return origin
    if not origin.isascii():
        hint = ""
        scheme, sep, host = origin.partition("://")
        if sep:
            with contextlib.suppress(UnicodeError):
                hint = f" (in ASCII: {scheme}://{host.encode('idna').decode('ascii')})"
        raise usage.UsageError(
            f"--cors-origin {origin!r} is not ASCII: give the host in its punycode form{hint}"
        )
    if not _ORIGIN.fullmatch(origin):
        raise usage.UsageError(
            f"--cors-origin {origin!r} is not an origin: give '*' or scheme://host[:port], "
            "without a path (as browsers send it in the Origin header)"
        )
    return origin


_ORIGIN = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s/?#@]+|null")
#: A cookie name is an RFC 9110 token.
_COOKIE_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Characters that cannot be sent in a header field or a cookie as given.
_BAD_TOKEN_CHARS = re.compile(r"[\x00-\x20\x7f]")


def check_cookie_name(name: str) -> None:
    """A --jwt-cookie that browsers can send: an RFC 9110 token."""
    if not _COOKIE_NAME.fullmatch(name):
        raise usage.UsageError(
            f"--jwt-cookie {name!r} is not a cookie name "
            "(ASCII letters, digits and !#$%&'*+-.^_`|~)"
        )


def check_token(option: str, token: str) -> None:
    """A secret to compare with what clients send: not empty, printable ASCII, no spaces."""
    if not token:
        raise usage.UsageError(f"{option} must not be empty (leave the option out instead)")
    if not token.isascii() or _BAD_TOKEN_CHARS.search(token):
        raise usage.UsageError(
            f"{option} must be printable ASCII without spaces (clients send it in a header)"
        )


def load_public_key(path: str) -> bytes:
    """
    The PEM bytes of an RSA or EC public key, read and parsed now: a file
    that is not one would otherwise be found out only as every subscriber's
    401, with nothing in the log.
    """
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise usage.UsageError(f"cannot read --jwt-public-key: {e}") from None
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        try:
            serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            private = False
        else:
            private = True
        if private:
            raise usage.UsageError(
                f"--jwt-public-key {path} holds a private key: give its public key "
                "(openssl pkey -in KEY -pubout), and keep the private one off the server"
            ) from None
        raise usage.UsageError(
            f"--jwt-public-key {path} is not a PEM public key (-----BEGIN PUBLIC KEY-----)"
        ) from None
    if not isinstance(key, (rsa.RSAPublicKey, ec.EllipticCurvePublicKey)):
        raise usage.UsageError(
            f"--jwt-public-key {path} is a {type(key).__name__}: RS256 needs an RSA key, "
            "ES256 an EC key"
        )
    return pem


def read_secret_file(option: str, path: str) -> str:
    """
    The secret held in the file C{path}, read now, without one trailing
    newline (C{echo secret > file} writes one; systemd credentials and
    container secrets are files precisely so that a secret stays out of
    C{ps}). A file that cannot be read, is not UTF-8 or holds nothing is a
    usage error at start, never an empty secret that turns a check off.

    @param option: the option that named the file (C{--jwt-secret-file}),
        for the message; the secret itself never goes into a message.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise usage.UsageError(f"cannot read {option} {path}: {e.strerror or e}") from None
    try:
        secret = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise usage.UsageError(f"{option} {path} is not UTF-8 text") from None
    if secret.endswith("\r\n"):
        secret = secret[:-2]
    elif secret.endswith("\n"):
        secret = secret[:-1]
    if not secret:
        raise usage.UsageError(f"{option} {path} is empty")
    return secret
