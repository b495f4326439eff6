"""Dead letters: list with filters and pages, inspect, requeue one or many, delete one or by filter; all
tenant-scoped."""

from __future__ import annotations

from datetime import UTC, datetime

import httpx
import pytest
import redis
from gateway_support import ACME, DEV, error_of, gateway_of, submit
from sqlmodel import Session, select

from longrun_common.events import JobError
from longrun_common.models import DeadLetter
from longrun_common.states import JobStatus
from tests.support.jobs import waiting_job_ids

pytestmark = pytest.mark.integration


async def fail(
    client: httpx.AsyncClient, error_type: str = "ValueError", headers: dict[str, str] = DEV, **body: object
) -> str:
    """A job that exhausted its attempts: failed, with a dead letter (as the worker leaves it)."""
    job = await submit(client, headers=headers, **body)
    store = gateway_of(client).store
    assert store.begin_attempt(job["id"], 1, "w1@host")
    ended = store.finish_if(
        job["id"],
        1,
        JobStatus.FAILED,
        only_from=(JobStatus.RUNNING,),
        error=JobError(type=error_type, message=f"{error_type} happened", traceback="Traceback: secret"),
        dead_letter=True,
    )
    assert ended
    return str(job["id"])


async def letters(client: httpx.AsyncClient, query: str = "", headers: dict[str, str] = DEV) -> dict[str, object]:
    response = await client.get(f"/v1/dead-letters{query}", headers=headers)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


async def test_list_filter_and_paginate(client: httpx.AsyncClient) -> None:
    a = await fail(client, "ValueError")
    b = await fail(client, "TimeoutError")
    c = await fail(client, "ValueError", task="reports.build", args={})
    await fail(client, "ValueError", headers=ACME)
    body = await letters(client)
    items = body["items"]
    assert isinstance(items, list) and body["next_cursor"] is None
    assert [i["job_id"] for i in items] == [c, b, a]  # newest failure first
    first = items[0]
    assert set(first) == {"id", "job_id", "task", "error", "attempts", "failed_at", "job"}
    assert first["task"] == "reports.build" and first["attempts"] == 1 and first["failed_at"].endswith("Z")
    assert first["error"] == {"type": "ValueError", "message": "ValueError happened", "retryable": False}
    assert first["job"]["id"] == c and first["job"]["status"] == "failed" and "stream" in first["job"]
    only_values = await letters(client, "?error_type=ValueError")
    assert [i["job_id"] for i in only_values["items"]] == [c, a]  # type: ignore[index]
    only_demo = await letters(client, "?task=demo.steps&error_type=TimeoutError")
    assert [i["job_id"] for i in only_demo["items"]] == [b]  # type: ignore[index]
    page1 = await letters(client, "?limit=2")
    page2 = await letters(client, f"?limit=2&cursor={page1['next_cursor']}")
    assert [i["job_id"] for i in page1["items"] + page2["items"]] == [c, b, a]  # type: ignore[operator]
    assert page2["next_cursor"] is None


async def test_get_and_tenant_isolation(client: httpx.AsyncClient) -> None:
    await fail(client)
    [letter] = (await letters(client))["items"]  # type: ignore[misc]
    got = await client.get(f"/v1/dead-letters/{letter['id']}", headers=DEV)
    assert got.status_code == 200 and got.json()["job_id"] == letter["job_id"]
    full = got.json()
    assert full["traceback"] == "Traceback: secret" and full["job"]["args"] == {"steps": 5}
    [attempt] = full["history"]
    assert attempt["attempt"] == 1 and attempt["status"] == "failed" and attempt["worker"] == "w1@host"
    assert attempt["error"]["type"] == "ValueError" and attempt["finished_at"].endswith("Z")
    assert (await letters(client, headers=ACME))["items"] == []
    for method, suffix in [("GET", ""), ("POST", "/requeue"), ("DELETE", "")]:
        response = await client.request(method, f"/v1/dead-letters/{letter['id']}{suffix}", headers=ACME)
        assert response.status_code == 404 and error_of(response)["code"] == "not_found"
    bulk = await client.post("/v1/dead-letters/requeue", json={}, headers=ACME)
    assert bulk.json() == {"requeued": []}
    assert len((await letters(client))["items"]) == 1  # type: ignore[arg-type]  # still there for its owner


