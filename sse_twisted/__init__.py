"""
sse_twisted: Server-Sent Events for Twisted.

A broker that holds open event streams and fans events out to them, with
spec-exact framing, bounded per-client queues, resume from a history, and
clean draining; twisted.web resources and a Klein app to mount it;
C{twistd sse} to run it standalone; an EventSource client for Twisted.
"""

from typing import Any

from ._version import __version__
from .access import AllChannels
from .auth import JWTAuth
from .broker import SSEBroker
from .client import EventSource
from .collector import CollectorSettings
from .cors import CORSPolicy
from .durable import SQLiteHistory
from .event import Event, InvalidItem, Item
from .history import IHistory, MemoryHistory
from .hooks import Admission, Ended, Refused
from .limits import RateLimiter, SubscriberLimits
from .logstream import LogStreamObserver
from .parser import EventStreamParser, MessageEvent
from .paths import normalise_path
from .presence import Presence, PresenceEvents
from .publish import PublishResource
from .publishing import Published
from .relay import IRelay
from .resource import HealthResource, StreamResource
from .service import SSEService
from .stats import Stats
from .subscriber import Subscriber

__all__ = [
    "Admission",
    "AllChannels",
    "CORSPolicy",
    "CollectorSettings",
    "Ended",
    "Event",
    "EventSource",
    "EventStreamParser",
    "HealthResource",
    "IHistory",
    "IRelay",
    "InvalidItem",
    "Item",
    "JWTAuth",
    "LogStreamObserver",
    "MemoryHistory",
    "MessageEvent",
    "Presence",
    "PresenceEvents",
    "PublishResource",
    "Published",
    "RateLimiter",
    "Refused",
    "SQLiteHistory",
    "SSEBroker",
    "SSEService",
    "Stats",
    "StreamResource",
    "Subscriber",
    "SubscriberLimits",
    "__version__",
    "make_app",
    "make_resource",
    "normalise_path",
]


def __getattr__(name: str) -> Any:
    """
    C{make_app} and C{make_resource} are imported on first use: importing Klein
    installs the global reactor, which must stay the application's choice
    (C{--reactor=asyncio}, tests with a C{Clock}).
    """
    if name in ("make_app", "make_resource"):
        from . import app

        return getattr(app, name)
    raise AttributeError(f"module 'sse_twisted' has no attribute {name!r}")
