"""
A real `twistd -n sse` process: what it logs as it starts and stops (the
version, the endpoint, the non-default options with secrets redacted, and
no "Starting factory" lines), and the metrics it serves under their new and
deprecated names.
"""

from __future__ import annotations

import re
import signal

import pytest
from prometheus_client.parser import text_string_to_metric_families

from sse_twisted import __version__

from ..support.processes import SSEServer

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]

TOKEN = "argv-token-0123456789abcdef0123456789"
ENV_TOKEN = "env-token-0123456789abcdef0123456789"
SECRET = "jwt-secret-0123456789abcdef0123456789"


def stopped_output(server: SSEServer) -> str:
    """Stop C{server} (SIGTERM, a clean stop) and return everything it logged."""
    assert server.stop(signal.SIGTERM) == -signal.SIGTERM
    return server.drain_output()


def test_startup_lines_name_version_endpoint_and_options() -> None:
    """
    The listening line names the version and the bound address; the next
    line lists the non-default options, the JWT secret and the publish token
    as REDACTED; neither secret appears anywhere in the log, and no factory
    logs "Starting factory <... at 0x...>" (or its stop) at all.
    """
    server = SSEServer(
        "--heartbeat", "0",
        "--history", "50",
        "--jwt-secret", SECRET,
        "--publish-token", TOKEN,
        "--private-channel", "user-*",
        "--no-demo",
    )  # fmt: skip
    try:
        line = server.read_until(r"sse_twisted \S+ listening on").string
        options = server.read_until(r"^\s+options: ").string
        status, _, _ = server.request("GET", "/health")
        assert status == 200
    finally:
        output = stopped_output(server)
    assert f"sse_twisted {__version__} listening on IPv4Address(" in line
    assert f"port={server.port})" in line
    assert "stream at /events, publish at /publish (token required)" in line
    words = options.split()
    assert words[0] == "options:"
    assert sorted(words[1:]) == sorted([
        "--no-demo",
        "--port=tcp:0:interface=127.0.0.1",
        "--publish-token=REDACTED",
        "--history=50",
        "--heartbeat=0.0",
        "--jwt-secret=REDACTED",
        "--private-channel='user-*'",
    ])  # fmt: skip
    assert SECRET not in output and TOKEN not in output
    assert not re.search(r"(Starting|Stopping) factory", output), output
    assert " at 0x" not in output, output
    assert "sse_twisted drained and stopped" in output


def test_token_from_environment_is_redacted() -> None:
    """A publish token from $SSE_PUBLISH_TOKEN is listed as REDACTED, its value nowhere."""
    server = SSEServer("--heartbeat", "0", env={"SSE_PUBLISH_TOKEN": ENV_TOKEN})
    try:
        options = server.read_until(r"^\s+options: ").string
    finally:
        output = stopped_output(server)
    assert "--publish-token=REDACTED" in options
    assert ENV_TOKEN not in output


def test_metrics_of_a_real_process() -> None:
    """
    /metrics of a running server: sse_build_info with the version, both the
    new and the deprecated names with the same values, and one publish
    latency observation per publish answered.
    """
    server = SSEServer("--heartbeat", "0")
    try:
        for n in range(3):
            server.publish("c", "e", n)
        status, _, _ = server.request("POST", "/publish", raw=b"{")
        assert status == 400
        status, headers, body = server.request("GET", "/metrics")
        assert status == 200
    finally:
        stopped_output(server)
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    assert values[("sse_build_info", (("version", __version__),))] == 1
    assert values[("sse_sent_bytes_total", ())] == values[("sse_bytes_sent_total", ())]
    assert values[("sse_expired_streams_total", ())] == values[("sse_expired_total", ())] == 0
    assert values[("sse_publish_duration_seconds_count", ())] == 3  # the 400 is not timed
    assert values[("sse_publish_duration_seconds_bucket", (("le", "+Inf"),))] == 3
    assert 0 < values[("sse_publish_duration_seconds_sum", ())] < 3 * 1.0
