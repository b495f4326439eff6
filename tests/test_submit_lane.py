"""The submit lane (longrun_gateway/lane.py) against a real uvicorn gateway: concurrent `POST /v1/jobs` are committed
in groups, and each request still gets its own answer: its own job, its own 422, the database's 503, or the first
job of its Idempotency-Key."""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest
import redis
from sqlalchemy import Engine, func, select
from sqlmodel import Session

import longrun_worker.tasks  # noqa: F401  (registers the built-in tasks, as a worker does)
from longrun_common.models import Job
from longrun_worker.catalog import register_catalog
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import waiting_job_ids

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer dev-key"}
BURST = 200


@pytest.fixture
def gateway_url(services: ServiceFactory, engine: Engine) -> str:
    register_catalog(engine)
    return services("gateway").url


async def post_all(url: str, bodies: list[dict[str, Any]],
                   keys: list[str | None] | None = None) -> list[httpx.Response]:
    """Every body posted at once, each on its own connection (a burst of clients, not one client's sequence)."""
    keys = keys or [None] * len(bodies)
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        return list(await asyncio.gather(*[
            client.post("/v1/jobs", json=body, headers={**AUTH, **({"Idempotency-Key": key} if key else {})})
            for body, key in zip(bodies, keys, strict=True)]))


def job_rows(engine: Engine) -> list[Job]:
    with Session(engine) as session:
        return list(session.exec(select(Job)).scalars())  # type: ignore[call-overload]


def published_job_hashes(client: redis.Redis[bytes], prefix: str) -> set[str]:
    """Jobs whose `queued` event reached Redis (each has a hash `{prefix}:job:{id}`)."""
    return {name.decode().split(":")[2] for name in client.scan_iter(match=f"{prefix}:job:*")
            if name.decode().count(":") == 2}


def test_a_burst_of_submits_commits_each_job_once(gateway_url: str, engine: Engine, redis_client: redis.Redis[bytes],
                                                  key_prefix: str) -> None:
    bodies = [{"task": "demo.steps", "args": {"steps": 1 + i}} for i in range(BURST)]
    responses = asyncio.run(post_all(gateway_url, bodies))

    assert [r.status_code for r in responses] == [202] * BURST, [r.text for r in responses if r.status_code != 202]
    views = [r.json() for r in responses]
    # Each request is answered with its own job: the one built from its own body.
    assert [v["args"]["steps"] for v in views] == [1 + i for i in range(BURST)]
    ids = [v["id"] for v in views]
    assert len(set(ids)) == BURST
    assert all(v["status"] == "queued" and v["stream"]["token"] and v["seq"] >= 1 for v in views), views[0]
    assert [r.headers["Location"] for r in responses] == [f"/v1/jobs/{i}" for i in ids]

    rows = job_rows(engine)
    assert sorted(row.id for row in rows) == sorted(ids)  # every row once, nothing else
    assert {row.id: row.args["steps"] for row in rows} == {v["id"]: v["args"]["steps"] for v in views}
    # Exactly one message (or fair-scheduler hold) per job, and every job marked as dispatched.
    waiting = collections.Counter(waiting_job_ids(redis_client, key_prefix))
    assert waiting == dict.fromkeys(ids, 1)
    marks = redis_client.pipeline(transaction=False)
    for job_id in ids:
        marks.hget(f"{key_prefix}:job:{job_id}", "dispatched")
    assert marks.execute() == [b"1"] * BURST


