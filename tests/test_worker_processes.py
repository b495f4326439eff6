"""Real worker processes on a real Redis and on SQLite and PostgreSQL: every built-in task end to end, retries,
time limits, cancellation and dead letters."""

from __future__ import annotations

import csv
import io
import time

import pytest
from sqlmodel import Session, select

from longrun_common.jobs import JobStore
from longrun_common.models import DeadLetter
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import (
    assert_progress_monotonic,
    events,
    store_file,
    submit,
    wait_for,
)

pytestmark = pytest.mark.integration

@pytest.fixture
def store(job_store: JobStore) -> JobStore:
    return job_store


FAST = {"LONGRUN_LEASE_SECONDS": "2", "LONGRUN_REAPER_INTERVAL": "0.5", "LONGRUN_CANCEL_GRACE_SECONDS": "1"}

# For what Celery and Redis decide (time limits, cancels, priorities), PostgreSQL alone, as in production: the SQL
# each one writes is the same JobStore code the other tests here and the gateway's run on both backends, and hard
# kills on SQLite are test_worker_time_limits.py's. Each run costs a worker start-up.
POSTGRESQL_ONLY = pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)


def test_every_builtin_task_end_to_end(services: ServiceFactory, settings: Settings, store: JobStore) -> None:
    services("worker", "--concurrency", "2")
    content = b"0123456789abcdef" * 200_000
    blob = store_file(store, settings, "blob.bin", content)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["n", "square"])
    writer.writerows([i, i * i] for i in range(2000))
    sheet = store_file(store, settings, "t.csv", table.getvalue().encode())

    steps = submit(store, "demo.steps", {"steps": 30, "delay": 0.01, "fail_times": 1})
    checksum = submit(store, "files.checksum", {"file_id": blob.id})
    profile = submit(store, "csv.profile", {"file_id": sheet.id})
    done = {job.id: job for job in wait_for(store, [steps.id, checksum.id, profile.id], timeout=60)}

    assert done[steps.id].status == "succeeded" and done[steps.id].attempt == 2, done[steps.id].error
    assert done[steps.id].result["resumed_from"] == 15
    # demo.steps' progress meta: the retry's (attempt 2, resumed at 15) in its last events and in SQL.
    assert done[steps.id].progress["meta"] == {"attempt": 2, "resumed_from": 15}
    assert events(store, steps.id)[-1]["progress"]["meta"] == {"attempt": 2, "resumed_from": 15}
    assert done[checksum.id].result["sha256"] == blob.sha256
    assert done[profile.id].result["rows"] == 2000
    for job_id in done:
        evs = events(store, job_id)
        assert_progress_monotonic(evs)
        assert evs[-1]["status"] == "succeeded" and evs[-1]["progress"]["percent"] == 100.0
        assert done[job_id].progress["percent"] == 100.0  # SQL has the final progress too


def test_exhausted_retries_land_in_dead_letters_and_requeue(services: ServiceFactory, store: JobStore) -> None:
    services("worker")
    job = submit(store, "demo.steps", {"steps": 4, "fail_times": 2}, max_attempts=2)
    (failed,) = wait_for(store, [job.id], timeout=30)
    assert failed.status == "failed" and failed.attempt == 2
    assert failed.error is not None and failed.error["type"] == "TransientError" and failed.error["traceback"]
    with Session(store.engine) as session:
        letter = session.exec(select(DeadLetter).where(DeadLetter.job_id == job.id)).one()
    assert letter.attempts == 2 and letter.error["type"] == "TransientError"
    retrying = [e for e in events(store, job.id) if e["status"] == "retrying"]
    assert len(retrying) == 1 and retrying[0]["next_retry_at"] > retrying[0]["ts"]

    store.requeue(job.id)  # attempt 3 is past fail_times: it succeeds
    (again,) = wait_for(store, [job.id], timeout=30)
    assert again.status == "succeeded" and again.attempt == 3
    with Session(store.engine) as session:
        assert session.exec(select(DeadLetter).where(DeadLetter.job_id == job.id)).first() is None


