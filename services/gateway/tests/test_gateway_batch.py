"""`POST /v1/jobs:batch`: many jobs in one request and one transaction, all or nothing (SQLite and PostgreSQL)."""

from __future__ import annotations

import httpx
import pytest
import redis
from gateway_support import DEV, error_of, seed_catalog, serve
from sqlalchemy import Engine, func
from sqlmodel import Session, select

from longrun_common.db import create_db_engine
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from longrun_gateway.batch import MAX_BATCH
from tests.support.jobs import waiting_job_ids
from tests.support.processes import free_port

pytestmark = pytest.mark.integration


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


async def test_batch_accepts_every_job_in_order(
    client: httpx.AsyncClient, engine: Engine, redis_client: redis.Redis, key_prefix: str
) -> None:
    body = {"jobs": [{"task": "demo.steps", "args": {"steps": n}} for n in (1, 2, 3)]
            + [{"task": "reports.build", "args": {}, "priority": 5}]}
    response = await client.post("/v1/jobs:batch", json=body, headers=DEV)
    assert response.status_code == 202, response.text
    items = response.json()["items"]
    assert [item["args"] for item in items] == [{"steps": 1}, {"steps": 2}, {"steps": 3}, {}]
    assert [item["queue"] for item in items] == ["default"] * 3 + ["low"]
    assert items[3]["priority"] == 5
    assert all(item["status"] == "queued" and item["seq"] == 1 and item["tenant"] == "dev" for item in items)
    assert len({item["id"] for item in items}) == 4
    assert _count(engine) == 4
    # Each body is what a GET of that job returns (the batch builds it from what it wrote, without a re-read).
    for item in items:
        got = (await client.get(f"/v1/jobs/{item['id']}", headers=DEV)).json()
        assert {k: got[k] for k in ("status", "seq", "attempt", "queue", "args", "created_at")} == {
            k: item[k] for k in ("status", "seq", "attempt", "queue", "args", "created_at")}
    assert set(waiting_job_ids(redis_client, key_prefix)) == {item["id"] for item in items[:3]}
    assert len(waiting_job_ids(redis_client, key_prefix, "low")) == 1


async def test_batch_is_all_or_nothing_and_names_each_problem_by_index(
    client: httpx.AsyncClient, engine: Engine, redis_client: redis.Redis, key_prefix: str
) -> None:
    body = {"jobs": [
        {"task": "demo.steps", "args": {"steps": 1}},
        {"task": "demo.steps", "args": {"steps": "many"}},
        {"task": "no.such.task", "args": {}},
        {"task": "demo.steps", "args": {"steps": 1}, "queue": "nowhere"},
        {"task": "demo.steps", "args": {"steps": 1}, "time_limit": 0.1},
    ]}
    response = await client.post("/v1/jobs:batch", json=body, headers=DEV)
    assert response.status_code == 422, response.text
    fields = [d["field"] for d in error_of(response)["details"]]
    assert fields == ["jobs[1].args.steps", "jobs[2].task", "jobs[3].queue", "jobs[4].time_limit"]
    assert "jobs[1].args.steps" in error_of(response)["message"]
    assert _count(engine) == 0 and waiting_job_ids(redis_client, key_prefix) == []


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"jobs": []}, "jobs"),
        ({}, "jobs"),
        ({"jobs": [{"task": "demo.steps", "args": {"steps": 1}, "priority": 12}]}, "jobs[0].priority"),
        ({"jobs": [{"task": "demo.steps"}, {"args": {}}]}, "jobs[1].task"),
        ({"jobs": [{"task": "demo.steps", "args": {"steps": 1}}], "extra": 1}, "extra"),
        ({"jobs": [{"task": "demo.steps", "args": {"steps": 1}}] * (MAX_BATCH + 1)}, "jobs"),
    ],
)
async def test_batch_shape_errors(lite_client: httpx.AsyncClient, body: dict[str, object], field: str) -> None:
    response = await lite_client.post("/v1/jobs:batch", json=body, headers=DEV)
    assert response.status_code == 422, response.text
    assert field in [d["field"] for d in error_of(response)["details"]]


async def test_batch_needs_auth_and_a_json_object(lite_client: httpx.AsyncClient) -> None:
    assert (await lite_client.post("/v1/jobs:batch", json={"jobs": []})).status_code == 401
    one = {"jobs": [{"task": "demo.steps", "args": {"steps": 1}}]}
    response = await lite_client.post("/v1/jobs:batch", json=one, headers={**DEV, "Idempotency-Key": "k1"})
    assert response.status_code == 422 and error_of(response)["details"][0]["field"] == "Idempotency-Key"
    response = await lite_client.post("/v1/jobs:batch", json=[{"task": "demo.steps"}], headers=DEV)
    assert response.status_code == 422 and error_of(response)["details"][0]["field"] == "body"


async def test_batch_of_the_maximum_size(
    client: httpx.AsyncClient, engine: Engine, redis_client: redis.Redis, key_prefix: str
) -> None:
    body = {"jobs": [{"task": "demo.steps", "args": {"steps": n + 1}} for n in range(MAX_BATCH)]}
    response = await client.post("/v1/jobs:batch", json=body, headers=DEV, timeout=120)
    assert response.status_code == 202, response.text
    assert len(response.json()["items"]) == MAX_BATCH
    assert _count(engine) == MAX_BATCH
    assert len(waiting_job_ids(redis_client, key_prefix)) == MAX_BATCH


async def test_batch_while_redis_is_down_is_accepted_into_sql(sqlite_url: str) -> None:
    """As a single submit: the rows are the record; the reconciler publishes and sends once Redis is back."""
    settings = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0", database_url=sqlite_url, key_prefix="down",
                        api_keys="dev:dev-key")
    engine = create_db_engine(settings)
    seed_catalog(engine)
    try:
        async with serve(create_app(settings)) as client:
            body = {"jobs": [{"task": "demo.steps", "args": {"steps": n}} for n in (1, 2, 3)]}
            response = await client.post("/v1/jobs:batch", json=body, headers=DEV)
            assert response.status_code == 202, response.text
            items = response.json()["items"]
            assert [(item["status"], item["seq"]) for item in items] == [("queued", 0)] * 3
            assert _count(engine) == 3
    finally:
        engine.dispose()
