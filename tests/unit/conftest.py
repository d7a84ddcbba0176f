"""Fixtures of the deterministic suite."""

from __future__ import annotations

import time

import pytest
from twisted.internet.task import Clock


@pytest.fixture
def clock() -> Clock:
    """A Clock set to the wall time, since PyJWT checks C{exp} against the wall clock."""
    c = Clock()
    c.advance(time.time())
    return c
