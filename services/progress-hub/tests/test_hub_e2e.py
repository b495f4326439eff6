"""End to end in headless Chromium (the `browser` fixture of tests/support/browser.py): the browser client,
against real services. The gateway's dashboard has its own browser tests in tests/dashboard/.
"""

from __future__ import annotations

import asyncio
import json

import pytest
from hubtest import Jobs, assert_gap_free
from playwright.async_api import Browser

from tests.support.fixtures import ServiceFactory

pytestmark = pytest.mark.e2e

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
