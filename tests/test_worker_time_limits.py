"""Hard time limits that kill the pool process at any point of an attempt, on real worker processes.

Jobs are written through JobStore, past the gateway's floor on `time_limit`, so the limit can fire before the
job has even started (the adversarial run's `time_limit: 0.001`), while it publishes `running`, or mid-run.
Every such job must end in `retrying` and then `failed`, each killed attempt counted — never stranded in
`queued`, never resent forever.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import insert, text, update
from sqlmodel import col

from longrun_common.jobs import JobStore
from longrun_common.models import Attempt, Job, utcnow
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_worker.resources import Resources
from longrun_worker.taskevents import TaskEvents
from longrun_worker.timeouts import end_timed_out_attempt
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import events, submit, wait_for

pytestmark = pytest.mark.integration

FAST = {"LONGRUN_LEASE_SECONDS": "2", "LONGRUN_REAPER_INTERVAL": "0.5"}
# From "before the worker has read the job" to "while the task sleeps".
LIMITS = [5e-324, 0.001, 0.001, 0.01, 0.03, 0.1, 0.3, 1.0]


def test_every_hard_limit_kill_ends_in_retrying_then_failed(services: ServiceFactory, job_store: JobStore) -> None:
    worker = services("worker", "--concurrency", "2", env=FAST)
    jobs = [submit(job_store, "demo.steps", {"steps": 1, "delay": 20}, time_limit=limit, soft_time_limit=None,
                   max_attempts=2) for limit in LIMITS]
    done = wait_for(job_store, [job.id for job in jobs], timeout=60)
    for job, limit in zip(done, LIMITS, strict=True):
        assert job.status == "failed", (limit, job.status, worker.logs()[-3000:])
        assert job.attempt == 2, (limit, job.attempt)
        assert job.error is not None and job.error["type"] == "timeout", (limit, job.error)
        attempts = job_store.attempts(job.id)
        assert [(a.number, a.status) for a in attempts] == [(1, "retrying"), (2, "failed")], (limit, attempts)
        statuses = [e["status"] for e in events(job_store, job.id)]
        assert "retrying" in statuses and statuses[-1] == "failed", (limit, statuses)


def test_every_soft_limit_ends_the_attempt_even_before_the_task_runs(services: ServiceFactory,
                                                                      job_store: JobStore) -> None:
    # A soft limit this small fires while the runner still reads SQL or publishes `running` — outside the
    # task's own code — where it used to escape and leave the acknowledged job `queued`.
    worker = services("worker", "--concurrency", "2", env=FAST)
    soft = [1e-6, 0.001, 0.005, 0.02, 0.2]
    # 6 s: thirty times the longest soft limit, and what a job whose limit was swallowed (below) runs before it
    # succeeds, twice if both attempts swallowed it (20 s made such a run take 20-40 s).
    jobs = [submit(job_store, "demo.steps", {"steps": 1, "delay": 6}, soft_time_limit=limit, time_limit=30,
                   max_attempts=2) for limit in soft]
    done = wait_for(job_store, [job.id for job in jobs], timeout=45)  # none stranded
    failed = [job for job in done if job.status == "failed"]
    for job in failed:
        # Never the reaper's "lost": the time limit ends the attempt even when it cut a commit short (see the
        # last test here).
        assert job.attempt == 2 and job.error is not None and job.error["type"] == "timeout", job.error
        assert [a.status for a in job_store.attempts(job.id)] == ["retrying", "failed"], job.id
    # A soft limit is cooperative: library code may swallow it (SQLAlchemy logs "Exception during reset" when
    # the signal lands while it returns a connection to its pool), and such a job simply runs on within its
    # hard limit and succeeds. The rest must all have timed out.
    assert {job.status for job in done} <= {"failed", "succeeded"}, [job.status for job in done]
    assert len(failed) >= 3, ([(job.status, job.attempt) for job in done], worker.logs()[-3000:])


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)  # SQLite commits in the process itself
def test_a_limit_that_cut_the_childs_begin_short_while_it_committed_still_ends_as_timeout(
    job_store: JobStore, settings: Settings
) -> None:
    """The soft limit interrupted the child's begin_attempt with its COMMIT sent: PostgreSQL commits it a moment
    later, after the timeout handler read the job as queued. The handler must still end that attempt (it once
    stayed running until the reaper called it `lost`)."""
    job = submit(job_store, "demo.steps", {"steps": 1}, max_attempts=1)
    worker = "w0@host"
    res = Resources(settings, job_store.engine, job_store.redis, job_store.keys, job_store.publisher,
                    job_store, TaskEvents(None))
    # The child's connection is the inner context: if a check below fails, its transaction ends (releasing the
    # row) before the pool waits for the handler's thread, so a failure reports itself instead of hanging.
    with ThreadPoolExecutor(1) as pool, job_store.engine.connect() as child:
        # The child's begin_attempt, not yet committed: the job reads queued, and its row is locked.
        child.execute(update(Job).where(col(Job.id) == job.id).values(
            status=JobStatus.RUNNING.value, worker=worker, started_at=utcnow()))
        child.execute(insert(Attempt).values(job_id=job.id, number=1, worker=worker, started_at=utcnow()))
        ended = pool.submit(end_timed_out_attempt, res, job.id, 1, worker, "soft time limit exceeded")
        holder = child.execute(text("SELECT pg_backend_pid()")).scalar()
        waiting = text("SELECT count(*) FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))")
        with job_store.engine.connect() as watcher:  # until the handler's own begin waits for that row
            deadline = time.monotonic() + 30
            while not watcher.execute(waiting, {"holder": holder}).scalar():
                assert not ended.done(), f"the handler ended without waiting for the child's row: {ended.result()}"
                assert time.monotonic() < deadline, "the handler never waited for the child's row"
                time.sleep(0.02)
        child.commit()
        assert ended.result(timeout=10) is True
    final = job_store.get(job.id)
    assert final is not None and final.status == "failed" and final.error is not None
    assert final.error["type"] == "timeout"
    assert [(a.number, a.status) for a in job_store.attempts(job.id)] == [(1, "failed")]
