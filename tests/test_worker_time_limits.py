"""Hard time limits that kill the pool process at any point of an attempt, on real worker processes.

Jobs are written through JobStore, past the gateway's floor on `time_limit`, so the limit can fire before the
job has even started (the adversarial run's `time_limit: 0.001`), while it publishes `running`, or mid-run.
Every such job must end in `retrying` and then `failed`, each killed attempt counted — never stranded in
`queued`, never resent forever.
"""

from __future__ import annotations

import pytest

from longrun_common.jobs import JobStore
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
    jobs = [submit(job_store, "demo.steps", {"steps": 1, "delay": 20}, soft_time_limit=limit, time_limit=30,
                   max_attempts=2) for limit in soft]
    done = wait_for(job_store, [job.id for job in jobs], timeout=45)  # none stranded
    failed = [job for job in done if job.status == "failed"]
    for job in failed:
        # "lost": the signal interrupted the runner's own bookkeeping and the reaper ended the attempt from its
        # expired lease (seen once in CI on PostgreSQL, not understood yet) — ended all the same, never stranded.
        assert job.attempt == 2 and job.error is not None and job.error["type"] in {"timeout", "lost"}, job.error
        assert [a.status for a in job_store.attempts(job.id)] == ["retrying", "failed"], job.id
    # A soft limit is cooperative: library code may swallow it (SQLAlchemy logs "Exception during reset" when
    # the signal lands while it returns a connection to its pool), and such a job simply runs on within its
    # hard limit and succeeds. The rest must all have timed out.
    assert {job.status for job in done} <= {"failed", "succeeded"}, [job.status for job in done]
    assert len(failed) >= 3, ([(job.status, job.attempt) for job in done], worker.logs()[-3000:])
