"""
C{--config FILE}: a TOML file whose keys are C{twistd sse}'s long option
names, read as if its values had been given on the command line (the command
line overrides them; see L{sse_twisted.tap.Options}).

Each key has a kind, taken from its option: a flag is a boolean, a numeric
option a number, a repeatable option an array of strings. A key that is no
option, or a value of the wrong kind, is a one-line usage error that names
the key: a typo in a config file must not be a setting silently left out.
The values then go through the very coercers and checks the command line
uses, so a config file can express nothing the command line would refuse.
"""

from __future__ import annotations

import datetime
import difflib
import sys
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from twisted.python import usage

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib; tomli is the same parser
    import tomli as tomllib

__all__ = ["Kind", "config_arguments", "read_config"]

#: What a key's value must be: C{flag} a boolean; C{integer} an integer;
#: C{number} an integer or a float; C{string} a string; C{port} a string or
#: an integer (C{port = 8080}); C{strings} an array of strings (a repeatable
#: option).
Kind = Literal["flag", "integer", "number", "string", "port", "strings"]

_EXPECTED: dict[Kind, str] = {
    "flag": "a boolean (true or false)",
    "integer": "an integer",
    "number": "a number",
    "string": "a string",
    "port": "a string or a port number",
    "strings": "an array of strings",
}


def read_config(path: str) -> dict[str, Any]:
    """The table in the TOML file C{path}, or a one-line usage error."""
    try:
        with open(path, "rb") as f:
            table: dict[str, Any] = tomllib.load(f)
            return table
    except OSError as e:
        raise usage.UsageError(f"cannot read --config {path}: {e.strerror or e}") from None
    except UnicodeDecodeError:
        raise usage.UsageError(f"--config {path} is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise usage.UsageError(f"--config {path} is not valid TOML: {e}") from None


def _what(value: object) -> str:
    """The TOML name of C{value}'s type, for messages (never the value: it may be a secret)."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (datetime.date, datetime.time)):
        return "a date or time"
    return type(value).__name__


def _unknown(key: str, where: str, kinds: Iterable[str], elsewhere: Mapping[str, str]) -> str:
    if key in elsewhere:
        return f"{where}: {key!r} {elsewhere[key]}"
    close = difflib.get_close_matches(key.replace("_", "-"), list(kinds), n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{where}: unknown key {key!r}{hint}"


def config_arguments(
    table: Mapping[str, Any],
    kinds: Mapping[str, Kind],
    where: str,
    elsewhere: Mapping[str, str] | None = None,
) -> dict[str, list[str | None]]:
    """
    Each key of C{table} as the command line would give it: the list of its
    arguments (strings; C{None} for a flag that is set; an empty list for a
    flag set to C{false} and an empty array).

    @param kinds: the option names a config file may set, and their kinds.
    @param where: the file, named at the start of every message.
    @param elsewhere: keys that are options, but not of this file, and what
        to say about them (C{"is twistd's own option: ..."}).
    @raise usage.UsageError: for a key that is no option, or a value of the
        wrong kind.
    """
    arguments: dict[str, list[str | None]] = {}
    for key, value in table.items():
        kind = kinds.get(key)
        if kind is None:
            raise usage.UsageError(_unknown(key, where, kinds, elsewhere or {}))
        wrong = usage.UsageError(f"{where}: {key} must be {_EXPECTED[kind]}, not {_what(value)}")
        if kind == "flag":
            if not isinstance(value, bool):
                raise wrong
            arguments[key] = [None] if value else []
        elif kind == "strings":
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise wrong
            arguments[key] = list(value)
        elif isinstance(value, bool):  # an int to Python, never a number to a reader
            raise wrong
        elif (
            (kind == "integer" and isinstance(value, int))
            or (kind == "number" and isinstance(value, (int, float)))
            or (kind == "string" and isinstance(value, str))
            or (kind == "port" and isinstance(value, (str, int)))
        ):
            arguments[key] = [str(value)]
        else:
            raise wrong
    return arguments
