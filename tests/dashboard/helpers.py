"""Driving the dashboard: the stack under test, opening the page with a key, rows, screenshots."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import httpx
from playwright.async_api import Browser, Page

from tests.support.browser import ARTIFACTS


@dataclass
class Stack:
    url: str
    http: httpx.AsyncClient

    async def submit(self, args: dict[str, Any], *, key: str = "dev-key", **fields: Any) -> dict[str, Any]:
        response = await self.http.post("/v1/jobs", json={"task": "demo.steps", "args": args, **fields},
                                        headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 202, response.text
        return dict(response.json())

    async def batch(self, jobs: list[dict[str, Any]]) -> list[str]:
        response = await self.http.post("/v1/jobs:batch", json={"jobs": jobs})
        assert response.status_code == 202, response.text
        return [job["id"] for job in response.json()["items"]]

    async def job(self, job_id: str, *, key: str = "dev-key") -> dict[str, Any]:
        response = await self.http.get(f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 200, response.text
        return dict(response.json())

    async def until_status(self, job_id: str, statuses: set[str], within: float = 60, *,
                           key: str = "dev-key") -> dict[str, Any]:
        job = await self.job(job_id, key=key)
        async with asyncio.timeout(within):
            while job["status"] not in statuses:  # long-polls: answers as soon as the job's seq moves
                response = await self.http.get(f"/v1/jobs/{job_id}", params={"wait": 5, "after_seq": job["seq"]},
                                               headers={"Authorization": f"Bearer {key}"})
                job = response.json()
        return job


async def open_dashboard(browser: Browser, stack: Stack, hash_: str = "", *, key: str = "dev-key") -> Page:
    # Playwright's wait_for_function evaluates strings, which the page's CSP (no unsafe-eval) would refuse.
    page = await browser.new_page(viewport={"width": 1440, "height": 900}, bypass_csp=True)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))
    page.errors = errors  # type: ignore[attr-defined]  # read by the tests at the end
    await page.goto(f"{stack.url}/dashboard{hash_}")
    await page.fill("#api-key", key)
    await page.click("#save-key")
    await page.wait_for_function("document.body.dataset.live === '1'", timeout=15_000)
    return page


def row(job_id: str) -> str:
    return f'.job[data-job-id="{job_id}"]'


async def shown_ids(page: Page) -> list[str]:
    return list(await page.eval_on_selector_all(".job", "(els) => els.map((el) => el.dataset.jobId)"))


async def screenshot(page: Page, name: str) -> None:
    await asyncio.to_thread(ARTIFACTS.mkdir, exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def ids_js() -> str:
    return "[...document.querySelectorAll('.job')].map((el) => el.dataset.jobId).join(' ')"
