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

import functools
import inspect
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Concatenate, ParamSpec, TypeVar

__all__ = [
    "DROPPED_EVENT",
    "ITEM_FIELDS",
    "MAX_CHANNEL_LENGTH",
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_RETRY",
    "RESET_EVENT",
    "Event",
    "InvalidItem",
    "Item",
    "dropped_notice",
    "envelope_frame",
    "reset_notice",
    "validate_channel",
]

#: Longest channel name accepted.
MAX_CHANNEL_LENGTH = 200
#: Longest reconnection delay a publisher may ask for (a day, in ms).
MAX_RETRY = 86_400_000
#: Longest event id, in UTF-8 bytes: also the longest C{Last-Event-ID} the
#: server looks up. One limit for both sides, so no id it sends out can come
#: back as a header it refuses (EventSource would then give up for good).
MAX_ID_LENGTH = 1024

#: Longest idempotency key (visible ASCII, no spaces: it may come as a header).
MAX_IDEMPOTENCY_KEY_LENGTH = 255
_IDEMPOTENCY_KEY = re.compile(f"[!-~]{{1,{MAX_IDEMPOTENCY_KEY_LENGTH}}}")

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


#: Name of the event that tells a client how many events it missed.
DROPPED_EVENT = "sse.dropped"
#: Name of the event that tells a client that events may have been lost.
RESET_EVENT = "sse.reset"


def dropped_notice(count: int, envelope: bool = False) -> bytes:
    """
    The block that tells a client it missed C{count} events.

    A named event (not a comment) so that EventSource code can listen for it;
    it carries no id, so the client's last event id is left as it was. With
    C{envelope}, an envelope (L{envelope_frame}) with C{"channel": null}.
    """
    return _notice(DROPPED_EVENT, f'{{"dropped":{count}}}', envelope)


def reset_notice(last_id: str, reason: str = "unknown-id", envelope: bool = False) -> bytes:
    """
    The block that tells a client that events after C{last_id} may be lost:
    its id is not in the history (evicted, expired, or from an earlier run),
    or the relay lost events. What follows is live. No id, so the client's
    last event id stays as it was. With C{envelope}, an envelope
    (L{envelope_frame}) with C{"channel": null}.
    """
    data = encode_json({"lastEventId": last_id, "reason": reason})
    return _notice(RESET_EVENT, data, envelope)


def _notice(name: str, data: str, envelope: bool) -> bytes:
    if envelope:
        return envelope_frame(None, name, None, None, data, False)
    return frame(data, event=name)


def envelope_frame(
    channel: str | None,
    event: str | None,
    id: str | None,
    retry: int | None,
    payload: str,
    text: bool | None,
) -> bytes:
    """
    An event as an envelope: a plain C{message} event (no C{event:} line, so
    EventSource's C{onmessage} sees every one, whatever its name) whose data
    is C{{"channel": ..., "event": ..., "id": ..., "data": ...}}, or
    C{"text": "..."} in place of C{"data"} for a text event. The C{id:} and
    C{retry:} lines stay, so resuming and the reconnection delay work as
    without the envelope.

    The payload is spliced in as it was encoded, not decoded and encoded
    again. C{text} says what it is: C{None} (an event read back from storage
    that does not keep it: SQLite, Redis entries from older writers) means
    JSON if it parses as JSON, text otherwise.
    """
    if text is None:
        try:
            json.loads(payload)
        except ValueError:
            text = True
        else:
            text = False
    body = encode_json(payload) if text else payload
    head = (
        f'{{"channel":{encode_json(channel)},"event":{encode_json(event)},'
        f'"id":{encode_json(id)},"{"text" if text else "data"}":'
    )
    return frame(head + body + "}", id=id, retry=retry)