def test_a_bad_request_in_a_burst_fails_alone(gateway_url: str, engine: Engine, redis_client: redis.Redis[bytes],
                                              key_prefix: str) -> None:
    bodies: list[dict[str, Any]] = [{"task": "demo.steps", "args": {"steps": 1 + i}} for i in range(100)]
    bodies[40] = {"task": "no.such.task", "args": {}}
    bodies[60] = {"task": "demo.steps", "args": {"steps": "many"}}
    bodies[80] = {"task": "demo.steps", "args": {"steps": 1}, "time_limit": 0.01}
    bodies[90] = {"task": "demo.steps", "args": {"steps": 1}, "delay": 3600}  # valid: held in SQL until then
    responses = asyncio.run(post_all(gateway_url, bodies))

    failed = {i: r.json() for i, r in enumerate(responses) if r.status_code != 202}
    assert set(failed) == {40, 60, 80}, failed
    assert all(responses[i].status_code == 422 for i in failed)
    assert "unknown task 'no.such.task'" in failed[40]["error"]["message"]
    assert failed[60]["error"]["details"][0]["field"] == "args.steps", failed[60]
    assert failed[80]["error"]["details"][0]["field"] == "time_limit", failed[80]

    accepted = {responses[i].json()["id"] for i in range(100) if i not in failed}
    assert {row.id for row in job_rows(engine)} == accepted
    delayed = responses[90].json()
    assert delayed["queued_reason"] == "delayed", delayed
    assert collections.Counter(waiting_job_ids(redis_client, key_prefix)) == dict.fromkeys(
        accepted - {delayed["id"]}, 1)


@contextlib.contextmanager
def jobs_table_locked(database_url: str) -> Iterator[None]:
    """The `jobs` table held under an exclusive lock by another session (a stuck migration, a long transaction)."""
    with psycopg.connect(database_url) as conn:
        conn.execute("LOCK TABLE jobs IN ACCESS EXCLUSIVE MODE")
        yield
        conn.rollback()


@pytest.fixture
def lock_timeout(database_url: str) -> Iterator[None]:
    """Connections opened from now on give up waiting for a lock after 300 ms (PostgreSQL's lock_timeout)."""
    name = database_url.rsplit("/", 1)[1]
    with psycopg.connect(database_url, autocommit=True) as conn:
        conn.execute(f'ALTER DATABASE "{name}" SET lock_timeout = 300')
    try:
        yield
    finally:
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(f'ALTER DATABASE "{name}" RESET lock_timeout')


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_a_failed_group_transaction_fails_each_request_and_publishes_nothing(
        lock_timeout: None, database_url: str, gateway_url: str, engine: Engine, redis_client: redis.Redis[bytes],
        key_prefix: str) -> None:
    bodies = [{"task": "demo.steps", "args": {"steps": 1 + i}} for i in range(50)]
    asyncio.run(post_all(gateway_url, bodies[:1]))  # the catalog is read (and cached) before the table is locked
    with jobs_table_locked(database_url):
        responses = asyncio.run(post_all(gateway_url, bodies))
    assert [r.status_code for r in responses] == [503] * 50, [r.text for r in responses]
    assert all(r.json()["error"]["details"] == {"dependency": "database"} for r in responses)
    assert all(r.headers["Retry-After"] == "1" for r in responses)
    assert len(job_rows(engine)) == 1  # the first job only
    # Nothing of the failed groups reached Redis: no event, no message, no fair-scheduler hold.
    (first,) = published_job_hashes(redis_client, key_prefix)
    assert waiting_job_ids(redis_client, key_prefix) == [first]

    # The lane keeps working once the database does.
    again = asyncio.run(post_all(gateway_url, bodies))
    assert [r.status_code for r in again] == [202] * 50
    assert len(job_rows(engine)) == 51


def test_idempotency_key_replays_under_concurrency_return_one_job(gateway_url: str, engine: Engine) -> None:
    body = {"task": "demo.steps", "args": {"steps": 7}}
    others = [{"task": "demo.steps", "args": {"steps": 1 + i}} for i in range(30)]
    # The keyed requests race each other and share their groups with unkeyed submits.
    bodies = [body] * 20 + others
    keys: list[str | None] = ["same-key"] * 20 + [None] * 30
    responses = asyncio.run(post_all(gateway_url, bodies, keys))

    keyed = responses[:20]
    assert sorted(r.status_code for r in keyed) == [200] * 19 + [202], [r.text for r in keyed]
    assert len({r.json()["id"] for r in keyed}) == 1
    assert [r.status_code for r in responses[20:]] == [202] * 30
    with Session(engine) as session:
        assert session.execute(select(func.count()).select_from(Job)).scalar_one() == 31

    conflict = asyncio.run(post_all(gateway_url, [{"task": "demo.steps", "args": {"steps": 8}}], ["same-key"]))
    assert conflict[0].status_code == 409
