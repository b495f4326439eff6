"""End to end in headless Chromium: the dashboard and the browser client, against real services.

Chromium is a system package (`apt-get install -y chromium chromium-driver`, installed by the Makefile);
this test never installs it and fails loudly when it is missing.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hubtest import Jobs, assert_gap_free, until
from playwright.async_api import Browser, Page, WebSocket, async_playwright

from tests.support.fixtures import ServiceFactory
from tests.support.servers import repo_root

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = repo_root() / "test-artifacts"


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: install it with `apt-get install -y chromium chromium-driver`")


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    _require_chromium()
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        yield browser
        await browser.close()


async def submit(gateway_url: str, args: dict[str, Any], key: str = "dev-key") -> str:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{gateway_url}/v1/jobs", json={"task": "demo.steps", "args": args},
                                   headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def attr(page: Page, job_id: str, name: str) -> str | None:
    return await page.get_attribute(f'.job[data-job-id="{job_id}"]', f"data-{name}")


async def test_dashboard_shows_live_progress(services: ServiceFactory, browser: Browser) -> None:
    hub = services("hub")
    services("worker")
    gateway = services("gateway", env={"LONGRUN_HUB_PUBLIC_URL": hub.url})
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    sockets: list[WebSocket] = []
    page.on("websocket", lambda ws: sockets.append(ws))
    await page.goto(f"{gateway.url}/dashboard?rows=2")  # keeps the 2 newest jobs
    await page.fill("#api-key", "dev-key")
    await page.click("#save-key")
    await page.wait_for_function("document.body.dataset.live === '1'", timeout=15_000)

    job = await submit(gateway.url, {"steps": 20, "delay": 0.05})
    slow = await submit(gateway.url, {"steps": 30, "delay": 0.25})  # long enough to watch it move
    await page.wait_for_selector(f'.job[data-job-id="{slow}"]', timeout=15_000)
    seen: set[int] = set()
    async with asyncio.timeout(60):
        while await attr(page, slow, "status") != "succeeded":
            percent = await attr(page, slow, "percent")
            if percent is not None:
                seen.add(int(percent))
            await asyncio.sleep(0.05)
    await page.wait_for_selector(f'.job[data-job-id="{job}"][data-status="succeeded"][data-percent="100"]',
                                 timeout=30_000)
    assert await attr(page, slow, "percent") == "100"
    assert len({p for p in seen if 0 < p < 100}) >= 3, f"progress was not pushed live: saw {sorted(seen)}"
    assert int(await attr(page, slow, "frames") or 0) >= 5  # frames pushed by the hub, not list refreshes
    assert await page.text_content(f'.job[data-job-id="{job}"] .status') == "succeeded"
    await asyncio.to_thread(ARTIFACTS.mkdir, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

    # Another key (another tenant), submitted twice in a row: none of dev's rows stay, and of the two
    # overlapping connects only one hub socket is left open.
    await page.fill("#api-key", "acme-key")
    await page.evaluate("() => { const form = document.getElementById('key-form');"
                        " form.requestSubmit(); form.requestSubmit(); }")
    await page.wait_for_function("document.body.dataset.live === '1'"
                                 " && document.getElementById('state').textContent.startsWith('0 recent')",
                                 timeout=15_000)
    assert await page.locator(".job").count() == 0
    hub_sockets = [ws for ws in sockets if "/v1/ws" in ws.url]
    await until(lambda: sum(not ws.is_closed() for ws in hub_sockets) == 1, within=5)
    # Rows are pruned to the newest `rows`.
    acme = []
    for _ in range(3):
        acme.append(await submit(gateway.url, {"steps": 1, "delay": 0}, key="acme-key"))
        await asyncio.sleep(0.05)
    shown = "[...document.querySelectorAll('.job')].map((el) => el.dataset.jobId).join(' ')"
    await page.wait_for_function(f"{shown} === {json.dumps(f'{acme[2]} {acme[1]}')}", timeout=15_000)
    assert errors == []


WATCH = """
async ([hubUrl, jobId, token]) => {
  const { watchJob } = await import(hubUrl + "/v1/client.js");
  window.frames_ = []; window.closes_ = [];
  return await new Promise((resolve, reject) => {
    watchJob(hubUrl, jobId, {
      token, minDelay: 50, maxDelay: 400,
      onSnapshot: (job, frame) => window.frames_.push(frame),
      onEvent: (frame) => window.frames_.push(frame),
      onClose: (code) => window.closes_.push(code),
      onEnd: () => resolve(window.frames_),
      onError: (err) => reject(err.message),
    });
  });
}
"""


async def test_browser_client_resumes_across_a_hub_restart(services: ServiceFactory, jobs: Jobs,
                                                         browser: Browser) -> None:
    """client.js in Chromium: the hub it talks to restarts mid-job; it resumes with `since`, gap-free."""
    hub = services("hub")
    job = await jobs.create()
    page = await browser.new_page()
    await page.goto(f"{hub.url}/healthz")  # any page of the hub's origin
    watching = asyncio.create_task(page.evaluate(WATCH, [hub.url, job, jobs.token(job)]))

    async def publish() -> int:
        for i in range(60):
            await jobs.progress(job, i, total=60)
            await asyncio.sleep(0.03)
        return await jobs.finish(job)

    await asyncio.sleep(0.5)
    publisher = asyncio.create_task(publish())
    await asyncio.sleep(0.6)
    await asyncio.to_thread(hub.stop)  # reconnect frame + 1012; the client retries until the hub is back
    await asyncio.sleep(0.3)
    hub.start()  # the same port: the client's URL stays valid
    final = await publisher
    frames = await asyncio.wait_for(watching, 30)
    closes = await page.evaluate("window.closes_")
    seqs = [f["seq"] for f in frames if f["type"] != "snapshot"]
    assert frames[0]["type"] == "snapshot"
    assert_gap_free(seqs, frames[0]["seq"] + 1, final)
    assert 1012 in closes and closes[-1] == 1000, json.dumps(closes)
