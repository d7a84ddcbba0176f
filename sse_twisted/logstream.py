"""Stream an application's own twisted.logger events to SSE subscribers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import ILogObserver, LogEvent, formatEvent
from twisted.python import threadable
from zope.interface import implementer

from .broker import SSEBroker
from .event import validate_channel

__all__ = ["LogStreamObserver"]


@implementer(ILogObserver)
class LogStreamObserver:
    """
    A log observer that publishes the log events C{predicate} selects to
    C{channel}, as JSON C{{"time", "level", "namespace", "text"}} under the
    event name C{event}.

    One line makes an application's logs watchable in a browser::

        globalLogPublisher.addObserver(LogStreamObserver(broker, "logs"))

    Events logged from other threads are handed to the reactor thread, and a
    log event raised while publishing is not published again (no feedback
    loop through the broker's own logging).
    """

    def __init__(
        self,
        broker: SSEBroker,
        channel: str = "logs",
        predicate: Callable[[LogEvent], bool] | None = None,
        event: str = "log",
    ) -> None:
        self.broker = broker
        self.channel = validate_channel(channel)
        self.predicate = predicate
        self.event = event
        self._busy = False

    def __call__(self, log_event: LogEvent) -> None:
        if self._busy or (self.predicate is not None and not self.predicate(log_event)):
            return
        level = log_event.get("log_level")
        data: dict[str, Any] = {
            "time": log_event.get("log_time"),
            "level": getattr(level, "name", None),
            "namespace": log_event.get("log_namespace"),
            "text": formatEvent(log_event),
        }
        if threadable.ioThread is None or threadable.isInIOThread():
            self._publish(data)
        else:
            self.broker.reactor.callFromThread(self._publish, data)

    def _publish(self, data: dict[str, Any]) -> None:
        self._busy = True
        try:
            self.broker.publish(self.channel, self.event, data)
        finally:
            self._busy = False
