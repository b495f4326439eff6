"""Health, readiness (with a private Redis stopped and restarted), metrics, dashboard, OpenAPI."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gateway_support import DEV, error_of, gateway_of, serve, serve_seeded, submit, wait_subscribed
from prometheus_client.parser import text_string_to_metric_families

from longrun_common.events import JobError
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_gateway.app import create_app
from longrun_gateway.routes import dashboard
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may stop (never the shared one)."""
    server = RedisServer().start()
    yield server
    server.stop()


async def ready_within(client: httpx.AsyncClient, seconds: float) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            return response
        await asyncio.sleep(0.1)


async def test_healthz_and_readyz(lite_client: httpx.AsyncClient) -> None:
    assert (await lite_client.get("/healthz")).json() == {"status": "ok"}
    ready = await lite_client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}


async def test_readyz_names_redis_while_it_is_down_and_recovers(
    private_redis: RedisServer, sqlite_url: str, key_prefix: str
) -> None:
    settings = Settings(redis_url=private_redis.url, database_url=sqlite_url, key_prefix=key_prefix)
    async with serve_seeded(settings) as client:
        assert (await client.get("/readyz")).status_code == 200
        job = await submit(client)
        # A parked long-poll learns that the subscription broke and answers (from SQL) instead of hanging.
        poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=30&after_seq=1", headers=DEV))
        await wait_subscribed(client)
        private_redis.stop()
        answered = await asyncio.wait_for(poll, 10)
        assert answered.status_code == 200 and answered.json()["id"] == job["id"]
        down = await client.get("/readyz")
        assert down.status_code == 503
        body = down.json()
        assert body["status"] == "unavailable" and body["checks"]["database"] == "ok"
        assert body["checks"]["redis"].startswith("error: ")
        private_redis.start()  # same port
        assert (await ready_within(client, 10)).status_code == 200
        for _ in range(100):  # the shared listener reconnects on its own (capped backoff)
            if gateway_of(client).live.healthy:
                break
            await asyncio.sleep(0.05)
        assert gateway_of(client).live.healthy
        # The shared listener reconnected: long-polls are live again.
        poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=30&after_seq=1", headers=DEV))
        await wait_subscribed(client)
        Publisher(Keys(key_prefix)).publish(
            gateway_of(client).redis,
            EventSpec(job["id"], "status", JobStatus.FAILED, 1, error=JobError(type="x", message="y")),
        )
        assert (await asyncio.wait_for(poll, 5)).json()["status"] == "failed"


async def test_readyz_checks_a_broker_of_its_own_and_names_it_when_down(
    private_redis: RedisServer, sqlite_url: str, key_prefix: str
) -> None:
    broker = RedisServer().start()
    try:
        settings = Settings(redis_url=private_redis.url, broker_url=broker.url, database_url=sqlite_url,
                            key_prefix=key_prefix)
        async with serve(create_app(settings)) as client:
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
            broker.stop()  # the event bus still answers: only the broker is named
            down = await client.get("/readyz")
            assert down.status_code == 503
            checks = down.json()["checks"]
            assert checks["database"] == "ok" and checks["redis"] == "ok" and checks["broker"].startswith("error: ")
            broker.start()  # same port
            assert (await ready_within(client, 10)).status_code == 200
    finally:
        broker.stop()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


async def test_metrics(client: httpx.AsyncClient) -> None:
    job = await submit(client)
    other = await submit(client)
    await client.get(f"/v1/jobs/{job['id']}", headers=DEV)
    await client.get(f"/v1/jobs/{other['id']}", headers=DEV)
    await client.get("/no/such/route")
    for job_id in (job["id"], other["id"]):
        gateway_of(client).store.finish_if(
            job_id,
            1,
            JobStatus.FAILED,
            only_from=(JobStatus.QUEUED,),
            error=JobError(type="ValueError", message="x"),
            dead_letter=True,
        )
    response = await client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    found = samples(response.text)
    get_job = (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "200"))
    assert found[("longrun_gateway_requests_total", get_job)] == 2  # by template, never the raw path
    assert (
        found[("longrun_gateway_requests_total", (("method", "POST"), ("route", "/v1/jobs"), ("status", "202")))] == 2
    )
    assert (
        found[("longrun_gateway_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404")))] == 1
    )
    assert (
        found[("longrun_gateway_request_duration_seconds_count", (("method", "GET"), ("route", "/v1/jobs/{job_id}")))]
        == 2
    )
    assert found[("longrun_jobs_submitted_total", (("task", "demo.steps"),))] == 2
    assert found[("longrun_dead_letters", (("task", "demo.steps"),))] == 2
    assert 0 <= found[("longrun_dead_letter_oldest_age_seconds", (("task", "demo.steps"),))] < 60
    assert found[("longrun_dead_letters_scrape_ok", ())] == 1
    assert not any(job["id"] in str(key) for key in found)


async def test_dashboard(lite_client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    page = tmp_path / "dashboard.html"
    monkeypatch.setattr(dashboard, "DASHBOARD", page)
    missing = await lite_client.get("/dashboard")
    assert missing.status_code == 404 and error_of(missing)["code"] == "not_found"
    page.write_text("<script>const HUB = '{{HUB_URL}}'; // {{HUB_URL}}</script>", encoding="utf-8")
    served = await lite_client.get("/dashboard")  # no API key: the page asks for one
    assert served.status_code == 200 and served.headers["content-type"].startswith("text/html")
    assert served.text == "<script>const HUB = 'http://127.0.0.1:8001'; // http://127.0.0.1:8001</script>"


async def test_openapi_documents_the_api(lite_client: httpx.AsyncClient) -> None:
    spec = (await lite_client.get("/openapi.json")).json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/files", "/v1/dead-letters/requeue", "/readyz"} <= set(spec["paths"])
    body = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body["discriminator"]["propertyName"] == "task"  # typed per task from the catalog
    demo = spec["components"]["schemas"]["task.demo.steps.job"]
    assert demo["additionalProperties"] is False and "task" in demo["required"]


async def test_a_long_poll_that_outlives_an_outage_goes_back_to_events(
    private_redis: RedisServer, sqlite_url: str, key_prefix: str
) -> None:
    settings = Settings(redis_url=private_redis.url, database_url=sqlite_url, key_prefix=key_prefix)
    async with serve_seeded(settings) as client:
        job = await submit(client)  # SQL holds seq 0; the queued event (seq 1) lives only in Redis
        private_redis.stop()
        start = time.monotonic()
        poll = asyncio.create_task(client.get(f"/v1/jobs/{job['id']}?wait=20&after_seq=0", headers=DEV))
        await asyncio.sleep(0.5)  # parked on the SQL fallback
        assert not poll.done()
        private_redis.start()  # empty: the restart lost the job's hash
        await wait_subscribed(client)  # the poll re-subscribed on its own
        Publisher(Keys(key_prefix)).publish(
            gateway_of(client).redis, EventSpec(job["id"], "status", JobStatus.CANCELLED, 1)
        )
        view = (await asyncio.wait_for(poll, 5)).json()
        assert view["status"] == "cancelled" and time.monotonic() - start < 10