async def test_requeue_one(client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str) -> None:
    job_id = await fail(client)
    [letter] = (await letters(client))["items"]  # type: ignore[misc]
    before = len(waiting_job_ids(redis_client, key_prefix))
    response = await client.post(f"/v1/dead-letters/{letter['id']}/requeue", headers=DEV)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["id"] == job_id and job["status"] == "queued" and job["attempt"] == 2
    assert job["max_attempts"] == 5 and job["error"] is None  # a fresh budget of the policy's 4 attempts
    assert len(waiting_job_ids(redis_client, key_prefix)) == before + 1  # a new message for attempt 2
    assert (await client.get(f"/v1/dead-letters/{letter['id']}", headers=DEV)).status_code == 404
    again = await client.post(f"/v1/dead-letters/{letter['id']}/requeue", headers=DEV)
    assert again.status_code == 404


async def test_bulk_requeue_by_filter(client: httpx.AsyncClient) -> None:
    a = await fail(client, "ValueError")
    await fail(client, "TimeoutError")
    c = await fail(client, "ValueError")
    response = await client.post("/v1/dead-letters/requeue", json={"error_type": "ValueError", "limit": 1}, headers=DEV)
    assert response.status_code == 202 and response.json() == {"requeued": [a]}  # oldest first
    response = await client.post("/v1/dead-letters/requeue", json={"error_type": "ValueError"}, headers=DEV)
    assert response.json() == {"requeued": [c]}
    remaining = (await letters(client))["items"]
    assert [i["error"]["type"] for i in remaining] == ["TimeoutError"]  # type: ignore[index,union-attr]
    everything = await client.post("/v1/dead-letters/requeue", headers=DEV)  # no body: every dead letter
    assert len(everything.json()["requeued"]) == 1


async def test_bulk_requeue_validates_its_body(client: httpx.AsyncClient) -> None:
    for body, message in [
        ({"limit": 501}, "limit: Input should be less than or equal to 500"),
        ({"limit": 0}, "limit: Input should be greater than or equal to 1"),
        ({"status": "failed"}, "status: Extra inputs are not permitted"),
        ({"task": 3}, "task: Input should be a valid string"),
    ]:
        response = await client.post("/v1/dead-letters/requeue", json=body, headers=DEV)
        assert response.status_code == 422 and error_of(response)["message"] == message, body


async def test_delete(client: httpx.AsyncClient) -> None:
    job_id = await fail(client)
    [letter] = (await letters(client))["items"]  # type: ignore[misc]
    response = await client.delete(f"/v1/dead-letters/{letter['id']}", headers=DEV)
    assert response.status_code == 204 and response.content == b""
    assert (await letters(client))["items"] == []
    assert (await client.delete(f"/v1/dead-letters/{letter['id']}", headers=DEV)).status_code == 404
    assert (await client.get(f"/v1/jobs/{job_id}", headers=DEV)).json()["status"] == "failed"  # job untouched


def _set_failed_at(client: httpx.AsyncClient, job_id: str, when: datetime) -> None:
    """Backdate a dead letter (the filter's time bounds are what is tested, not the clock)."""
    with Session(gateway_of(client).engine) as session:
        letter = session.exec(select(DeadLetter).where(DeadLetter.job_id == job_id)).one()
        letter.failed_at = when
        session.add(letter)
        session.commit()


