"""Lazy access to the global reactor, so tests can inject a clock instead."""

from __future__ import annotations

from typing import Any


def default_reactor(reactor: Any = None) -> Any:
    """Return C{reactor}, or the global reactor (imported only when needed)."""
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        return global_reactor
    return reactor
