"""The reaper and reconciler run inside the gateway too: a lost job is recovered with every worker gone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import col

from longrun_common.jobs import JobStore
from longrun_common.maintenance import Maintenance
from longrun_common.models import Job
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import close_store, make_store, queued_messages, submit, wait_for

pytestmark = pytest.mark.integration


def test_gateway_reaps_a_lost_job_with_no_worker_running(services: ServiceFactory, job_store: JobStore) -> None:
    job = submit(job_store, "demo.steps", {"steps": 5})
    # A worker took attempt 1 and died: running in SQL, with a lease that has already expired.
    assert job_store.begin_attempt(job.id, 1, "gone@host")
    job_store.redis.zadd(job_store.keys.leases(), {job.id: time.time() - 1})
    services("gateway", env={"LONGRUN_REAPER_INTERVAL": "0.2"})
    deadline = time.monotonic() + 15
    while (current := job_store.get(job.id)) is not None and current.attempt < 2:
        assert time.monotonic() < deadline, "the gateway's reaper never requeued the job"
        time.sleep(0.05)
    assert current is not None and current.status == JobStatus.RETRYING.value
    assert current.error is not None and current.error["type"] == "lost"
    # ...and the message for attempt 2 follows (SQL is written first) for whichever worker comes next; the
    # never-taken message of attempt 1 is still queued too, and a worker will drop it as stale.
    while len(ids := {m["headers"]["id"] for m in queued_messages(job_store.redis, job_store.keys.prefix)}) < 2:
        assert time.monotonic() < deadline, f"no message for attempt 2: {ids}"
        time.sleep(0.05)
    assert ids == {f"{job.id}.1", f"{job.id}.2"}


def test_job_whose_message_was_never_sent_is_sent_by_the_reconciler(
    services: ServiceFactory, job_store: JobStore, settings: Settings
) -> None:
    unsent = make_store(settings, with_celery=False)  # commits and announces, but the broker send "fails"
    job = submit(unsent, "demo.steps", {"steps": 2})
    close_store(unsent)
    assert queued_messages(job_store.redis, job_store.keys.prefix) == []
    services("worker", env={"LONGRUN_REAPER_INTERVAL": "0.3"})
    (done,) = wait_for(job_store, [job.id], timeout=30)
    assert done.status == "succeeded"


def _backdate(store: JobStore, job_id: str, seconds: float) -> None:
    with store.session() as session:
        session.execute(update(Job).where(col(Job.id) == job_id)
                        .values(updated_at=datetime.now(UTC) - timedelta(seconds=seconds)))
        session.commit()


def test_cancel_persisted_while_redis_was_down_is_finished_by_the_reconciler(
    job_store: JobStore, settings: Settings
) -> None:
    job = submit(job_store, "demo.steps", {"steps": 2})
    with job_store.session() as session:  # what request_cancel managed before Redis failed
        session.execute(update(Job).where(col(Job.id) == job.id).values(cancel_requested_at=datetime.now(UTC)))
        session.commit()
    _backdate(job_store, job.id, 10)
    Maintenance(job_store, settings).reconcile()
    done = job_store.get(job.id)
    assert done is not None and done.status == "cancelled"
    assert job_store.redis.hget(job_store.keys.job(job.id), "status") == b"cancelled"


def test_ending_that_never_reached_redis_is_republished(job_store: JobStore, settings: Settings) -> None:
    job = submit(job_store, "demo.steps", {"steps": 2})
    assert job_store.begin_attempt(job.id, 1, "w@host")
    # The job ended in SQL, then Redis failed before the terminal event: Redis still says queued.
    assert job_store.transition(job.id, 1, JobStatus.SUCCEEDED, only_from=(JobStatus.RUNNING,),
                                values={"finished_at": job.created_at, "result": {"ok": True}})
    with job_store.session() as session:
        session.execute(update(Job).where(col(Job.id) == job.id).values(finished_at=datetime.now(UTC)))
        session.commit()
    Maintenance(job_store, settings).reconcile()
    snapshot = job_store.redis.hgetall(job_store.keys.job(job.id))
    assert snapshot[b"status"] == b"succeeded" and snapshot[b"result"] == b'{"ok":true}'
