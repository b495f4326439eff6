"""Per-tenant submission rate limit (`LONGRUN_TENANT_RATE_LIMIT`): 429 with Retry-After, shared through Redis."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from gateway_support import ACME, DEV, error_of, serve_seeded, submit

from longrun_common.keys import Keys
from longrun_common.settings import Settings
from longrun_gateway.ratelimit import SubmitLimiter
from tests.support.processes import free_port

pytestmark = pytest.mark.integration

BODY = {"task": "demo.steps", "args": {"steps": 1}}


@pytest.fixture
async def limited(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A gateway allowing one submission per second per tenant."""
    async with serve_seeded(sqlite_settings.model_copy(update={"tenant_rate_limit": 1.0})) as client:
        yield client


async def test_submissions_over_the_rate_are_429_with_retry_after(limited: httpx.AsyncClient) -> None:
    first = await submit(limited)
    response = await limited.post("/v1/jobs", json=BODY, headers=DEV)
    assert response.status_code == 429, response.text
    error = error_of(response)
    assert error["code"] == "rate_limited" and "1 job submission per second" in error["message"]
    assert error["details"]["limit"] == 1.0 and 0 < error["details"]["retry_after"] <= 1.0
    assert response.headers["retry-after"] == "1"
    # Per tenant: another tenant has its own allowance; reads are never limited.
    await submit(limited, headers=ACME)
    assert (await limited.get(f"/v1/jobs/{first['id']}", headers=DEV)).status_code == 200
    listed = (await limited.get("/v1/jobs", headers=DEV)).json()["items"]
    assert [job["id"] for job in listed] == [first["id"]]  # the refused submission created nothing


async def test_bad_api_key_is_401_not_429(limited: httpx.AsyncClient) -> None:
    await submit(limited)
    response = await limited.post("/v1/jobs", json=BODY, headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401


async def test_limiter_allows_a_burst_of_one_second_then_refills(redis_url: str, key_prefix: str) -> None:
    client: aioredis.Redis[bytes] = aioredis.Redis.from_url(redis_url)
    try:
        limiter = SubmitLimiter(client, Keys(key_prefix), rate=20.0)
        assert [await limiter.check("t") for _ in range(20)] == [None] * 20  # a burst of one second's worth
        wait = await limiter.check("t")
        assert wait is not None and 0 < wait <= 0.05 + 1e-3
        assert await limiter.check("other") is None  # tenants do not share a bucket
        await asyncio.sleep(wait + 0.01)
        assert await limiter.check("t") is None  # refilled at 20 per second
        assert await limiter.check("t") is not None
        ttl = await client.pttl(f"{key_prefix}:rate:submit:t")
        assert 0 < ttl <= 2000  # the key expires once the bucket is full again
        # Slow rates: one submission, then one every 1/rate seconds.
        slow = SubmitLimiter(client, Keys(key_prefix), rate=0.5)
        assert await slow.check("s") is None
        wait = await slow.check("s")
        assert wait is not None and 1.9 < wait <= 2.0
    finally:
        await client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8


async def test_no_limit_never_touches_redis() -> None:
    client: aioredis.Redis[bytes] = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0")
    limiter = SubmitLimiter(client, Keys("x"), rate=0.0)
    assert [await limiter.check("t") for _ in range(50)] == [None] * 50
    await client.aclose()  # type: ignore[attr-defined]  # types-redis lags redis 8


async def test_limit_fails_open_while_redis_is_down(sqlite_url: str) -> None:
    settings = Settings(
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        database_url=sqlite_url,
        key_prefix="down",
        api_keys="dev:dev-key",
        tenant_rate_limit=1.0,
    )
    async with serve_seeded(settings) as client:
        for _ in range(3):  # accepted: SQL holds them, the reconciler publishes once Redis is back
            await submit(client)
