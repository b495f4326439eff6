"""Submit, get, list, cancel, stream tokens and the catalog, on SQLite and PostgreSQL with a real Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import httpx
import pytest
import redis
from gateway_support import ACME, DEMO_SCHEMA, DEV, error_of, gateway_of, submit
from sqlalchemy import Engine
from sqlmodel import Session, col, delete, update

from longrun_common import tokens
from longrun_common.events import Progress
from longrun_common.keys import Keys
from longrun_common.models import Job, TaskRecord
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_gateway.lane import GroupLane
from tests.support.jobs import queued_messages

pytestmark = pytest.mark.integration

JOB_FIELDS = {
    "id",
    "task",
    "tenant",
    "queue",
    "status",
    "progress",
    "seq",
    "attempt",
    "max_attempts",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
    "updated_at",
    "stream",
}


async def test_submit_returns_202_location_and_the_job(
    client: httpx.AsyncClient, settings: Settings, engine: Engine, redis_client: redis.Redis, key_prefix: str
) -> None:
    response = await client.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 3}}, headers=DEV)
    assert response.status_code == 202
    job = response.json()
    assert response.headers["location"] == f"/v1/jobs/{job['id']}"
    assert set(job) >= JOB_FIELDS
    assert job["task"] == "demo.steps" and job["tenant"] == "dev" and job["status"] == "queued"
    assert job["queue"] == "default" and job["max_attempts"] == 4 and job["attempt"] == 1 and job["seq"] == 1
    assert job["args"] == {"steps": 3}
    stream = job["stream"]
    assert stream["ws_url"] == f"ws://127.0.0.1:8001/v1/ws/jobs/{job['id']}"
    assert stream["sse_url"] == f"http://127.0.0.1:8001/v1/jobs/{job['id']}/events"
    assert tokens.verify(settings.token_secret, stream["token"]) == tokens.StreamScope("dev", job["id"])
    with Session(engine) as session:  # the row carries the policy's defaults
        row = session.get(Job, job["id"])
        assert row is not None and (row.soft_time_limit, row.time_limit) == (300, 600)
    # The Celery message reached the Redis queue, by task name, carrying only the id and the attempt.
    [message] = queued_messages(redis_client, key_prefix)
    headers = message["headers"]
    assert isinstance(headers, dict)
    assert headers["task"] == "demo.steps" and headers["id"] == f"{job['id']}.1"
    assert headers["timelimit"] == [600, 300]
    args, kwargs, _ = json.loads(base64.b64decode(str(message["body"])))
    assert args == [] and kwargs == {"job_id": job["id"], "attempt": 1}


async def test_queue_priority_and_limits(client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str) -> None:
    report = await submit(client, task="reports.build", args={})
    assert report["queue"] == "low" and report["max_attempts"] == 1  # from the task's policy
    assert len(queued_messages(redis_client, key_prefix, "low")) == 1
    job = await submit(client, queue="high", priority=7, soft_time_limit=10, time_limit=20.5)
    assert job["queue"] == "high" and job["priority"] == 7
    [message] = queued_messages(redis_client, key_prefix, "high")
    assert message["properties"]["priority"] == 9 - 7  # type: ignore[index]  # kombu on Redis serves 0 first
    assert message["headers"]["timelimit"] == [20.5, 10]  # type: ignore[index]


async def test_get_overlays_live_progress(
    client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str
) -> None:
    job = await submit(client)
    Publisher(Keys(key_prefix)).publish(
        redis_client,
        EventSpec(
            job["id"],
            "progress",
            JobStatus.RUNNING,
            1,
            progress=Progress(percent=40, current=2, total=5, message="two", meta={"file": "a.csv", "n": [1]}),
        ),
    )
    view = (await client.get(f"/v1/jobs/{job['id']}", headers=DEV)).json()
    assert view["status"] == "running" and view["seq"] == 2
    assert view["progress"] == {"percent": 40, "current": 2, "total": 5, "message": "two",
                                "meta": {"file": "a.csv", "n": [1]}}
    assert view["stream"]["ws_url"].endswith(job["id"])


async def test_list_is_newest_first_and_paginates(client: httpx.AsyncClient) -> None:
    created = [(await submit(client, args={"steps": i + 1}))["id"] for i in range(7)]
    other = await submit(client, task="reports.build", args={})
    await submit(client, headers=ACME)  # another tenant's job never shows up
    seen, cursor, pages = [], None, 0
    while True:
        query = "limit=3" + (f"&cursor={cursor}" if cursor else "")
        body = (await client.get(f"/v1/jobs?{query}", headers=DEV)).json()
        assert set(body) == {"items", "next_cursor"}
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == [other["id"], *reversed(created)]
    by_task = (await client.get("/v1/jobs?task=demo.steps&limit=200", headers=DEV)).json()
    assert [item["id"] for item in by_task["items"]] == list(reversed(created)) and by_task["next_cursor"] is None
    default = (await client.get("/v1/jobs", headers=DEV)).json()
    assert len(default["items"]) == 8 and default["next_cursor"] is None


async def test_list_filters_by_status(client: httpx.AsyncClient) -> None:
    keep = await submit(client)
    gone = await submit(client)
    assert (await client.post(f"/v1/jobs/{gone['id']}/cancel", headers=DEV)).status_code == 202
    cancelled = (await client.get("/v1/jobs?status=cancelled", headers=DEV)).json()["items"]
    queued = (await client.get("/v1/jobs?status=queued", headers=DEV)).json()["items"]
    assert [j["id"] for j in cancelled] == [gone["id"]] and [j["id"] for j in queued] == [keep["id"]]
    # Empty values, as the README's `?status=&task=` or a blank form sends them, mean "no filter".
    unfiltered = await client.get("/v1/jobs?status=&task=", headers=DEV)
    assert unfiltered.status_code == 200, unfiltered.text
    assert {j["id"] for j in unfiltered.json()["items"]} == {keep["id"], gone["id"]}
    bad = await client.get("/v1/jobs?status=finished", headers=DEV)
    assert bad.status_code == 422 and error_of(bad)["details"][0]["field"] == "status"
    assert "succeeded" in error_of(bad)["message"]  # names the statuses it takes


async def test_cancel_a_queued_job(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    response = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=DEV)
    assert response.status_code == 202
    view = response.json()
    assert view["status"] == "cancelled" and view["cancel_requested"] is True
    assert view["error"]["type"] == "cancelled"
    again = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=DEV)  # idempotent on a terminal job
    assert again.status_code == 202 and again.json()["status"] == "cancelled"


async def test_tenants_never_see_each_other(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    missing = str(uuid.uuid4())
    for method, suffix in [("GET", ""), ("POST", "/cancel"), ("POST", "/stream-token"), ("GET", "?wait=0.1")]:
        foreign = await client.request(method, f"/v1/jobs/{job['id']}{suffix}", headers=ACME)
        absent = await client.request(method, f"/v1/jobs/{missing}{suffix}", headers=ACME)
        assert foreign.status_code == absent.status_code == 404, (suffix, foreign.text)
        foreign_error, absent_error = error_of(foreign), error_of(absent)
        assert foreign_error["message"].replace(job["id"], "X") == absent_error["message"].replace(missing, "X")
    assert (await client.get("/v1/jobs", headers=ACME)).json()["items"] == []
    assert (await client.get(f"/v1/jobs/{job['id']}", headers=DEV)).json()["status"] == "queued"  # untouched


async def test_stream_tokens(client: httpx.AsyncClient, settings: Settings) -> None:
    job = await submit(client)
    body = (await client.post(f"/v1/jobs/{job['id']}/stream-token", headers=DEV)).json()
    assert set(body) == {"token", "expires_at", "ws_url", "sse_url"}
    assert tokens.verify(settings.token_secret, body["token"]) == tokens.StreamScope("dev", job["id"])
    assert body["ws_url"].endswith(f"/v1/ws/jobs/{job['id']}") and body["expires_at"].endswith("Z")
    tenant = (await client.post("/v1/stream-token", headers=ACME)).json()
    assert set(tenant) == {"token", "expires_at", "ws_url"}
    assert tokens.verify(settings.token_secret, tenant["token"]) == tokens.StreamScope("acme", None)
    assert tenant["ws_url"] == "ws://127.0.0.1:8001/v1/ws"


async def test_catalog_comes_from_sql(client: httpx.AsyncClient) -> None:
    body = (await client.get("/v1/tasks", headers=DEV)).json()
    assert [t["name"] for t in body["tasks"]] == ["demo.steps", "reports.build"]
    demo = body["tasks"][0]
    assert set(demo) == {"name", "description", "args_schema", "policy"}
    assert demo["args_schema"] == DEMO_SCHEMA and demo["description"] == "Count to `steps`."
    assert demo["policy"]["max_attempts"] == 4 and demo["policy"]["max_time_limit"] == 3600
    assert demo["policy"]["queue"] == "default"


async def test_empty_catalog_says_so(client: httpx.AsyncClient) -> None:
    with Session(gateway_of(client).engine) as session:  # all workers gone and their rows cleared
        session.execute(delete(TaskRecord))
        session.commit()
    assert (await client.get("/v1/tasks", headers=DEV)).json() == {"tasks": []}
    response = await client.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 1}}, headers=DEV)
    # Not "no such task": on a fresh deployment the workers have not registered yet; the client retries.
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    error = error_of(response)
    assert error["code"] == "unavailable" and error["details"] == {"dependency": "catalog", "task": "demo.steps"}
    assert "no worker has registered its tasks yet" in error["message"]


async def test_submit_takes_one_hop_to_the_submit_lane(
    lite_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Auth, the rate limit and the body run on the event loop; only the SQL/Redis work hops, to the submit lane
    (never to the shared thread pool)."""
    hops: list[str] = []
    run_sync = anyio.to_thread.run_sync

    async def counted(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        hops.append(getattr(func, "__qualname__", repr(func)))
        return await run_sync(func, *args, **kwargs)

    lane = gateway_of(lite_client).submits
    run_in_lane = lane.run

    async def counted_lane(call: Any) -> Any:
        hops.append("lane")
        return await run_in_lane(call)

    monkeypatch.setattr(anyio.to_thread, "run_sync", counted)
    monkeypatch.setattr(lane, "run", counted_lane)
    await submit(lite_client)
    assert hops == ["lane"]


async def test_submit_lane_groups_what_waits_and_answers_each_caller() -> None:
    """Items arriving while the lane's threads are busy wait, and the next free thread takes all of them as one
    group (at most `max_group`); at most `threads` groups run at once; each caller gets its own item's outcome,
    an exception included, and a handler that fails as a whole fails every caller of its group."""
    running, most, groups = [0], [0], []
    guard = threading.Lock()

    def handle(items: Sequence[int]) -> list[int | Exception]:
        with guard:
            running[0] += 1
            most[0] = max(most[0], running[0])
            groups.append(list(items))
        time.sleep(0.05)
        with guard:
            running[0] -= 1
        if -1 in items:
            raise RuntimeError("the whole group failed")
        return [ValueError(f"bad {item}") if item % 10 == 7 else item * 2 for item in items]

    lane: GroupLane[int, int] = GroupLane(handle, threads=2, max_group=5)
    try:
        first = asyncio.gather(*(lane.run(i) for i in range(2)))
        await asyncio.sleep(0.02)  # both threads busy: the rest queue up behind them
        results = await asyncio.gather(first, *(lane.run(i) for i in range(2, 30)), return_exceptions=True)
        failed = await asyncio.gather(lane.run(-1), return_exceptions=True)
    finally:
        lane.close()
    assert most == [2]
    assert max(len(group) for group in groups) == 5  # grouped, and never more than max_group
    assert sorted(item for group in groups for item in group) == [-1, *range(30)]
    assert results[0] == [0, 2]
    for index, outcome in enumerate(results[1:], start=2):
        if index % 10 == 7:
            assert isinstance(outcome, ValueError) and str(outcome) == f"bad {index}"
        else:
            assert outcome == index * 2
    assert isinstance(failed[0], RuntimeError)


def _set_max_steps(engine: Engine, maximum: int) -> None:
    """A redeployed worker rewrites its catalog row: here, a new bound on `steps`."""
    steps = {"type": "integer", "maximum": maximum}
    schema = {**DEMO_SCHEMA, "properties": {**DEMO_SCHEMA["properties"], "steps": steps}}
    with Session(engine) as session:
        session.execute(update(TaskRecord).where(col(TaskRecord.name) == "demo.steps").values(args_schema=schema))
        session.commit()


async def test_catalog_is_cached_for_its_ttl(client: httpx.AsyncClient, engine: Engine) -> None:
    async def steps_accepted(steps: int) -> bool:
        body = {"task": "demo.steps", "args": {"steps": steps}}
        response = await client.post("/v1/jobs", json=body, headers=DEV)
        assert response.status_code in (202, 422), response.text
        return response.status_code == 202

    catalog = gateway_of(client).catalog
    assert catalog.ttl == 5.0
    assert await steps_accepted(50)
    _set_max_steps(engine, 10)
    assert await steps_accepted(50)  # still the cached row
    catalog.clear()
    assert not await steps_accepted(50)  # SQL read again: the new schema applies
    catalog.ttl = 0.2
    catalog.clear()
    assert not await steps_accepted(50)
    _set_max_steps(engine, 100)
    await asyncio.sleep(0.3)
    assert await steps_accepted(50)  # the cached row expired
    catalog.ttl = 0  # no caching at all
    _set_max_steps(engine, 10)
    assert not await steps_accepted(50)


async def test_pages_are_exact_when_timestamps_tie(client: httpx.AsyncClient) -> None:
    ids = [(await submit(client))["id"] for _ in range(5)]
    with Session(gateway_of(client).engine) as session:  # same instant for all: only the id orders them
        session.execute(update(Job).values(created_at=datetime(2026, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)))
        session.commit()
    seen, cursor = [], None
    for _ in range(5):
        query = "limit=2" + (f"&cursor={cursor}" if cursor else "")
        body = (await client.get(f"/v1/jobs?{query}", headers=DEV)).json()
        seen += [item["id"] for item in body["items"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
