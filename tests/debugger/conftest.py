"""Browser fixtures: Debian's Chromium driven headless by Playwright, and a fresh collector.

The browser is never downloaded: Playwright launches ``/usr/bin/chromium``. Where it is
missing (or the ``playwright`` package is), the tests skip and say which.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

import tracklane
from tracklane.collector import CollectorServer, serve_in_thread

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WRITE_KEY = "wk-browser-tests"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """One headless Chromium per test module.

    Playwright's sync API keeps an event loop running in the main thread while it is open,
    so it must be closed before other modules' tests call ``asyncio.run()``.
    """
    if not os.path.exists(CHROMIUM):
        pytest.skip(
            f"the debugger's browser tests need Chromium at {CHROMIUM} "
            "(apt-get install chromium); CI installs it"
        )
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="the browser tests need playwright (the 'test' extra)"
    )
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def collector(tmp_path: Path) -> Iterator[CollectorServer]:
    """A fresh open collector for one test."""
    with serve_in_thread(tmp_path / "events.db") as server:
        yield server


@pytest.fixture
def client(collector: CollectorServer) -> Iterator[tracklane.Client]:
    """The real client, sending to ``collector``."""
    client = tracklane.Client(WRITE_KEY, host=collector.url)
    yield client
    client.shutdown(timeout=5)


@pytest.fixture
def page(browser: Any, collector: CollectorServer) -> Iterator[Any]:
    """A page in a fresh context (light colour scheme, clipboard allowed), failing on JS errors."""
    context = browser.new_context(
        viewport={"width": 1280, "height": 800},
        color_scheme="light",
        permissions=["clipboard-read", "clipboard-write"],
        base_url=collector.url,
    )
    page = context.new_page()
    errors: list = []
    page.on("pageerror", lambda error: errors.append(error))
    page.set_default_timeout(10_000)
    yield page
    context.close()
    assert errors == [], f"JavaScript errors on the page: {errors}"
