"""Idempotency-Key: same body → same job (200), other body → 409, expiry, per tenant, and the race."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from datetime import timedelta
from typing import Any

import httpx
import pytest
from gateway_support import ACME, DEV, error_of, gateway_of
from sqlalchemy import func, update
from sqlmodel import Session, select

from longrun_common.models import IdempotencyKey, Job, utcnow
from longrun_gateway import submission
from longrun_gateway.state import Gateway

pytestmark = pytest.mark.integration

BODY = {"task": "demo.steps", "args": {"steps": 10, "delay": 0.5}}


def post(
    client: httpx.AsyncClient, body: dict[str, object], key: str, headers: dict[str, str] = DEV
) -> Coroutine[Any, Any, httpx.Response]:
    return client.post("/v1/jobs", json=body, headers={**headers, "Idempotency-Key": key})


def count_jobs(client: httpx.AsyncClient) -> int:
    with Session(gateway_of(client).engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


async def test_same_key_same_body_returns_the_same_job(client: httpx.AsyncClient) -> None:
    first = await post(client, BODY, "order-1")
    assert first.status_code == 202
    # Same meaning, other spelling: key order and defaults do not change the hash.
    again = await post(client, {"args": {"delay": 0.5, "steps": 10}, "task": "demo.steps", "priority": 0}, "order-1")
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert count_jobs(client) == 1


async def test_same_key_other_body_is_409(client: httpx.AsyncClient) -> None:
    assert (await post(client, BODY, "order-2")).status_code == 202
    conflict = await post(client, {**BODY, "args": {"steps": 11}}, "order-2")
    assert conflict.status_code == 409
    error = error_of(conflict)
    assert error["code"] == "idempotency_conflict" and "order-2" in error["message"]
    assert count_jobs(client) == 1


async def test_keys_belong_to_a_tenant(client: httpx.AsyncClient) -> None:
    mine = await post(client, BODY, "shared")
    theirs = await post(client, BODY, "shared", ACME)
    assert mine.status_code == theirs.status_code == 202
    assert mine.json()["id"] != theirs.json()["id"] and theirs.json()["tenant"] == "acme"


async def test_an_expired_key_is_replaced(client: httpx.AsyncClient) -> None:
    old = (await post(client, BODY, "order-3")).json()
    with Session(gateway_of(client).engine) as session:
        session.execute(update(IdempotencyKey).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    fresh = await post(client, {**BODY, "args": {"steps": 99}}, "order-3")  # a new body is fine after expiry
    assert fresh.status_code == 202 and fresh.json()["id"] != old["id"]
    with Session(gateway_of(client).engine) as session:
        [row] = session.exec(select(IdempotencyKey)).all()
        assert row.job_id == fresh.json()["id"]
    replay = await post(client, {**BODY, "args": {"steps": 99}}, "order-3")
    assert replay.status_code == 200 and replay.json()["id"] == fresh.json()["id"]


async def test_concurrent_identical_requests_make_one_job(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(*(post(client, BODY, "burst") for _ in range(10)))
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 9 + [202], [r.text for r in responses if r.status_code not in (200, 202)]
    assert len({r.json()["id"] for r in responses}) == 1
    assert count_jobs(client) == 1


async def test_losing_the_insert_race_rereads_the_winner(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Force the race: the lookup misses, the insert hits the unique key, the loser answers from the winner."""
    winner = (await post(client, BODY, "race")).json()
    real = submission.find_key
    calls = {"n": 0}

    def late_lookup(gateway: Gateway, tenant: str, key: str) -> IdempotencyKey | None:
        calls["n"] += 1
        if calls["n"] % 2:  # each request's first lookup misses, as if the winner had not committed yet
            return None
        return real(gateway, tenant, key)  # the re-read after the unique-key violation sees it

    monkeypatch.setattr(submission, "find_key", late_lookup)
    same = await post(client, BODY, "race")
    assert same.status_code == 200 and same.json()["id"] == winner["id"]
    other = await post(client, {**BODY, "args": {"steps": 1}}, "race")
    assert other.status_code == 409
    assert calls["n"] == 4  # both requests took the insert-conflict path
    assert count_jobs(client) == 1  # the losers' job rows rolled back with their keys


async def test_bad_key_is_422(client: httpx.AsyncClient) -> None:
    response = await post(client, BODY, "x" * 256)
    assert response.status_code == 422
    assert error_of(response)["message"].startswith("Idempotency-Key: ")
    assert count_jobs(client) == 0