def test_soft_time_limit_is_a_timeout_that_retries(services: ServiceFactory, store: JobStore) -> None:
    services("worker")
    job = submit(store, "demo.steps", {"steps": 200, "delay": 0.05}, soft_time_limit=0.5, time_limit=5,
                 max_attempts=2)
    (done,) = wait_for(store, [job.id], timeout=30)
    assert done.status == "failed" and done.attempt == 2
    assert done.error is not None and done.error["type"] == "timeout"
    # The second attempt resumed from the first one's checkpoint.
    assert done.checkpoint is not None and done.checkpoint["next_step"] > 10


@POSTGRESQL_ONLY
def test_hard_time_limit_kills_and_is_recorded_as_timeout(services: ServiceFactory, store: JobStore) -> None:
    services("worker", env=FAST)
    job = submit(store, "demo.steps", {"steps": 1, "delay": 30}, time_limit=1, soft_time_limit=None,
                 max_attempts=1)
    (done,) = wait_for(store, [job.id], timeout=30)
    assert done.status == "failed"
    assert done.error is not None and done.error["type"] == "timeout", done.error


@POSTGRESQL_ONLY
def test_cancel_queued_job_never_starts(services: ServiceFactory, store: JobStore) -> None:
    job = submit(store, "demo.steps", {"steps": 3})
    store.request_cancel(job.id)
    services("worker")
    time.sleep(1.0)  # the message is delivered and must be dropped
    cancelled = store.get(job.id)
    assert cancelled is not None and cancelled.status == "cancelled" and cancelled.started_at is None
    assert store.attempts(job.id) == []
    assert events(store, job.id)[-1]["status"] == "cancelled"


@POSTGRESQL_ONLY
def test_cancel_running_job_at_next_report(services: ServiceFactory, store: JobStore) -> None:
    services("worker")
    job = submit(store, "demo.steps", {"steps": 1000, "delay": 0.02})
    wait_for(store, [job.id], {"running"}, timeout=20)
    time.sleep(0.3)
    store.request_cancel(job.id)
    (done,) = wait_for(store, [job.id], timeout=10)
    assert done.status == "cancelled"
    assert done.checkpoint is not None and 0 < done.checkpoint["next_step"] < 1000
    assert events(store, job.id)[-1]["status"] == "cancelled"


@POSTGRESQL_ONLY
def test_job_ignoring_cancel_is_terminated_after_grace(services: ServiceFactory, store: JobStore) -> None:
    worker = services("worker", env=FAST)
    job = submit(store, "demo.steps", {"steps": 1, "delay": 60})  # sleeps without reporting
    wait_for(store, [job.id], {"running"}, timeout=20)
    store.request_cancel(job.id)
    (done,) = wait_for(store, [job.id], timeout=15)
    assert done.status == "cancelled"
    assert done.error is not None and "force" in done.error["message"]
    # The worker survived and takes new work.
    after = submit(store, "demo.steps", {"steps": 2})
    assert wait_for(store, [after.id], timeout=20)[0].status == "succeeded", worker.logs()[-3000:]


@POSTGRESQL_ONLY
def test_urgent_jobs_run_before_normal_ones(services: ServiceFactory, store: JobStore) -> None:
    normal = [submit(store, "demo.steps", {"steps": 1}, priority=0) for _ in range(5)]
    urgent = submit(store, "demo.steps", {"steps": 1}, priority=9)
    services("worker", "--concurrency", "1")
    done = wait_for(store, [j.id for j in [*normal, urgent]], timeout=30)
    order = [job.id for job in sorted(done, key=lambda job: job.started_at or job.created_at)]
    # The fair dispatcher hands the broker LONGRUN_FAIR_WINDOW messages at a time (longrun_common.fairness), and
    # those go first; the urgent job overtakes every normal one still waiting (FIFO would run it last).
    assert order.index(urgent.id) <= Settings().fair_window, order
