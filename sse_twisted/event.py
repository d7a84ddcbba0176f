"""
One published event: its validation and its WHATWG event-stream framing.

Nothing here knows Twisted. An L{Event} is framed exactly once, when it is
created; the broker then writes the same C{bytes} object to every matching
subscriber, so fan-out never re-encodes anything.

Wire format (U{https://html.spec.whatwg.org/multipage/server-sent-events.html}):
fields in the order C{id}, C{event}, C{retry}, then one C{data:} line per line
of the payload, then a blank line. A payload's CR, LF and CRLF line breaks all
become separate C{data:} lines, which a spec-following parser joins with LF.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_CHANNEL_LENGTH", "MAX_ID_LENGTH", "MAX_RETRY", "Event", "validate_channel"]

#: Longest channel name accepted.
MAX_CHANNEL_LENGTH = 200
#: Longest reconnection delay a publisher may ask for (a day, in ms).
MAX_RETRY = 86_400_000
#: Longest event id, in UTF-8 bytes: also the longest C{Last-Event-ID} the
#: server looks up. One limit for both sides, so no id it sends out can come
#: back as a header it refuses (EventSource would then give up for good).
MAX_ID_LENGTH = 1024

# CR, LF and NUL would let a value end its field line early and inject fields
# into every subscriber's stream; they are refused in names and ids.
_BREAKS = re.compile(r"[\r\n\x00]")
# Channels are identifiers in URLs and logs: no control characters at all.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Payload line breaks as the parser recognises them: CRLF, lone CR, lone LF.
_LINES = re.compile(r"\r\n|\r|\n")

_encoder = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), allow_nan=False, check_circular=True
)


def validate_channel(channel: object) -> str:
    """
    Return C{channel} if it is an acceptable channel name.

    @raise TypeError: if it is not a C{str}.
    @raise ValueError: if it is empty, longer than L{MAX_CHANNEL_LENGTH}
        characters, or holds a control character.
    """
    if not isinstance(channel, str):
        raise TypeError(f"channel must be a str, not {type(channel).__name__}")
    if not 1 <= len(channel) <= MAX_CHANNEL_LENGTH:
        raise ValueError(
            f"channel must be 1 to {MAX_CHANNEL_LENGTH} characters long, got {len(channel)}"
        )
    if _CONTROL.search(channel):
        raise ValueError(f"channel must not contain control characters: {channel!r}")
    _check_utf8("channel", channel)
    return channel


def _check_utf8(name: str, value: str) -> None:
    """Refuse lone surrogates: they cannot be sent as UTF-8 (nor subscribed to)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid Unicode (a lone surrogate): {value!r}") from None


def _validate_field(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, not {type(value).__name__}")
    if _BREAKS.search(value):
        raise ValueError(f"{name} must not contain CR, LF or NUL: {value!r}")
    _check_utf8(name, value)
    return value


def encode_json(data: Any) -> str:
    """
    Encode C{data} as compact JSON, keeping non-ASCII characters as they are.

    @raise TypeError: if JSON cannot encode C{data}.
    @raise ValueError: for NaN or infinities (not JSON; C{JSON.parse} refuses
        them) and for circular structures.
    """
    try:
        return _encoder.encode(data)
    except RecursionError:
        raise ValueError("data is nested too deeply to encode") from None


def frame(
    data: str,
    *,
    id: str | None = None,
    event: str | None = None,
    retry: int | None = None,
) -> bytes:
    """
    Frame already-validated fields as one event-stream block.

    A payload line breaks on CR, LF and CRLF alike, so text arrives intact
    (joined by LF) whatever line ends its publisher used.
    """
    parts: list[str] = []
    if id is not None:
        parts.append(f"id: {id}\n")
    if event is not None:
        parts.append(f"event: {event}\n")
    if retry is not None:
        parts.append(f"retry: {retry}\n")
    for line in _LINES.split(data):
        parts.append(f"data: {line}\n")
    parts.append("\n")
    return "".join(parts).encode("utf-8")


@dataclass(frozen=True, slots=True)
class Event:
    """
    An immutable, validated event and its wire bytes.

    Build one with L{Event.create}; C{frame} holds the exact bytes that every
    subscriber receives. The frame is all an event holds: its C{data} is read
    back from it when asked for (rarely: fan-out and replay only write the
    frame), so a history of large events costs their size once, not twice.
    """

    channel: str
    event: str | None
    id: str | None
    retry: int | None
    frame: bytes = field(repr=False)

    @property
    def data(self) -> str:
        """The payload as a spec parser reads it: its lines joined with LF."""
        lines = self.frame.decode("utf-8").split("\n")
        return "\n".join(line[6:] for line in lines if line.startswith("data: "))

    @classmethod
    def create(
        cls,
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        json_data: bool = True,
    ) -> Event:
        """
        Validate the fields, encode the payload once, and frame it.

        @param data: any JSON-encodable value, encoded compactly; ignored when
            C{text} is given.
        @param text: a str sent verbatim instead of JSON (plain text, HTML
            fragments for htmx).
        @param id: the event's id; L{None} leaves the block without an id.
        @param retry: the reconnection delay in milliseconds for EventSource.
        @param json_data: internal; L{False} means C{data} is already the
            encoded payload string.

        @raise TypeError: for a wrongly typed field or data JSON cannot encode.
        @raise ValueError: for a bad channel, CR/LF/NUL in C{event} or C{id},
            or a negative C{retry}.
        """
        event, payload = cls.check(
            channel, event, data, text=text, id=id, retry=retry, json_data=json_data
        )
        return cls(channel, event, id, retry, frame(payload, id=id, event=event, retry=retry))

    @staticmethod
    def check(
        channel: str,
        event: str | None = None,
        data: Any = None,
        *,
        text: str | None = None,
        id: str | None = None,
        retry: int | None = None,
        json_data: bool = True,
    ) -> tuple[str | None, str]:
        """
        Everything L{create} checks and encodes, without framing: for callers
        that frame later (once an id is known, in another thread).

        @return: the event name (empty becomes L{None}) and the encoded payload.
        @raise TypeError: as L{create}.
        @raise ValueError: as L{create}.
        """
        validate_channel(channel)
        if event is not None:
            _validate_field("event name", event)
            if not event:
                # "event:" with an empty value means "message" to a parser;
                # say it by leaving the line out instead.
                event = None
        if id is not None:
            _validate_field("id", id)
            if not id:
                # An empty id field resets the client's last event id.
                raise ValueError("id must not be empty")
            if len(id) > MAX_ID_LENGTH // 4 and len(id.encode("utf-8")) > MAX_ID_LENGTH:
                raise ValueError(
                    f"id longer than {MAX_ID_LENGTH} bytes"
                    " (the longest Last-Event-ID a client may send back)"
                )
        if retry is not None:
            if not isinstance(retry, int) or isinstance(retry, bool):
                raise TypeError(f"retry must be an int, not {type(retry).__name__}")
            if not 0 <= retry <= MAX_RETRY:
                raise ValueError(f"retry must be 0 to {MAX_RETRY} ms (a day), got {retry}")
        if text is not None:
            if not isinstance(text, str):
                raise TypeError(f"text must be a str, not {type(text).__name__}")
            _check_utf8("text", text)
            payload = text
        elif json_data:
            payload = encode_json(data)
        else:
            if not isinstance(data, str):
                raise TypeError("pre-encoded data must be a str")
            payload = data
        return event, payload
