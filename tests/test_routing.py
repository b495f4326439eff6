"""Routing: queues come from LONGRUN_QUEUES, a worker consumes the subset LONGRUN_WORKER_QUEUES names."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import ValidationError

from longrun_common.jobs import JobStore
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import close_store, make_store, submit, wait_for

ROUTED = {"LONGRUN_QUEUES": "default,high,low,reports"}


@pytest.fixture
def routed_store(settings: Settings) -> Iterator[JobStore]:
    """A store (the gateway's submit path) whose Celery app knows the `reports` queue."""
    store = make_store(settings.model_copy(update={"queues": ROUTED["LONGRUN_QUEUES"]}))
    yield store
    close_store(store)


@pytest.mark.integration
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_worker_for_reports_runs_only_the_jobs_routed_there(services: ServiceFactory,
                                                              routed_store: JobStore) -> None:
    elsewhere = submit(routed_store, "demo.steps", {"steps": 1}, queue="default")
    normal = submit(routed_store, "demo.steps", {"steps": 2}, queue="reports")
    urgent = submit(routed_store, "demo.steps", {"steps": 2}, queue="reports", priority=9)
    # Started after the three are waiting, one job at a time: priority decides the order within the queue.
    services("worker", "--concurrency=1", env={**ROUTED, "LONGRUN_WORKER_QUEUES": "reports"})
    done = {job.id: job for job in wait_for(routed_store, [normal.id, urgent.id], timeout=30)}
    assert {job.status for job in done.values()} == {"succeeded"}
    assert {job.queue for job in done.values()} == {"reports"}
    assert done[urgent.id].started_at < done[normal.id].started_at  # type: ignore[operator]
    # Submitted first, on a queue this worker does not consume: still waiting.
    assert routed_store.get(elsewhere.id).status == "queued"  # type: ignore[union-attr]


@pytest.mark.unit
def test_queue_settings_are_checked_at_start() -> None:
    assert Settings(queues=" a, b ,a,").queue_names == ("a", "b")
    assert Settings(queues="a,b", worker_queues="b").consumed_queues == ("b",)
    assert Settings(queues="a,b").consumed_queues == ("a", "b")
    with pytest.raises(ValidationError, match=r"LONGRUN_WORKER_QUEUES names 'c', not in LONGRUN_QUEUES \(a, b\)"):
        Settings(queues="a,b", worker_queues="b,c")
    with pytest.raises(ValidationError, match="LONGRUN_QUEUES: queue 'x y'"):
        Settings(queues="default,x y")
    with pytest.raises(ValidationError, match="LONGRUN_QUEUES must name at least one queue"):
        Settings(queues=" , ")
