"""`POST /v1/workflows` without workers: spec checks named by path, size limits, one transaction, children
listing, and the reconciler repairing a crash between a step's end (which releases its successor) and the
successor's start."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import redis
from gateway_support import DEV, error_of, gateway_of
from sqlalchemy import func, update
from sqlmodel import Session, col, select

from longrun_common import workflows
from longrun_common.maintenance import Maintenance
from longrun_common.models import Job
from longrun_common.states import JobStatus
from longrun_gateway.workflow_spec import MAX_LEAVES
from tests.support.jobs import waiting_job_ids

pytestmark = pytest.mark.integration


def leaf(steps: Any = 1, **extra: Any) -> dict[str, Any]:
    return {"task": "demo.steps", "args": {"steps": steps}, **extra}


def count(client: httpx.AsyncClient) -> int:
    with Session(gateway_of(client).engine) as session:
        return int(session.exec(select(func.count()).select_from(Job)).one())


async def test_every_problem_is_named_by_its_path_and_nothing_is_stored(lite_client: httpx.AsyncClient) -> None:
    spec = {"chain": [
        leaf(1, foo=1),
        {"group": [leaf("x"), {"task": "nope", "args": {}}, leaf(1, weight=-2)]},
        {"chord": {"group": []}},
        5,
        {"chain": [leaf()], "group": [leaf()]},
    ]}
    response = await lite_client.post("/v1/workflows", json={"spec": spec}, headers=DEV)
    assert response.status_code == 422, response.text
    fields = {d["field"] for d in error_of(response)["details"]}
    assert fields == {
        "spec.chain[0].foo", "spec.chain[1].group[0].args.steps", "spec.chain[1].group[1].task",
        "spec.chain[1].group[2].weight", "spec.chain[2].chord.group", "spec.chain[2].chord.then", "spec.chain[3]",
        "spec.chain[4]",
    }
    assert count(lite_client) == 0
    response = await lite_client.post("/v1/workflows", json={"spec": leaf(), "on_failure": "later"}, headers=DEV)
    assert response.status_code == 422 and error_of(response)["details"][0]["field"] == "on_failure"


async def test_a_group_of_1000_is_one_request_and_beyond_it_413(
    lite_client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str
) -> None:
    too_big = {"spec": {"group": [leaf() for _ in range(MAX_LEAVES + 1)]}}
    response = await lite_client.post("/v1/workflows", json=too_big, headers=DEV)
    assert response.status_code == 413 and "split it" in error_of(response)["message"]
    assert count(lite_client) == 0
    response = await lite_client.post("/v1/workflows", json={"spec": {"group": [leaf(n % 5 + 1) for n in
                                                                                range(MAX_LEAVES)]}}, headers=DEV)
    assert response.status_code == 202, response.text
    root = response.json()
    assert root["status"] == "running" and root["kind"] == "workflow"
    assert count(lite_client) == MAX_LEAVES + 1
    assert len(waiting_job_ids(redis_client, key_prefix)) == MAX_LEAVES  # on the queue or held by fairness
    # Children in spec order, by pages.
    seen: list[dict[str, Any]] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await lite_client.get(f"/v1/jobs/{root['id']}/children", params=params, headers=DEV)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert [c["args"]["steps"] for c in seen] == [n % 5 + 1 for n in range(MAX_LEAVES)]
    assert {c["parent_id"] for c in seen} == {root["id"]}
    bad = await lite_client.get(f"/v1/jobs/{root['id']}/children", params={"cursor": "x"}, headers=DEV)
    assert bad.status_code == 422
    missing = await lite_client.get("/v1/jobs/00000000-0000-0000-0000-000000000000/children", headers=DEV)
    assert missing.status_code == 404


async def test_the_reconciler_releases_a_step_whose_predecessor_ended_before_a_crash(
    lite_client: httpx.AsyncClient, redis_client: redis.Redis, key_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = gateway_of(lite_client)
    store = gateway.store
    response = await lite_client.post("/v1/workflows", json={"spec": {"chain": [leaf(), leaf(2)]}}, headers=DEV)
    root = response.json()
    first, second = (await lite_client.get(f"/v1/jobs/{root['id']}/children", headers=DEV)).json()["items"]
    assert second["queued_reason"] == "waiting_for_dependencies"

    def crash(*_: Any, **__: Any) -> None:
        raise RuntimeError("process killed between the step's end and its successor's start")

    # The first step ends (as its worker would record it: its end, its settle and its successor's release in one
    # transaction), and the process dies before sending the successor.
    monkeypatch.setattr(workflows, "after_settle", crash)
    assert store.begin_attempt(first["id"], 1, "w@test")
    assert store.finish_if(first["id"], 1, JobStatus.SUCCEEDED, only_from=(JobStatus.RUNNING,), result={"n": 1})
    monkeypatch.undo()
    monkeypatch.setattr(workflows, "SETTLE_GRACE_SECONDS", 0.0)  # the crash was long ago
    ended = store.get(first["id"])
    assert ended is not None and ended.settled and ended.status == "succeeded"
    assert second["id"] not in waiting_job_ids(redis_client, key_prefix)  # released in SQL, never sent
    with Session(store.engine) as session:  # the crash was long ago for the reconciler's waiting-job check too
        session.execute(update(Job).where(col(Job.id) == second["id"])
                        .values(updated_at=datetime.now(UTC) - timedelta(minutes=1)))
        session.commit()

    maintenance = Maintenance(store, gateway.settings)
    maintenance.reconcile()
    released = store.get(second["id"])
    assert released is not None and not released.waiting and released.inputs == [{"n": 1}]
    assert waiting_job_ids(redis_client, key_prefix).count(second["id"]) == 1
    maintenance.reconcile()  # repeating the repair sends nothing twice
    assert waiting_job_ids(redis_client, key_prefix).count(second["id"]) == 1

    # Redis wiped: the reconciler restores the workflow's snapshot and its roll-up sums from SQL.
    for key in redis_client.scan_iter(f"{key_prefix}:*"):
        redis_client.delete(key)
    maintenance.reconcile()
    assert redis_client.hget(f"{key_prefix}:job:{root['id']}", "status") == b"running"
    assert float(redis_client.hget(f"{key_prefix}:rollup:{root['id']}", "D") or 0) == 1.0  # the first step
    with Session(store.engine) as session:
        rows = session.exec(select(Job).where(col(Job.root_id) == root["id"])).all()
    assert sorted(r.status for r in rows) == ["queued", "succeeded"]
