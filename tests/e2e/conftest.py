from __future__ import annotations

from collections.abc import Iterator

import pytest

from ..support.processes import SSEServer


@pytest.fixture
def server() -> Iterator[SSEServer]:
    srv = SSEServer("--heartbeat", "1")
    yield srv
    srv.stop()
