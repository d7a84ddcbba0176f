"""
What a stream entry is: the order of stream ids, and an event's fields.

One place for the entry format, so that what a node writes (L{item_fields},
for C{XADD}) and what every node reads back (L{entry_event}) cannot drift
apart. No Twisted, no connection: plain values in, plain values out.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..event import Event, Item

__all__ = ["entry_event", "item_fields", "stream_id_key"]


def stream_id_key(stream_id: str) -> tuple[int, int]:
    """
    The sort key of a Redis stream id C{"<ms>-<seq>"}.

    @raise ValueError: if C{stream_id} is not a full stream id.
    """
    ms, sep, seq = stream_id.partition("-")
    if not sep or not ms.isdigit() or not seq.isdigit():
        raise ValueError(f"not a Redis stream id (<ms>-<seq>): {stream_id!r}")
    return int(ms), int(seq)


def item_fields(item: Item) -> list[Any]:
    """The field/value pairs that store C{item} (validated, without an id)."""
    fields: list[Any] = ["channel", item.channel, "data", item.payload]
    if item.event is not None:
        fields += ["event", item.event]
    if item.retry is not None:
        fields += ["retry", item.retry]
    if item.text:
        fields += ["text", "1"]  # for envelopes; absent: JSON, or an older writer's
    return fields


def entry_event(entry_id: str, fields: Any) -> Event:
    """
    The event stored as entry C{entry_id}, validated again (another writer
    may share the stream) and framed once, with the stream id as its id.

    @param fields: the entry's flat field/value list, as Redis sends it.
    @raise KeyError: without a channel.
    @raise TypeError: for a reply that is not a field/value list.
    @raise ValueError: for fields that do not make a valid event.
    """
    values = dict(zip(fields[::2], fields[1::2], strict=True))
    retry = values.get("retry")
    item = Item.create(
        values["channel"],
        values.get("event"),
        text=values.get("data", ""),
        retry=int(retry) if retry is not None else None,
    )
    return replace(item, text=True if "text" in values else None).framed(entry_id)
