"""Dashboard views that need API parts other branches add: run these after merging them.

- the workflow tree with its live roll-up (`POST /v1/workflows`, `GET /v1/jobs/{id}/children`, `parent_id`/`root_id`);
- "Delete all matching" in dead letters (`DELETE /v1/dead-letters?task=&error_type=`).
"""

from __future__ import annotations

import asyncio

import pytest
from playwright.async_api import Browser

from .helpers import Stack, open_dashboard, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


async def test_workflow_tree_rolls_up_live(stack: Stack, browser: Browser) -> None:
    leaf = {"task": "demo.steps", "args": {"steps": 20, "delay": 0.1}}
    response = await stack.http.post("/v1/workflows", json={"spec": {"chain": [leaf, {"group": [leaf, leaf]}]}})
    assert response.status_code == 202, response.text
    root = response.json()["id"]
    page = await open_dashboard(browser, stack, f"#/jobs/{root}")
    await page.wait_for_selector("#tree:not([hidden]) .node")
    # The tree fills in as the children pages arrive: the root, the chain's first leaf, the group (or its leaves).
    await page.wait_for_function("document.querySelectorAll('#tree .node').length >= 4", timeout=30_000)
    root_node = f'#tree .node[data-job-id="{root}"]'
    seen: set[int] = set()
    async with asyncio.timeout(120):
        while await page.get_attribute(root_node, "data-status") != "succeeded":
            seen.add(int(await page.get_attribute(root_node, "data-percent") or 0))
            if len(seen) == 3:
                await screenshot(page, "dashboard-workflow.png")
            await asyncio.sleep(0.1)
    assert len({p for p in seen if 0 < p < 100}) >= 2, f"the roll-up did not move live: {sorted(seen)}"
    statuses = await page.eval_on_selector_all("#tree .node", "(ns) => ns.map((n) => n.dataset.status)")
    assert set(statuses) == {"succeeded"}
    # A child's page links back to its workflow.
    child = await page.get_attribute("#tree ul ul .node", "data-job-id")
    await page.goto(f"{stack.url}/dashboard#/jobs/{child}")
    await page.wait_for_selector(f'#facts a[href="#/jobs/{root}"]')
    assert page.errors == []  # type: ignore[attr-defined]


async def test_delete_dead_letters_by_filter(stack: Stack, browser: Browser) -> None:
    doomed = [(await stack.submit({"steps": 2, "fail_times": 10}))["id"] for _ in range(3)]
    for job_id in doomed:
        await stack.until_status(job_id, {"failed"})
    page = await open_dashboard(browser, stack, "#/dead-letters?task=demo.steps")
    await page.wait_for_selector(".letter")
    assert await page.locator(".letter").count() == 3
    await page.click("#delete-all")
    await page.wait_for_selector("#letters .empty")
    assert "Deleted" in (await page.text_content("#state") or "")
    left = (await stack.http.get("/v1/dead-letters")).json()["items"]
    assert left == []
    for job_id in doomed:
        assert (await stack.job(job_id))["status"] == "failed"  # the jobs stay; only their letters go
    assert page.errors == []  # type: ignore[attr-defined]