class InvalidItem(ValueError):
    """
    A publish item that cannot be published: what is wrong, and (in a batch)
    which item it is.
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        #: The item's position in its batch, or C{None} for a single item.
        self.index = index


#: The keys of a publish mapping (L{Item.from_mapping}).
ITEM_FIELDS = frozenset({"channel", "event", "data", "text", "id", "retry", "idempotency_key"})


@dataclass(frozen=True, slots=True)
class Item:
    """
    What a publisher asks for, validated and encoded once: an event but for
    its id (unless the publisher chose one) and its frame.

    Building one is the only validation an event goes through, and it
    touches no Twisted, so it may run in any thread. It is framed once, by
    L{framed}, when its id is known: at once by the broker, or by a relay
    once the relay has stored it and chosen the id.
    """

    channel: str
    event: str | None
    payload: str
    retry: int | None = None
    id: str | None = None
    #: Publish this at most once per key (see L{sse_twisted.idempotency}).
    idempotency_key: str | None = None
    #: Whether C{payload} is text (C{True}) or JSON (C{False}); C{None}: not
    #: known (read back from storage). Only envelopes tell them apart.
    text: bool | None = field(default=None, compare=False)

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
        idempotency_key: str | None = None,
    ) -> Item:
        """
        Validate the fields and encode the payload.

        @param data: any JSON-encodable value, encoded compactly; ignored when
            C{text} is given.
        @param text: a str sent verbatim instead of JSON (plain text, HTML
            fragments for htmx, or a payload encoded before).
        @param id: the event's id; C{None} lets the broker (or relay) choose.
        @param retry: the reconnection delay in milliseconds for EventSource.
        @param idempotency_key: a repeat of this key within the broker's
            idempotency window is not published again (1 to
            L{MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII characters).

        @raise TypeError: for a wrongly typed field or data JSON cannot encode.
        @raise ValueError: for a bad channel, CR/LF/NUL in C{event} or C{id},
            an id over L{MAX_ID_LENGTH} bytes, or C{retry} out of range.
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
        else:
            payload = encode_json(data)
            if not payload.isascii():
                _check_utf8("data", payload)  # a lone surrogate in a str or a key
        if idempotency_key is not None and not (
            isinstance(idempotency_key, str) and _IDEMPOTENCY_KEY.fullmatch(idempotency_key)
        ):
            raise ValueError(
                f"idempotency key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} visible ASCII"
                f" characters (no spaces), got {ascii(idempotency_key)[:80]}"
            )
        return cls(channel, event, payload, retry, id, idempotency_key, text is not None)

    @classmethod
    def from_mapping(cls, item: Mapping[str, Any], index: int | None = None) -> Item:
        """
        L{create} from a mapping with its argument names (a publish request's
        JSON object): exactly one of C{data} and C{text}, no other keys, and
        the types JSON gives.

        @raise InvalidItem: for anything wrong, C{index} naming the item.
        """
        try:
            if not isinstance(item, Mapping):
                raise ValueError("must be a JSON object")
            unknown = set(item) - ITEM_FIELDS
            if unknown:
                # ascii(): the names are the publisher's, and may hold lone surrogates.
                names = ", ".join(ascii(name) for name in sorted(map(str, unknown)))
                raise ValueError(f"unknown field(s): {names}")
            if "channel" not in item:
                raise ValueError("missing field: channel")
            if ("data" in item) == ("text" in item):
                raise ValueError("give exactly one of 'data' (any JSON) or 'text' (a string)")
            for name in ("channel", "text", "id", "idempotency_key"):
                if name in item and not isinstance(item[name], str):
                    raise ValueError(f"{name} must be a string")
            if item.get("event") is not None and not isinstance(item["event"], str):
                raise ValueError("event must be a string")
            retry = item.get("retry")
            if retry is not None and (
                not isinstance(retry, int) or isinstance(retry, bool) or retry < 0
            ):
                raise ValueError("retry must be a non-negative integer (ms)")
            return cls.create(
                item["channel"],
                item.get("event"),
                item.get("data"),
                text=item.get("text"),
                id=item.get("id"),
                retry=retry,
                idempotency_key=item.get("idempotency_key"),
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, InvalidItem):
                raise
            raise InvalidItem(str(e), index) from None

    def framed(self, id: str | None = None) -> Event:
        """
        The event, framed once with C{id} (the item's own id when it has
        one; C{None} leaves the block without an id).
        """
        if self.id is not None:
            id = self.id
        event, retry = self.event, self.retry
        return Event(
            self.channel,
            event,
            id,
            retry,
            frame(self.payload, id=id, event=event, retry=retry),
            self.text,
        )


_P = ParamSpec("_P")
_R = TypeVar("_R")
_S = TypeVar("_S")


def _with_args_of(
    make: Callable[_P, Item],
) -> Callable[[Callable[[_S, Item], _R]], Callable[Concatenate[_S, _P], _R]]:
    def wrap(method: Callable[[_S, Item], _R]) -> Callable[Concatenate[_S, _P], _R]:
        @functools.wraps(method)
        def call(owner: _S, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
            return method(owner, make(*args, **kwargs))

        own = inspect.signature(method)
        first = next(iter(own.parameters.values()))
        made = inspect.signature(make)
        call.__signature__ = made.replace(  # type: ignore[attr-defined]
            parameters=[first, *made.parameters.values()],
            return_annotation=own.return_annotation,
        )
        return call

    return wrap


#: Gives a method taking an L{Item} the arguments of L{Item.create} instead
#: (channel, event, data, text, id, retry): the publish signature is spelled
#: once, here, for L{Event.create} and the broker's publish methods.
takes_item_args = _with_args_of(Item.create)


@dataclass(frozen=True, slots=True)
class Event:
    """
    An immutable, validated event and its wire bytes.

    Made by L{Item.framed} (or L{Event.create}); C{frame} holds the exact
    bytes that every subscriber receives. The frame is all an event holds:
    its C{data} is read back from it when asked for (rarely: fan-out and
    replay only write the frame), so a history of large events costs their
    size once, not twice.
    """

    channel: str
    event: str | None
    id: str | None
    retry: int | None
    frame: bytes = field(repr=False)
    #: Whether the payload is text (see L{Item.text}); C{None}: not known.
    text: bool | None = field(default=None, repr=False, compare=False)
    _envelope: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def envelope(self) -> bytes:
        """
        The event as an envelope (L{envelope_frame}), for the subscribers
        that ask for one (C{?envelope=1}): framed the first time one needs
        it, live or from the history, then kept with the event.
        """
        framed = self._envelope
        if framed is None:
            framed = envelope_frame(
                self.channel, self.event, self.id, self.retry, self.data, self.text
            )
            object.__setattr__(self, "_envelope", framed)
        return framed

    @property
    def data(self) -> str:
        """The payload as a spec parser reads it: its lines joined with LF."""
        lines = self.frame.decode("utf-8").split("\n")
        return "\n".join(line[6:] for line in lines if line.startswith("data: "))

    @classmethod
    @takes_item_args
    def create(cls, item: Item) -> Event:
        """
        L{Item.create}'s arguments, framed at once: an event in one call, for
        code that chooses its own ids (tests, relays, custom histories).
        """
        return item.framed()