async def test_delete_by_filter(client: httpx.AsyncClient) -> None:
    old = await fail(client, "ValueError")
    mid = await fail(client, "ValueError")
    new = await fail(client, "ValueError")
    other = await fail(client, "TimeoutError")
    foreign = await fail(client, "ValueError", headers=ACME)
    for job_id, day in ((old, 1), (mid, 2), (new, 3), (other, 2), (foreign, 2)):
        _set_failed_at(client, job_id, datetime(2026, 1, day, 12, tzinfo=UTC))
    window = "since=2026-01-02T00:00:00Z&until=2026-01-03T00:00:00%2B00:00"
    listed = await letters(client, f"?{window}&error_type=ValueError")
    assert [i["job_id"] for i in listed["items"]] == [mid]  # type: ignore[union-attr,index]

    response = await client.delete(f"/v1/dead-letters?task=demo.steps&error_type=ValueError&{window}", headers=DEV)
    assert response.status_code == 200 and response.json() == {"deleted": 1}
    remaining = {i["job_id"] for i in (await letters(client))["items"]}  # type: ignore[union-attr,index]
    assert remaining == {old, new, other}
    assert {i["job_id"] for i in (await letters(client, headers=ACME))["items"]} == {foreign}  # type: ignore

    bounded = await client.delete("/v1/dead-letters?error_type=ValueError&limit=1", headers=DEV)
    assert bounded.json() == {"deleted": 1}  # the oldest
    remaining = {i["job_id"] for i in (await letters(client))["items"]}  # type: ignore[union-attr,index]
    assert remaining == {new, other}
    # Empty values mean "no filter"; the job itself stays failed.
    everything = await client.delete("/v1/dead-letters?task=&error_type=&since=&until=", headers=DEV)
    assert everything.json() == {"deleted": 2} and (await letters(client))["items"] == []
    assert (await client.get(f"/v1/jobs/{new}", headers=DEV)).json()["status"] == "failed"
    assert (await client.delete("/v1/dead-letters", headers=DEV)).json() == {"deleted": 0}
    assert {i["job_id"] for i in (await letters(client, headers=ACME))["items"]} == {foreign}  # type: ignore


async def test_requeue_by_time_window(client: httpx.AsyncClient) -> None:
    old = await fail(client)
    new = await fail(client)
    _set_failed_at(client, old, datetime(2026, 1, 1, tzinfo=UTC))
    _set_failed_at(client, new, datetime(2026, 1, 5, tzinfo=UTC))
    response = await client.post("/v1/dead-letters/requeue", json={"until": "2026-01-02T00:00:00"}, headers=DEV)
    assert response.status_code == 202 and response.json() == {"requeued": [old]}
    response = await client.post("/v1/dead-letters/requeue", json={"since": "2026-01-04"}, headers=DEV)
    assert response.json() == {"requeued": [new]}


@pytest.mark.parametrize(("query", "message"), [
    ("since=yesterday", "since: must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z"),
    ("since=2026-01-02&until=2026-01-01", "until: must be after since (2026-01-02T00:00:00+00:00)"),
    ("limit=501", "limit: Input should be less than or equal to 500"),
    ("limit=0", "limit: Input should be greater than or equal to 1"),
])
async def test_delete_by_filter_validates(lite_client: httpx.AsyncClient, query: str, message: str) -> None:
    response = await lite_client.delete(f"/v1/dead-letters?{query}", headers=DEV)
    assert response.status_code == 422 and error_of(response)["message"] == message
    body = dict(part.split("=") for part in query.split("&"))
    if "limit" not in body:  # the requeue body takes the same filter and says the same
        response = await lite_client.post("/v1/dead-letters/requeue", json=body, headers=DEV)
        assert response.status_code == 422 and error_of(response)["message"] == message


async def test_list_by_job_id(client: httpx.AsyncClient) -> None:
    """A job page finds the dead letter of its job (and only the caller's)."""
    a = await fail(client)
    await fail(client)
    assert [i["job_id"] for i in (await letters(client, f"?job_id={a}"))["items"]] == [a]  # type: ignore[index]
    assert (await letters(client, f"?job_id={a}", headers=ACME))["items"] == []
    assert (await letters(client, "?job_id=not-a-job"))["items"] == []
    response = await client.get("/v1/dead-letters?job_id=" + "x" * 65, headers=DEV)
    assert response.status_code == 422 and "job_id" in error_of(response)["message"]
