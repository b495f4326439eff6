"""Per-tenant limits and delayed jobs at the API: `rate=` overrides (429), `run_at` / `delay` (422s), and the
`queued_reason` / `run_at` fields of the job view."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from gateway_support import ACME, DEV, error_of, serve_seeded, submit

from longrun_common.settings import Settings

pytestmark = pytest.mark.integration

BODY = {"task": "demo.steps", "args": {"steps": 1}}


@pytest.fixture
async def gateway(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway where tenant acme may submit a job every five seconds, and dev run one job at a time."""
    settings = Settings(**{**sqlite_settings.model_dump(), "tenant_limits": "acme:rate=0.2,dev:concurrency=1"})
    async with serve_seeded(settings) as client:
        yield client


async def test_a_tenants_rate_override_is_429_for_it_alone(gateway: httpx.AsyncClient) -> None:
    await submit(gateway, headers=ACME)
    response = await gateway.post("/v1/jobs", json=BODY, headers=ACME)
    assert response.status_code == 429, response.text
    assert "0.2 job submissions per second" in error_of(response)["message"]
    assert error_of(response)["details"]["limit"] == 0.2 and 1 <= int(response.headers["retry-after"]) <= 5
    for _ in range(5):  # the global default (unlimited) still applies to everyone else
        await submit(gateway)


async def test_a_job_held_by_its_tenants_limit_says_why(gateway: httpx.AsyncClient) -> None:
    first = await submit(gateway)
    assert first["queued_reason"] is None and first["run_at"] is None
    batch = (await gateway.post("/v1/jobs:batch", json={"jobs": [BODY, BODY]}, headers=DEV)).json()["items"]
    assert [job["queued_reason"] for job in batch] == ["tenant_concurrency_limit"] * 2
    listed = (await gateway.get("/v1/jobs", headers=DEV)).json()["items"]
    held = [job for job in listed if job["id"] != first["id"]]
    assert [job["queued_reason"] for job in held] == ["tenant_concurrency_limit"] * 2
    assert (await submit(gateway, headers=ACME))["queued_reason"] is None  # other tenants are not held
    again = (await gateway.get(f"/v1/jobs/{held[0]['id']}", headers=DEV)).json()
    assert again["status"] == "queued" and again["queued_reason"] == "tenant_concurrency_limit"


async def test_delay_and_run_at_make_a_delayed_job(gateway: httpx.AsyncClient) -> None:
    before = datetime.now(UTC)
    delayed = await submit(gateway, delay=30)
    assert delayed["status"] == "queued" and delayed["queued_reason"] == "delayed"
    run_at = datetime.fromisoformat(delayed["run_at"])
    assert before + timedelta(seconds=29) < run_at < datetime.now(UTC) + timedelta(seconds=31)
    at = (datetime.now(UTC) + timedelta(hours=2)).astimezone().isoformat()  # any timezone is fine
    later = (await gateway.post("/v1/jobs:batch", json={"jobs": [{**BODY, "run_at": at}]}, headers=DEV)).json()
    assert later["items"][0]["queued_reason"] == "delayed"
    assert datetime.fromisoformat(later["items"][0]["run_at"]) == datetime.fromisoformat(at)
    past = await submit(gateway, run_at="2001-01-01T00:00:00Z")  # a time already past: at once
    assert past["run_at"] is None and past["queued_reason"] != "delayed"
    cancelled = (await gateway.post(f"/v1/jobs/{delayed['id']}/cancel", headers=DEV)).json()
    assert cancelled["status"] == "cancelled" and cancelled["queued_reason"] is None


@pytest.mark.parametrize(
    ("extra", "field", "message"),
    [
        ({"delay": 5, "run_at": "2030-01-01T00:00:00Z"}, "delay", "either run_at or delay, not both"),
        ({"delay": -1}, "delay", "outside the allowed range of 0 to 31536000"),
        ({"delay": 400 * 24 * 3600}, "delay", "outside the allowed range"),
        ({"run_at": "2030-01-01T00:00:00"}, "run_at", "must carry a timezone"),
        ({"run_at": "next tuesday"}, "run_at", "must be an ISO 8601 time"),
        ({"run_at": "2999-01-01T00:00:00Z"}, "run_at", "at most a year from now"),
        ({"delay": "5"}, "delay", ""),
    ],
)
async def test_bad_delays_are_422(gateway: httpx.AsyncClient, extra: dict[str, object], field: str,
                                  message: str) -> None:
    response = await gateway.post("/v1/jobs", json={**BODY, **extra}, headers=DEV)
    assert response.status_code == 422, response.text
    problems = error_of(response)["details"]
    assert any(p["field"] == field and message in p["message"] for p in problems), problems
