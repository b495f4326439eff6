"""A workflow through chaos (issue 11): its worker killed -9 mid-step, then Redis restarted empty.

A chain (a group, then a fan-in) and a chord must both end succeeded, every step completed exactly once (one
completed attempt: a killed attempt never completes, and a fenced one never writes), and each fan-in received
every input. Real gateway, workers and a private Redis; PostgreSQL, as in production.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import close_store, make_store, wait_for
from tests.support.servers import RedisServer
from tests.test_chaos import FAST, wait_running_on

pytestmark = pytest.mark.integration

AUTH = {"Authorization": "Bearer dev-key"}
STEPS = 3  # members of each group


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    return postgres_database_url


def _member() -> dict[str, Any]:
    return {"task": "demo.steps", "args": {"steps": 40, "delay": 0.1}}  # 4 s: long enough to be killed mid-way


def _collect(label: str) -> dict[str, Any]:
    return {"task": "demo.collect", "args": {"label": label}}


SPECS = {
    "chain": {"chain": [{"group": [_member() for _ in range(STEPS)]}, _collect("chain")]},
    "chord": {"chord": {"group": [_member() for _ in range(STEPS)], "then": _collect("chord")}},
}


def _leaves(store: JobStore, root_id: str) -> list[Job]:
    with Session(store.engine) as session:
        return list(session.exec(select(Job).where(Job.root_id == root_id, Job.kind == "job")))


def _node_seqs(store: JobStore, root_ids: list[str]) -> dict[str, int]:
    """Each workflow node's newest seq (its roll-up events are numbered in Redis, not in SQL)."""
    with Session(store.engine) as session:
        nodes = [*root_ids, *session.exec(select(Job.id).where(Job.root_id.in_(root_ids), Job.kind == "workflow"))]
    return {node: int(store.redis.hget(store.keys.job(node), "seq") or 0) for node in nodes}


def test_workflow_survives_a_worker_kill_and_a_redis_wipe(services: ServiceFactory, settings: Settings) -> None:
    private = RedisServer().start()
    store = make_store(settings.model_copy(update={"redis_url": private.url}))
    try:
        env = {"LONGRUN_REDIS_URL": private.url, **FAST}
        gateway = services("gateway", env=env, wait=False)
        workers = [services("worker", "--concurrency", "2", env=env, wait=False) for _ in range(2)]
        wait_ready(gateway, *workers)  # all three boot side by side
        doomed = workers[0]
        with httpx.Client(base_url=gateway.url, timeout=30) as http:
            roots = {}
            for shape, spec in SPECS.items():
                response = http.post("/v1/workflows", json={"spec": spec}, headers=AUTH)
                assert response.status_code == 202, response.text
                roots[shape] = response.json()["id"]
        steps = [leaf.id for root in roots.values() for leaf in _leaves(store, root) if leaf.task == "demo.steps"]
        assert len(steps) == 2 * STEPS
        hit = {job.id for job in wait_running_on(store, steps, doomed)}
        doomed.kill()
        seen = _node_seqs(store, list(roots.values()))
        private.restart()  # no persistence: the killed steps' leases, every queue and every job hash are gone

        done = wait_for(store, list(roots.values()), timeout=120)
        assert [root.status for root in done] == ["succeeded", "succeeded"], [(r.status, r.error) for r in done]
        for shape, root_id in roots.items():
            leaves = _leaves(store, root_id)
            assert len(leaves) == STEPS + 1
            for leaf in leaves:
                completed = [a for a in store.attempts(leaf.id) if a.status == "succeeded"]
                assert len(completed) == 1, f"{shape} step {leaf.task} {leaf.id}: {len(completed)} completed attempts"
            (fan_in,) = [leaf for leaf in leaves if leaf.task == "demo.collect"]
            # A chain's next step receives the group's result (one input: the list of its members' results); a
            # chord's `then` receives each member's result as an input.
            inputs = fan_in.result["inputs"][0] if shape == "chain" else fan_in.result["inputs"]
            assert len(inputs) == STEPS and all(r["steps_run"] + r["resumed_from"] == 40 for r in inputs), inputs
        # Every event a node published after the wipe (its stream was wiped with it) is numbered past every seq
        # a client saw before: none is reused, so a client that follows by seq still sees the workflow end.
        reused = {node: first for node, seq in seen.items()
                  if (first := int(store.redis.xrange(store.keys.stream(node), count=1)[0][0].split(b"-")[0])) <= seq}
        assert not reused, (reused, seen)
        for step in hit:  # the kill really hit these: their first attempt was lost, a later one completed
            attempts = store.attempts(step)
            assert attempts[0].status != "succeeded" and attempts[0].error["type"] == "lost", attempts
    finally:
        close_store(store)
        private.stop()
