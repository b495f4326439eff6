"""The operations dashboard in headless Chromium, against a real gateway, hub and worker (as an operator uses it).

Screenshots of the main views land in test-artifacts/ (docs/dashboard.png is one of them, kept in the repo).
"""

from __future__ import annotations

import asyncio
import json

import pytest
from playwright.async_api import Browser, Page

from .helpers import Stack, ids_js, open_dashboard, row, screenshot, shown_ids

# Starting a gateway, a hub and a worker takes a minute on a loaded 2-core machine.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_job_list_live_bars_filters_paging_and_search(stack: Stack, browser: Browser) -> None:
    page = await open_dashboard(browser, stack)
    # The key is kept for this browser session only (nothing in localStorage unless "remember" is ticked).
    assert await page.evaluate("sessionStorage.getItem('longrun.apiKey')") == "dev-key"
    assert await page.evaluate("localStorage.getItem('longrun.apiKey')") is None

    # Load: 50 jobs on 3 worker processes, plus one on a queue no worker takes (it waits).
    load = await stack.batch([{"task": "demo.steps", "args": {"steps": 40, "delay": 0.1}} for _ in range(50)])
    waiting = (await stack.submit({"steps": 1}, queue="low"))["id"]
    # The newest job (top of the list), urgent so that it runs next despite the load.
    watched = (await stack.submit({"steps": 30, "delay": 0.2}, priority=9))["id"]
    await page.wait_for_selector(row(watched), timeout=15_000)
    seen: set[int] = set()
    shot = False
    async with asyncio.timeout(90):
        while await page.get_attribute(row(watched), "data-status") != "succeeded":
            percent = await page.get_attribute(row(watched), "data-percent")
            if percent is not None:
                seen.add(int(percent))
                if 40 <= int(percent) < 90 and not shot:
                    await screenshot(page, "dashboard-jobs.png")  # under load: bars moving, jobs waiting
                    shot = True
            await asyncio.sleep(0.05)
    assert len({p for p in seen if 0 < p < 100}) >= 3, f"the bar did not move live: saw {sorted(seen)}"
    assert int(await page.get_attribute(row(watched), "data-frames") or 0) >= 5  # pushed by the hub
    assert await page.get_attribute(row(waiting), "data-phase") == "waiting"
    assert await page.text_content(f"{row(waiting)} .pct") == "—"
    await page.wait_for_selector("#worker-count", timeout=10_000)
    assert shot and len(load) == 50

    # Paging: 25 a page (the newest first), the next page has the next ones, and back.
    first = await shown_ids(page)
    assert len(first) == 25 and first[:2] == [watched, waiting]
    await page.click("#older")
    await page.wait_for_function("document.getElementById('count').textContent.startsWith('page 2')")
    second = await shown_ids(page)
    assert len(second) == 25 and not set(first) & set(second)
    await page.click("#newer")
    await page.wait_for_function("document.getElementById('count').textContent.startsWith('page 1')")
    assert (await shown_ids(page))[:2] == [watched, waiting]

    # Filters: by queue, by status (the select applies at once), by task, by time; each lands in the URL.
    await page.fill("#filters input[name=queue]", "low")
    await page.click("#filters button[type=submit]")
    await page.wait_for_function(f"{ids_js()} === {json.dumps(waiting)}")
    assert "queue=low" in page.url
    await page.goto(f"{stack.url}/dashboard#/jobs?status=succeeded&since=15m")
    await page.wait_for_selector(row(watched))
    statuses = await page.eval_on_selector_all(".job", "(els) => els.map((el) => el.dataset.status)")
    assert statuses and set(statuses) == {"succeeded"}
    await page.goto(f"{stack.url}/dashboard#/jobs?task=files.checksum")
    await page.wait_for_selector(".empty")
    assert await shown_ids(page) == []

    # Search by id opens the job; an unknown id says so.
    await page.fill("#search", watched)
    await page.press("#search", "Enter")
    await page.wait_for_selector('.job-head[data-status="succeeded"]')
    await page.fill("#search", "00000000-0000-0000-0000-000000000000")
    await page.press("#search", "Enter")
    await page.wait_for_selector(".notice.error")
    assert "No job" in (await page.text_content(".notice.error") or "")
    assert page.errors == []  # type: ignore[attr-defined]
    await key_handling(page, mine=watched)


