"""
Smoke-test the installed package from a venv that has only the built wheel:
C{twistd sse} and C{twist sse} each start on a free loopback port, answer
C{GET /health} with 200, and stop on SIGTERM (sent to their PID), all within
deadlines; C{twistd sse --version} names the package's version.

Run it from outside the checkout (so C{import sse_twisted} cannot find the
sources): C{cd /tmp && python .ci/smoke.py VENV EXPECTED_VERSION}.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

START_WITHIN = 30.0
STOP_WITHIN = 15.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def health(port: int) -> tuple[int, dict[str, object]] | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as response:
            return response.status, json.loads(response.read())
    except OSError:
        return None


def run(name: str, argv: list[str], cwd: str) -> None:
    log = Path(cwd) / f"{name}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    try:
        port = int(argv[argv.index("--port") + 1].split(":")[1])
        deadline = time.monotonic() + START_WITHIN
        answer = None
        while answer is None:
            if process.poll() is not None:
                raise SystemExit(f"smoke: {name} exited {process.returncode}:\n{log.read_text()}")
            if time.monotonic() > deadline:
                raise SystemExit(f"smoke: {name}: no /health within {START_WITHIN}s")
            answer = health(port)
            if answer is None:
                time.sleep(0.1)
        status, body = answer
        if status != 200 or body.get("status") != "ok":
            raise SystemExit(f"smoke: {name}: /health answered {status} {body}")
        os.kill(process.pid, signal.SIGTERM)
        try:
            code = process.wait(STOP_WITHIN)
        except subprocess.TimeoutExpired:
            raise SystemExit(f"smoke: {name} still running {STOP_WITHIN}s after SIGTERM") from None
        # twistd re-raises SIGTERM after a clean stop.
        if code not in (0, -signal.SIGTERM):
            raise SystemExit(f"smoke: {name} exited {code} on SIGTERM:\n{log.read_text()}")
        if "Traceback" in log.read_text():
            raise SystemExit(f"smoke: {name} logged a traceback:\n{log.read_text()}")
        print(f"smoke: {name}: /health 200 on port {port}, stopped by SIGTERM ({code})")
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def main() -> int:
    venv, expected = Path(sys.argv[1]).resolve(), sys.argv[2]
    bin_ = venv / "bin"
    with tempfile.TemporaryDirectory() as cwd:
        version = subprocess.run(
            [bin_ / "twistd", "sse", "--version"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()[0]
        if version != f"sse_twisted {expected}":
            raise SystemExit(f"smoke: twistd sse --version said {version!r}, not {expected}")
        print(f"smoke: twistd sse --version: {version}")
        endpoint = f"tcp:{free_port()}:interface=127.0.0.1"
        run("twistd", [str(bin_ / "twistd"), "-n", "--pidfile=", "sse", "--port", endpoint], cwd)
        endpoint = f"tcp:{free_port()}:interface=127.0.0.1"
        run("twist", [str(bin_ / "twist"), "sse", "--port", endpoint], cwd)
    return 0


if __name__ == "__main__":
    sys.exit(main())
