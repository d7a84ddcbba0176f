"""
The public API: each exported name is the object from its home module;
importing it installs no reactor.
"""

from __future__ import annotations

import sse_twisted


def test_exports() -> None:
    """Every public name is the object from its home module (nothing re-defined)."""
    import importlib

    homes = {
        "AllChannels": "access", "CORSPolicy": "cors", "Event": "event",
        "EventSource": "client", "EventStreamParser": "parser", "HealthResource": "resource",
        "IHistory": "history", "IRelay": "relay", "InvalidItem": "event", "Item": "event",
        "JWTAuth": "auth", "LogStreamObserver": "logstream", "MemoryHistory": "history",
        "MessageEvent": "parser", "PublishResource": "publish", "Published": "publishing",
        "Presence": "presence", "PresenceEvents": "presence",
        "RateLimiter": "limits", "SSEBroker": "broker", "SSEService": "service",
        "Stats": "stats", "StreamResource": "resource", "Subscriber": "subscriber",
        "SubscriberLimits": "limits", "make_app": "app", "make_resource": "app",
        "normalise_path": "paths", "__version__": "_version", "SQLiteHistory": "durable",
        "Admission": "hooks", "Ended": "hooks", "Refused": "hooks",
        "CollectorSettings": "collector",
    }  # fmt: skip
    assert set(sse_twisted.__all__) == set(homes)
    for name, module in homes.items():
        home = importlib.import_module(f"sse_twisted.{module}")
        assert getattr(sse_twisted, name) is getattr(home, name), name


def test_import_leaves_reactor_choice_to_the_application() -> None:
    """Importing sse_twisted (and its client) does not install the global reactor."""
    import subprocess
    import sys

    code = (
        "import sys, sse_twisted, sse_twisted.client, sse_twisted.broker, sse_twisted.resource;"
        "print('twisted.internet.reactor' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr
