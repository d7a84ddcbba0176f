"""
Fixtures for interop tests: headless Chromium through Playwright, real
`twistd sse` servers, a loopback proxy, and htmx from npm.

A missing browser, Playwright or npm package skips the tests that need it,
with the reason; under CI (CI=true) each of those is a failure instead, so a
broken CI machine cannot pass by skipping.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

import pytest

from ..support.processes import SSEServer
from ..support.proxy import Proxy

HERE = Path(__file__).resolve().parent
CHROMIUM = os.environ.get("SSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
#: Default Playwright timeout (ms) for every wait in a page.
PAGE_TIMEOUT_MS = 15_000
NPM_DIR = HERE / ".npm"
NPM_PACKAGES = ["htmx.org@2", "htmx-ext-sse@2"]
HTMX_FILES = {
    "/htmx/htmx.min.js": NPM_DIR / "node_modules" / "htmx.org" / "dist" / "htmx.min.js",
    "/htmx/sse.js": NPM_DIR / "node_modules" / "htmx-ext-sse" / "dist" / "sse.js",
}


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def unavailable(reason: str) -> NoReturn:
    """Skip for C{reason}; under CI, fail instead."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """One headless Chromium (Debian's) for the session."""
    if not os.path.exists(CHROMIUM):
        unavailable(f"no Chromium at {CHROMIUM} (apt-get install chromium, or set SSE_CHROMIUM)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("the playwright Python package is not installed (pip install playwright)")
    # Playwright gives each launch a fresh --user-data-dir of its own.
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(
            executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, timeout=30_000
        )
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """A page in a fresh browser context (its own connection pool and cookies)."""
    context = browser.new_context()
    context.set_default_timeout(PAGE_TIMEOUT_MS)
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield pg
    finally:
        context.close()
    assert not errors, f"uncaught errors in the page: {errors}"


@pytest.fixture
def start_server() -> Iterator[Callable[..., SSEServer]]:
    """Start `twistd sse` processes; every one still running is stopped at the end."""
    started: list[SSEServer] = []

    def start(*args: str, port: int | None = None) -> SSEServer:
        srv = SSEServer(*args, port=port)
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture
def start_proxy() -> Iterator[Callable[..., Proxy]]:
    proxies: list[Proxy] = []

    def start(upstream_port: int, static: dict[str, tuple[bytes, str]] | None = None) -> Proxy:
        proxy = Proxy(upstream_port, static)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.close()


@pytest.fixture(scope="session")
def htmx_assets() -> dict[str, tuple[bytes, str]]:
    """htmx 2 and its SSE extension from npm, cached in tests/interop/.npm/."""
    if not all(path.exists() for path in HTMX_FILES.values()):
        npm = shutil.which("npm")
        if npm is None:
            unavailable("npm is not installed (needed to fetch htmx.org and htmx-ext-sse)")
        NPM_DIR.mkdir(exist_ok=True)
        try:
            done = subprocess.run(
                [
                    npm,
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--no-save",
                    "--no-package-lock",
                    "--prefix",
                    str(NPM_DIR),
                    *NPM_PACKAGES,
                ],
                capture_output=True,
                text=True,
                timeout=180,
                cwd=NPM_DIR,
            )
        except subprocess.TimeoutExpired:
            unavailable(f"npm install {' '.join(NPM_PACKAGES)} timed out")
        missing = [str(p) for p in HTMX_FILES.values() if not p.exists()]
        if done.returncode != 0 or missing:
            unavailable(
                f"npm install {' '.join(NPM_PACKAGES)} failed ({done.returncode}); "
                f"missing {missing}:\n{done.stderr[-2000:]}"
            )
    js = "text/javascript; charset=utf-8"
    assets = {url: (path.read_bytes(), js) for url, path in HTMX_FILES.items()}
    assets["/htmx/page.html"] = ((HERE / "htmx_page.html").read_bytes(), "text/html; charset=utf-8")
    return assets