async def key_handling(page: Page, mine: str) -> None:
    """The key stays for the session unless remembered; another tenant's key shows none of the first's jobs."""
    await page.goto(page.url.split("#")[0] + "#/jobs")
    # Remember: the key goes to localStorage; another tenant's key replaces the page's jobs.
    await page.fill("#api-key", "acme-key")
    await page.check("#remember")
    await page.click("#save-key")
    await page.wait_for_selector(".empty")
    assert await page.evaluate("localStorage.getItem('longrun.apiKey')") == "acme-key"
    assert await page.evaluate("sessionStorage.getItem('longrun.apiKey')") is None
    assert await page.locator(row(mine)).count() == 0
    # Forget: gone from both; a wrong key says why.
    await page.click("#forget-key")
    assert await page.evaluate("localStorage.getItem('longrun.apiKey') || sessionStorage.getItem('longrun.apiKey')") \
        is None
    await page.fill("#api-key", "wrong")
    await page.click("#save-key")
    await page.wait_for_selector(".state.error")
    assert "Cannot connect" in (await page.text_content("#state") or "")


async def test_job_page_failure_cancel_and_dead_letters(stack: Stack, browser: Browser) -> None:
    # Three jobs that fail every attempt (they become dead letters) and later one long job to cancel while it runs.
    failing = [(await stack.submit({"steps": 4, "fail_times": 10}))["id"] for _ in range(3)]
    queued = (await stack.submit({"steps": 1}, queue="low"))["id"]
    for job_id in failing:
        await stack.until_status(job_id, {"failed"})
    page = await open_dashboard(browser, stack)

    # In the list: a failed job shows its error (not "0%"), a job cancelled while queued is not "waiting".
    await page.wait_for_selector(f'{row(failing[0])}[data-phase="failed"]')
    assert "planned failure" in (await page.text_content(f"{row(failing[0])} .error-text") or "")
    assert await page.get_attribute(row(queued), "data-phase") == "waiting"
    await page.click(f'{row(queued)} button[data-action="cancel"]')
    await page.wait_for_selector(f'{row(queued)}[data-phase="cancelled-queued"]', timeout=15_000)
    assert await page.text_content(f"{row(queued)} .badge") == "cancelled before start"
    await screenshot(page, "dashboard-states.png")  # failed with its error, cancelled before start

    # The failed job's page: error with traceback, every attempt, and the timeline replayed from its stream.
    await page.click(f"{row(failing[0])} a.name")
    await page.wait_for_selector('.job-head[data-status="failed"]')
    await page.wait_for_selector("#timeline[data-ended='1']", timeout=15_000)
    assert "planned failure" in (await page.text_content("#error-message") or "")
    assert "TransientError" in (await page.text_content("pre.trace") or "")
    assert await page.locator(".history tbody tr").count() == 4
    job = await stack.job(failing[0])
    assert int(await page.get_attribute("#timeline", "data-events") or 0) == job["seq"]  # all of them, once
    timeline = await page.eval_on_selector_all("#timeline tbody tr", "(rs) => rs.map((r) => r.dataset.seq)")
    assert [int(s) for s in timeline] == list(range(job["seq"], 0, -1))
    assert await page.locator("#timeline tr.status.retrying").count() == 3
    await screenshot(page, "dashboard-failed-job.png")

    # Cancel a running job from its page: it ends cancelled (while running), the timeline shows the end.
    long = (await stack.submit({"steps": 600, "delay": 0.1}, priority=9))["id"]
    await stack.until_status(long, {"running"})
    await page.goto(f"{stack.url}/dashboard#/jobs/{long}")
    await page.wait_for_selector('.job-head[data-status="running"]')
    await page.wait_for_function("Number(document.getElementById('timeline').dataset.events) >= 3")
    await page.click("#cancel")
    await page.wait_for_selector('.job-head[data-phase="cancelled"]', timeout=30_000)
    assert await page.text_content(".job-head .badge") == "cancelled while running"
    await page.wait_for_selector("#timeline tr.status.cancelled")

    # Dead letters: the three are listed; "Requeue all matching" (filtered by task) starts them again.
    await page.goto(f"{stack.url}/dashboard#/dead-letters?task=demo.steps")
    await page.wait_for_selector(".letter")
    assert sorted(await page.eval_on_selector_all(".letter", "(rs) => rs.map((r) => r.dataset.jobId)")) == \
        sorted(failing)
    await screenshot(page, "dashboard-dead-letters.png")
    await page.click("#requeue-all")
    await page.wait_for_function("document.getElementById('state').textContent === 'Requeued 3 job(s).'")
    for job_id in failing:
        assert (await stack.job(job_id))["attempt"] >= 5  # a new attempt after the four that failed

    # Queues and workers.
    await page.goto(f"{stack.url}/dashboard#/queues")
    await page.wait_for_selector("#workers [data-worker]")
    assert await page.locator("#queues [data-queue]").count() >= 1
    assert page.errors == []  # type: ignore[attr-defined]


