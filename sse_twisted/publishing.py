"""
The ways to publish, all on top of one path (L{Publishing.publish_items}):
one event with keyword arguments, text verbatim, a batch of mappings, and
from another thread.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed

from .event import Event, Item, takes_item_args
from .relay import IRelay

__all__ = ["Published", "Publishing", "maybe_deferred"]


@dataclass(slots=True)
class Published:
    """One published event: its id, and how many of this node's subscribers it went to."""

    item: Item
    id: str
    clients: int
    #: The event as framed for delivery, when it was framed here.
    framed: Event | None = None
    #: A repeat of an idempotency key: not published again; C{id} is the first one's.
    duplicate: bool = False

    @property
    def event(self) -> Event:
        """The event as subscribers receive it (framed once: here, or on first ask)."""
        if self.framed is None:
            self.framed = self.item.framed(self.id)
        return self.framed


class Publishing:
    """
    The publishing API of L{sse_twisted.SSEBroker}: every form validates
    once (L{Item}) and goes through L{publish_items}, which the broker
    implements.
    """

    relay: IRelay | None

    @property
    def reactor(self) -> Any:
        """The reactor L{publish_threadsafe} hands items to (the broker's)."""
        raise NotImplementedError

    def publish_items(self, items: Sequence[Item]) -> list[Published] | Deferred[list[Published]]:
        """
        Publish validated C{items}, all or none: the one path every other
        form takes (the broker implements it; a C{Deferred} with a relay).
        """
        raise NotImplementedError

    @takes_item_args
    def publish(self, item: Item) -> Event | Deferred[Event]:
        """
        Publish one event to every subscriber of its channel; the arguments
        are L{Item.create}'s: C{(channel, event=None, data=None, *,
        text=None, id=None, retry=None)}.

        C{data} is JSON-encoded once (compact, UTF-8); pass C{text} instead to
        send a str verbatim. Returns the event, its id included; with a
        relay, a Deferred of it, fired once the relay stored it (and failed
        if it could not: never a silent drop).

        @raise TypeError: if JSON cannot encode C{data}, or a field has the
            wrong type.
        @raise ValueError: for a bad channel, CR/LF/NUL in C{event}/C{id}.
        """
        done = self.publish_items([item])
        if isinstance(done, list):
            return done[0].event
        return done.addCallback(lambda published: published[0].event)

    def publish_text(
        self,
        channel: str,
        event: str | None,
        text: str,
        *,
        id: str | None = None,
        retry: int | None = None,
    ) -> Event | Deferred[Event]:
        """Publish C{text} verbatim (plain text, or HTML fragments for htmx)."""
        return self.publish(channel, event, text=text, id=id, retry=retry)

    def publish_many(self, items: Sequence[Mapping[str, Any]]) -> Deferred[list[Event]]:
        """
        Publish a batch of mappings (keys as L{publish}'s arguments), all or
        none; a Deferred of the events.

        @raise InvalidItem: for a bad item (its C{index} says which); nothing
            is published.
        """
        checked = [Item.from_mapping(item, index) for index, item in enumerate(items)]
        return maybe_deferred(self.publish_items(checked)).addCallback(
            lambda done: [p.event for p in done]
        )

    @takes_item_args
    def publish_threadsafe(self, item: Item) -> Future[Event]:
        """
        L{publish} from any thread (same arguments); returns a
        C{concurrent.futures.Future} of the event.

        Validation and JSON encoding run in the calling thread (so bad data
        raises there, at once, and the reactor thread only frames and
        writes); the rest runs in the reactor thread via C{callFromThread}.
        """
        future: Future[Event] = Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                done = maybe_deferred(self.publish_items([item]))
            except BaseException as e:  # hand every failure to the waiting thread
                future.set_exception(e)
                return
            done.addCallbacks(
                lambda published: future.set_result(published[0].event),
                lambda f: future.set_exception(f.value),
            )

        self.reactor.callFromThread(run)
        return future


def maybe_deferred(done: list[Published] | Deferred[list[Published]]) -> Deferred[list[Published]]:
    """What L{Publishing.publish_items} answered, as a Deferred either way."""
    return succeed(done) if isinstance(done, list) else done
