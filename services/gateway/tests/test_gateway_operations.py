"""Operations views for dashboards: queues, workers, the job list's queue and time filters, the page's files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import httpx
import pytest
from gateway_support import ACME, DEV, error_of, gateway_of, submit

from longrun_common.states import JobStatus

pytestmark = pytest.mark.integration


async def test_queues_count_only_the_callers_jobs(client: httpx.AsyncClient) -> None:
    a = await submit(client)
    await submit(client, queue="high")
    await submit(client, queue="high")
    await submit(client, headers=ACME, queue="low")
    gateway_of(client).store.begin_attempt(a["id"], 1, "w1@host")  # one of dev's default jobs runs
    response = await client.get("/v1/queues", headers=DEV)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["next_cursor"] is None
    queues = {q["name"]: q for q in body["items"]}
    assert set(queues) == {"default", "high"}  # acme's `low` queue is not dev's business
    assert queues["default"] | {"oldest_wait_seconds": None} == {
        "name": "default", "queued": 0, "running": 1, "retrying": 0, "oldest_wait_seconds": None}
    assert queues["high"]["queued"] == 2 and queues["high"]["running"] == 0
    assert 0 <= queues["high"]["oldest_wait_seconds"] < 60
    acme = {q["name"]: q for q in (await client.get("/v1/queues", headers=ACME)).json()["items"]}
    assert acme["low"]["queued"] == 1 and acme["default"]["queued"] == 0


async def test_workers_are_the_live_presence_keys(client: httpx.AsyncClient) -> None:
    gateway = gateway_of(client)
    job = await submit(client)
    gateway.store.begin_attempt(job["id"], 1, "w1@host")
    gateway.redis.set(gateway.keys.worker("w1@host"), "1", px=10_000)
    gateway.redis.set(gateway.keys.worker("w2@host"), "1", px=10_000)
    body = (await client.get("/v1/workers", headers=DEV)).json()
    assert body == {"items": [{"hostname": "w1@host", "running": 1}, {"hostname": "w2@host", "running": 0}],
                    "next_cursor": None}
    acme = (await client.get("/v1/workers", headers=ACME)).json()["items"]
    assert [w["running"] for w in acme] == [0, 0]  # acme sees the workers, not dev's work on them
    gateway.redis.delete(gateway.keys.worker("w2@host"))
    assert [w["hostname"] for w in (await client.get("/v1/workers", headers=DEV)).json()["items"]] == ["w1@host"]
    assert (await client.get("/v1/workers")).status_code == 401


async def test_list_by_queue_and_creation_time(client: httpx.AsyncClient) -> None:
    old = await submit(client, queue="high")
    cut = datetime.now(UTC)
    new = await submit(client)
    await submit(client, headers=ACME, queue="high")

    async def ids(query: dict[str, str]) -> list[str]:
        response = await client.get("/v1/jobs", params=query, headers=DEV)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["items"]]

    assert await ids({"queue": "high"}) == [old["id"]]
    assert await ids({"created_after": cut.isoformat()}) == [new["id"]]
    assert await ids({"created_before": cut.isoformat()}) == [old["id"]]
    # A time without a zone is UTC; another zone is converted.
    assert await ids({"created_after": cut.replace(tzinfo=None).isoformat()}) == [new["id"]]
    shifted = cut.astimezone(timezone(timedelta(hours=2))).isoformat()
    assert await ids({"created_after": shifted}) == [new["id"]]
    assert await ids({"created_after": cut.isoformat(), "queue": "high"}) == []
    assert await ids({"queue": "", "status": JobStatus.QUEUED.value}) == [new["id"], old["id"]]
    response = await client.get("/v1/jobs", params={"created_after": "yesterday"}, headers=DEV)
    assert response.status_code == 422 and "created_after" in error_of(response)["message"]


async def test_dashboard_page_and_files(client: httpx.AsyncClient) -> None:
    page = await client.get("/dashboard")
    assert page.status_code == 200 and "{{HUB_URL}}" not in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name, kind in (("main.js", "text/javascript"), ("app.css", "text/css")):
        response = await client.get(f"/dashboard/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"].startswith(kind)
    for bad in ("nothing.js", "..%2Fdashboard.html", "main.py", "MAIN.JS"):
        assert (await client.get(f"/dashboard/static/{bad}")).status_code == 404, bad
