"""
sse_twisted: Server-Sent Events for Twisted.

A broker that holds open event streams and fans events out to them, with
spec-exact framing, bounded per-client queues and clean draining; a
twisted.web resource to mount it; and C{twistd sse} to run it standalone.
"""

from ._version import __version__
from .broker import SSEBroker
from .event import Event
from .paths import normalise_path
from .resource import HealthResource, PublishResource, StreamResource
from .service import SSEService
from .subscriber import Subscriber

__all__ = [
    "Event",
    "HealthResource",
    "PublishResource",
    "SSEBroker",
    "SSEService",
    "StreamResource",
    "Subscriber",
    "__version__",
    "normalise_path",
]
