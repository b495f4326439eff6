"""Headless Chromium for the browser tests (Playwright driving the system package; no browser download).

Chromium is a system package (`apt-get install -y chromium chromium-driver`, installed by `make browsers`);
the tests never install it and fail loudly when it is missing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, async_playwright

from .servers import repo_root

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = repo_root() / "test-artifacts"


def require_chromium() -> None:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium chromium-driver`")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser
        await browser.close()
