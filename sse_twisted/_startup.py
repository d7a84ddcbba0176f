"""
What C{twistd sse} says about itself as it starts: the options that differ
from their defaults, each secret redacted, in one line that can be pasted
back into a command line.

A log line is read by whoever reads the logs, and kept: a secret (a JWT
secret, the publish token, a password in a Redis URL) is never written, only
that it was given.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterable

from twisted.python import usage

__all__ = ["REDACTED", "SECRET_OPTIONS", "non_default_options", "options_line", "redact_url"]

#: What a secret is written as (as the access log writes a C{?token=}).
REDACTED = "REDACTED"

#: Options whose value is a secret: logged as L{REDACTED}, whatever it is.
SECRET_OPTIONS = frozenset({"jwt-secret", "publish-token"})

#: The user information of a URL (C{scheme://user:password@}).
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<userinfo>[^/?#@\s]*)@")


def redact_url(value: str) -> str:
    """
    C{value} with the password of every URL in it redacted: the user name is
    kept when one is given before a C{:}; a user information without a
    C{:} is redacted whole, since some write the password there
    (C{redis://secret@host}).
    """

    def hide(match: re.Match[str]) -> str:
        user, colon, _ = match["userinfo"].partition(":")
        return f"{match['scheme']}{user + ':' if colon else ''}{REDACTED}@"

    return _USERINFO.sub(hide, value)


def non_default_options(
    options: usage.Options, secrets: Iterable[str] = SECRET_OPTIONS
) -> list[str]:
    """
    The options that differ from their defaults, as command-line words
    (C{--history=50}, C{--no-demo}, a repeatable option once per value), in
    the order they are declared; a secret's value is L{REDACTED}, and every
    URL's password is.

    Read from the options themselves (their declared defaults, and the
    list-valued ones their C{opt_} methods fill), so an option added later
    is logged without being listed here: only a new I{secret} needs naming,
    in C{secrets}.
    """
    secret = frozenset(secrets)
    flags = {name for name in options.longOpt if not name.endswith("=")}
    words: list[str] = []
    for name, value in options.items():
        if name in options.defaults:
            if value == options.defaults[name]:
                continue
        elif not isinstance(value, list) or not value:
            continue  # derived from another option (a key read from its file, ...)
        if name in flags:
            words.append(f"--{name}")
            continue
        for one in value if isinstance(value, list) else [value]:
            shown = REDACTED if name in secret else redact_url(str(one))
            words.append(f"--{name}={shlex.quote(shown)}")
    return words


def options_line(options: usage.Options) -> str:
    """The non-default options as one line for the startup log."""
    words = non_default_options(options)
    return f"options: {' '.join(words)}" if words else "options: all defaults"
