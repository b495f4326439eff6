"""The gateway as it is deployed: `python -m longrun_gateway` (migrations, then uvicorn) on a real port."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from gateway_support import DEV, seed_catalog
from sqlalchemy import Engine, inspect

from longrun_common.db import create_db_engine
from longrun_common.events import Progress
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_gateway import __main__ as entry
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import queued_messages, waiting_job_ids

pytestmark = pytest.mark.integration


# One backend as deployed (PostgreSQL) keeps this slow test single; every path also runs in-process on both.
@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
async def test_submit_get_list_long_poll_over_real_http(
    services: ServiceFactory, engine: Engine, redis_client: redis.Redis, key_prefix: str
) -> None:
    seed_catalog(engine)
    gateway = services("gateway")
    async with httpx.AsyncClient(base_url=gateway.url, headers=DEV, timeout=30) as client:
        ready = await client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"] == {"database": "ok", "redis": "ok"}
        submitted = await client.post("/v1/jobs", json={"task": "demo.steps", "args": {"steps": 4}})
        assert submitted.status_code == 202
        job = submitted.json()
        assert len(queued_messages(redis_client, key_prefix)) == 1
        got = await client.get(submitted.headers["location"])
        assert got.status_code == 200 and got.json()["id"] == job["id"] and got.json()["seq"] == 1
        listed = (await client.get("/v1/jobs?limit=1")).json()
        assert [item["id"] for item in listed["items"]] == [job["id"]] and listed["next_cursor"] is None
        start = time.monotonic()
        poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=1"))
        await asyncio.sleep(0.3)  # let the request park on its subscription
        assert not poll.done()
        Publisher(Keys(key_prefix)).publish(
            redis_client, EventSpec(job["id"], "progress", JobStatus.RUNNING, 1, progress=Progress(current=1, total=4))
        )
        polled: dict[str, Any] = (await asyncio.wait_for(poll, 5)).json()
        assert polled["seq"] == 2 and polled["status"] == "running" and time.monotonic() - start < 5
        metrics = (await client.get("/metrics")).text
        assert 'longrun_jobs_submitted_total{task="demo.steps"} 1.0' in metrics


def test_main_migrates_then_serves(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, redis_url: str) -> None:
    """`python -m longrun_gateway` brings a new database to the schema before it listens."""
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    for name, value in {
        "LONGRUN_DATABASE_URL": url,
        "LONGRUN_REDIS_URL": redis_url,
        "LONGRUN_GATEWAY_PORT": "8123",
        "LONGRUN_BIND_HOST": "0.0.0.0",
    }.items():
        monkeypatch.setenv(name, value)
    served: dict[str, Any] = {}

    def fake_run(app: object, **options: Any) -> None:
        engine = create_db_engine(Settings(database_url=url))
        served.update(options, tables=set(inspect(engine).get_table_names()), app=app)
        engine.dispose()

    monkeypatch.setattr(entry.uvicorn, "run", fake_run)
    entry.main([])
    assert served["host"] == "0.0.0.0" and served["port"] == 8123
    assert served["access_log"] is False  # errors only, unless asked for
    assert {"jobs", "tasks", "files", "dead_letters", "idempotency_keys"} <= served["tables"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)  # the backend is not what is tested here
async def test_workers_share_the_port_and_their_metrics(
    services: ServiceFactory, engine: Engine, redis_client: redis.Redis, key_prefix: str, tmp_path: Path
) -> None:
    """`--workers 2`: two processes serve; every scrape, whichever worker answers it, counts all of them."""
    seed_catalog(engine)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"left by an earlier run")  # emptied at start, never summed in
    gateway = services("gateway", "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)})
    body = {"task": "demo.steps", "args": {"steps": 1}}

    async def submit_on_new_connection() -> int:
        async with httpx.AsyncClient(base_url=gateway.url, headers=DEV, timeout=30) as client:
            return (await client.post("/v1/jobs", json=body)).status_code

    submitted = 0
    while len(list(metrics_dir.glob("counter_*.db"))) < 2:  # a file per worker process, once it counted something
        assert submitted < 200, "every request went to one worker"
        assert await asyncio.gather(*(submit_on_new_connection() for _ in range(10))) == [202] * 10
        submitted += 10
    assert len(waiting_job_ids(redis_client, key_prefix)) == submitted
    for _ in range(6):  # new connections: the scrapes land on either worker
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as client:
            text = (await client.get("/metrics")).text
        assert f'longrun_jobs_submitted_total{{task="demo.steps"}} {submitted}.0' in text
        assert f'longrun_gateway_requests_total{{method="POST",route="/v1/jobs",status="202"}} {submitted}.0' in text
        assert "longrun_dead_letters_scrape_ok 1.0" in text
