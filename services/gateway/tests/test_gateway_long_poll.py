"""Long-poll: answers on a published event, at the deadline, at once when already past; seam-safe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis
from gateway_support import DEV, submit, wait_subscribed

from longrun_common.events import JobError, Progress
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.states import JobStatus
from longrun_gateway import views
from longrun_gateway.routes import jobs as job_routes

pytestmark = pytest.mark.integration


def progress(redis_client: redis.Redis, prefix: str, job_id: str, current: int) -> int:
    spec = EventSpec(job_id, "progress", JobStatus.RUNNING, 1, progress=Progress(current=current, total=10))
    return Publisher(Keys(prefix)).publish(redis_client, spec).seq


async def test_returns_as_soon_as_an_event_is_published(
    client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str
) -> None:
    job = await submit(client)
    start = time.monotonic()
    poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=1", headers=DEV))
    await wait_subscribed(client)
    await asyncio.sleep(0.1)
    assert not poll.done()
    assert progress(redis_client, key_prefix, job["id"], 3) == 2
    response = await asyncio.wait_for(poll, 5)
    assert time.monotonic() - start < 3
    view = response.json()
    assert response.status_code == 200 and view["seq"] == 2 and view["progress"]["current"] == 3
    assert set(view["stream"]) == {"token", "ws_url", "sse_url"}
    await wait_subscribed(client, 0)  # the last waiter unsubscribed


async def test_times_out_with_the_current_job(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    start = time.monotonic()
    response = await client.get(f"/v1/jobs/{job['id']}?wait=0.6&after_seq=1", headers=DEV)
    elapsed = time.monotonic() - start
    assert response.status_code == 200 and response.json()["seq"] == 1
    assert 0.55 < elapsed < 2.5


async def test_answers_at_once_when_already_past(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    start = time.monotonic()
    response = await client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=0", headers=DEV)
    assert response.json()["seq"] == 1 and time.monotonic() - start < 1
    await client.post(f"/v1/jobs/{job['id']}/cancel", headers=DEV)
    start = time.monotonic()
    response = await client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=99", headers=DEV)
    assert response.json()["status"] == "cancelled" and time.monotonic() - start < 1


async def test_returns_on_a_terminal_event(
    client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str
) -> None:
    job = await submit(client)
    poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=50", headers=DEV))
    await wait_subscribed(client)
    Publisher(Keys(key_prefix)).publish(
        redis_client,
        EventSpec(job["id"], "status", JobStatus.FAILED, 1, error=JobError(type="ValueError", message="bad row")),
    )
    view = (await asyncio.wait_for(poll, 5)).json()
    assert view["status"] == "failed" and view["error"]["message"] == "bad row"


async def test_many_waiters_share_one_subscription(
    client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str
) -> None:
    first, second = await submit(client), await submit(client)
    polls = [
        asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=1", headers=DEV))
        for job in (first, first, first, second)
    ]
    await wait_subscribed(client, 2)  # four waiters, two channels
    progress(redis_client, key_prefix, first["id"], 1)
    _, pending = await asyncio.wait(polls[:3], timeout=5)
    assert not pending and not polls[3].done()  # the second job's waiter is still parked
    assert all(task.result().json()["seq"] == 2 for task in polls[:3])
    await wait_subscribed(client, 1)
    progress(redis_client, key_prefix, second["id"], 1)
    assert (await asyncio.wait_for(polls[3], 5)).json()["seq"] == 2
    await wait_subscribed(client, 0)


async def test_event_between_subscribe_and_snapshot_is_not_lost(
    client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The seam: an event published after the snapshot was read must still end the wait."""
    job = await submit(client)
    real = views.asnapshot
    calls = {"n": 0}

    async def stale_then_publish(gateway: Any, job_id: str) -> dict[str, Any] | None:
        snap = await real(gateway, job_id)
        calls["n"] += 1
        if calls["n"] == 1:  # the worker reports right after our read: we hold seq 1, Redis has seq 2
            progress(redis_client, key_prefix, job_id, 5)
        return snap

    monkeypatch.setattr(job_routes.views, "asnapshot", stale_then_publish)
    start = time.monotonic()
    response = await client.get(f"/v1/jobs/{job['id']}?wait=10&after_seq=1", headers=DEV)
    assert response.json()["seq"] == 2 and time.monotonic() - start < 3