async def test_held_and_delayed_jobs_say_why(stack: Stack, browser: Browser) -> None:
    # acme may run one job at a time (conftest): its second job is held; a third is delayed by ten minutes.
    acme = {"key": "acme-key"}
    busy = (await stack.submit({"steps": 600, "delay": 0.1}, **acme))["id"]
    held = await stack.submit({"steps": 1}, **acme)
    assert held["queued_reason"] == "tenant_concurrency_limit"
    delayed = await stack.submit({"steps": 1}, delay=600, **acme)
    assert delayed["queued_reason"] == "delayed"
    page = await open_dashboard(browser, stack, key="acme-key")

    # The list: each says why it waits, and the delayed one counts down to its start instead of up.
    await page.wait_for_selector(f'{row(held["id"])}[data-queued-reason="tenant_concurrency_limit"]')
    assert "limit" in (await page.text_content(f'{row(held["id"])} .reason') or "")
    await page.wait_for_selector(f'{row(delayed["id"])}[data-queued-reason="delayed"]')
    assert (await page.text_content(f'{row(delayed["id"])} .reason') or "").startswith("delayed until ")
    countdown = await page.text_content(f'{row(delayed["id"])} .timing') or ""
    assert countdown.startswith(("starts in 9m", "starts in 10m")), countdown
    assert await page.get_attribute(row(busy), "data-queued-reason") == ""  # running: no reason
    await screenshot(page, "dashboard-waiting-reasons.png")

    # The delayed job's page: the reason in words and the time it starts.
    await page.click(f'{row(delayed["id"])} a.name')
    await page.wait_for_selector('#queued-reason[data-reason="delayed"]')
    facts = await page.text_content("#facts") or ""
    assert "starts at" in facts and "delayed until" in (await page.text_content("#queued-reason") or "")
    await screenshot(page, "dashboard-delayed-job.png")

    # Once the running job ends, the held one is released: it runs and its reason is gone.
    response = await stack.http.post(f"/v1/jobs/{busy}/cancel", headers={"Authorization": "Bearer acme-key"})
    assert response.status_code in (200, 202), response.text
    await page.goto(f"{stack.url}/dashboard#/jobs/{held['id']}")
    await page.wait_for_selector('.job-head[data-status="succeeded"]', timeout=60_000)
    assert await page.locator("#queued-reason").count() == 0
    assert page.errors == []  # type: ignore[attr-defined]
