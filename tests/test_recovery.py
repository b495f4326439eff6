"""Recovery within one lease, and load balancing between a worker's processes (real worker processes).

A job whose worker is killed -9 must be running again (its next attempt started) within the lease plus a few
seconds, also when the killed worker was the maintenance leader and when workers die one after another.
These run on PostgreSQL, the production database.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import close_store, make_store, submit, wait_for, waiting_job_ids
from tests.support.processes import Service
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

LEASE = 3.0
# Default reaper interval; the lease shortened so the test is quick. The bound is a behaviour, not a benchmark.
SHORT_LEASE = {"LONGRUN_LEASE_SECONDS": f"{LEASE:g}"}
BOUND = LEASE + 3.0


@pytest.fixture
def database_url(postgres_url: str) -> str:
    import psycopg

    from tests.support.fixtures import TABLES

    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES) + " CASCADE")
    return postgres_url


@pytest.fixture
def private_redis(settings: Settings) -> Iterator[tuple[RedisServer, JobStore]]:
    """A Redis of this test's own, to restart empty, and a job store on it."""
    private = RedisServer().start()
    store = make_store(settings.model_copy(update={"redis_url": private.url}))
    try:
        yield private, store
    finally:
        close_store(store)
        private.stop()


def _kill(worker: Service) -> float:
    """kill -9 the worker's whole process group; returns when it died (epoch seconds)."""
    worker.kill()
    return datetime.now(UTC).timestamp()


def _host(worker: Service) -> str:
    return worker.argv[worker.argv.index("--hostname") + 1].split("@")[0]


def _running(store: JobStore, job_id: str, attempt: int, timeout: float) -> Job:
    """Wait until `attempt` of the job is running and return it."""
    deadline = time.monotonic() + timeout
    while True:
        job = store.get(job_id)
        if (job is not None and job.attempt == attempt and job.status == "running" and job.worker
                and any(a.number == attempt for a in store.attempts(job_id))):  # its row follows the status
            return job
        assert time.monotonic() < deadline, f"attempt {attempt} not running after {timeout}s: " \
                                            f"{job and (job.status, job.attempt, job.worker)}"
        time.sleep(0.02)


def _started_at(store: JobStore, job_id: str, attempt: int) -> float:
    row = next(a for a in store.attempts(job_id) if a.number == attempt)
    started = row.started_at if row.started_at.tzinfo else row.started_at.replace(tzinfo=UTC)
    return started.timestamp()


def _ended_at(store: JobStore, job_id: str, attempt: int) -> float:
    row = next(a for a in store.attempts(job_id) if a.number == attempt)
    assert row.finished_at is not None
    ended = row.finished_at if row.finished_at.tzinfo else row.finished_at.replace(tzinfo=UTC)
    return ended.timestamp()


def test_killed_workers_job_runs_again_within_the_lease(services: ServiceFactory, job_store: JobStore) -> None:
    store = job_store
    """Three workers; the job's worker is killed -9 twice in a row (the first is the maintenance leader, since it
    started first): each time the job runs again on an idle worker within lease + 3 s."""
    first = services("worker", "--concurrency", "1", env=SHORT_LEASE)
    job = submit(store, "demo.steps", {"steps": 400, "delay": 0.1})
    _running(store, job.id, 1, timeout=30)
    spares = [services("worker", "--concurrency", "1", env=SHORT_LEASE, wait=False) for _ in range(2)]
    wait_ready(*spares)  # booted side by side
    by_host = {_host(w): w for w in [first, *spares]}
    took: list[float] = []
    for attempt in (1, 2):
        holder = _running(store, job.id, attempt, timeout=30)
        victim = by_host[holder.worker.split("@")[0]]  # type: ignore[union-attr]
        time.sleep(0.5)  # some progress, and the lease renewed, before the kill
        killed_at = _kill(victim)
        _running(store, job.id, attempt + 1, timeout=BOUND + 20)
        took.append(_started_at(store, job.id, attempt + 1) - killed_at)
        print(f"kill {attempt}: requeued after {_ended_at(store, job.id, attempt) - killed_at:.2f}s, "
              f"running again after {took[-1]:.2f}s")
    assert max(took) <= BOUND, f"kill -> running again took {took} s; bound {BOUND} s"
    store.request_cancel(job.id)
    (done,) = wait_for(store, [job.id], timeout=30)
    assert done.status == "cancelled"


def test_requeued_job_goes_ahead_of_a_backlog_restored_after_redis_lost_it(
    services: ServiceFactory, private_redis: tuple[RedisServer, JobStore]
) -> None:
    """Redis restarts empty with a backlog queued; the reconciler sends the backlog again. A worker killed after
    that still has its job running again within the lease plus one backlog job: the backlog went back at its own
    priority, so the requeued job (urgent) is next, not behind every restored message."""
    private, store = private_redis
    env = {"LONGRUN_REDIS_URL": private.url, **SHORT_LEASE}
    doomed = services("worker", "--concurrency", "1", env=env)
    job = submit(store, "demo.steps", {"steps": 400, "delay": 0.1})
    _running(store, job.id, 1, timeout=30)
    backlog = [submit(store, "demo.steps", {"steps": 10, "delay": 0.1}).id for _ in range(20)]  # 1 s each
    services("worker", "--concurrency", "1", env=env)  # works through the backlog
    private.restart()  # no persistence: the queue, the leases and the job hashes are gone
    deadline = time.monotonic() + 30
    while len(waiting_job_ids(store.redis, store.keys.prefix)) < 8:
        assert time.monotonic() < deadline, "the reconciler never sent the backlog again"
        time.sleep(0.05)
    killed_at = _kill(doomed)
    _running(store, job.id, 2, timeout=60)
    took = _started_at(store, job.id, 2) - killed_at
    waiting = len(waiting_job_ids(store.redis, store.keys.prefix))
    print(f"running again after {took:.2f}s; {waiting} backlog messages still queued")
    assert took <= BOUND + 1.0, f"kill -> running again took {took:.1f}s (bound {BOUND} s + one 1 s job)"
    assert waiting > 0  # the backlog was still there: the job went ahead of it
    store.request_cancel(job.id)
    # Measured: what is left is to see every restored job run once. A third worker (not waited for) helps the one
    # process left through the rest of the backlog, a second each, one after another.
    services("worker", "--concurrency", "4", env=env, wait=False)
    done = wait_for(store, [job.id, *backlog], timeout=90)
    assert [j.status for j in done] == ["cancelled"] + ["succeeded"] * len(backlog)


def test_job_of_a_worker_killed_just_before_redis_lost_everything_runs_again_within_the_lease(
    services: ServiceFactory, private_redis: tuple[RedisServer, JobStore]
) -> None:
    """Default lease (10 s). A worker is killed -9, then Redis restarts empty, its lease gone with everything else.
    The reconciler finds the job running in SQL with no lease and gives its worker one heartbeat interval to renew
    it, not a whole lease: the job runs again on the other worker within lease + 3 s of the kill."""
    private, store = private_redis
    lease = Settings().lease_seconds
    env = {"LONGRUN_REDIS_URL": private.url}
    workers = [services("worker", "--concurrency", "1", env=env, wait=False) for _ in range(2)]  # boot together
    for worker in workers:
        worker.wait_log("ready.", timeout=90)
    job = submit(store, "demo.steps", {"steps": 600, "delay": 0.1})
    holder = _running(store, job.id, 1, timeout=30).worker or ""
    (doomed,) = [w for w in workers if _host(w) == holder.split("@")[0]]
    time.sleep(0.5)  # some progress, and the lease renewed, before the kill
    killed_at = _kill(doomed)
    time.sleep(2.0)  # a whole lease granted after the wipe would make it kill + 2 s + 10 s at least
    private.restart()  # no persistence: the lease, the job's hash and the maintenance lock are gone
    _running(store, job.id, 2, timeout=lease + 30)
    took = _started_at(store, job.id, 2) - killed_at
    print(f"kill -> running again after {took:.2f}s (requeued after {_ended_at(store, job.id, 1) - killed_at:.2f}s)")
    assert took <= lease + 3.0, f"kill -> running again took {took:.1f}s; bound {lease + 3.0:g} s"
    store.request_cancel(job.id)
    (done,) = wait_for(store, [job.id], timeout=30)
    assert done.status == "cancelled"


def test_short_job_does_not_wait_behind_a_long_one(services: ServiceFactory, job_store: JobStore) -> None:
    """Prefetch 1, late acks, fair scheduling and max tasks per child: a worker with two processes, a long job
    then short ones submitted right behind it. Each short job starts at once on the free process; none is
    reserved by (or queued in the pipe of) the process busy with the long job. With
    LONGRUN_WORKER_MAX_TASKS_PER_CHILD=1 every short job runs in a process of its own (the setting is in effect),
    and still none waits for the long one: replacing a pool process hands no work to the busy one."""
    store = job_store
    worker = services("worker", "--concurrency", "2", env={"LONGRUN_WORKER_MAX_TASKS_PER_CHILD": "1"})
    # 60 s, cancelled once the short ones are done: a short job that waited behind it would wait at least that
    # long, far over the bound below, which leaves room for a loaded host forking a fresh process per job.
    long = submit(store, "demo.steps", {"steps": 600, "delay": 0.1})
    shorts = [submit(store, "demo.steps", {"steps": 2, "delay": 0.1}) for _ in range(4)]
    done = wait_for(store, [s.id for s in shorts], timeout=50)
    assert [j.status for j in done] == ["succeeded"] * len(shorts)
    still = store.get(long.id)
    assert still is not None and still.status == "running", "the long job should still be running"
    for short in shorts:
        accepted = short.created_at if short.created_at.tzinfo else short.created_at.replace(tzinfo=UTC)
        waited = _started_at(store, short.id, 1) - accepted.timestamp()
        assert waited < 30.0, f"a short job started {waited:.1f}s after it was accepted"
    processes = {short.id: _pool_process(worker, short.id) for short in shorts}
    assert len(set(processes.values())) == len(processes), f"a pool process ran two jobs: {processes}"
    store.request_cancel(long.id)
    wait_for(store, [long.id], timeout=30)


def _pool_process(worker: Service, job_id: str) -> str:
    """The pool process (ForkPoolWorker-N) that ran the job's first attempt, from its log line on success."""
    found = re.findall(rf"/(ForkPoolWorker-\d+)\].*job_id={job_id} attempt=1", worker.logs())
    assert found, f"no log line of a pool process for job {job_id}"
    return str(found[0])


def test_busy_worker_holds_no_message_another_worker_could_run(
    services: ServiceFactory, job_store: JobStore
) -> None:
    """Prefetch 1 with late acks: a worker whose only process runs a long job reserves nothing more, so short
    jobs submitted behind it all run on the other worker. (With `--prefetch-multiplier 4`, or early acks, the
    busy worker would hold some of them until the long job ends.)"""
    store = job_store
    wait_ready(*(services("worker", "--concurrency", "1", wait=False) for _ in range(2)))  # side by side
    long = submit(store, "demo.steps", {"steps": 300, "delay": 0.1})
    _running(store, long.id, 1, timeout=30)
    shorts = [submit(store, "demo.steps", {"steps": 2, "delay": 0.1}) for _ in range(4)]
    done = wait_for(store, [s.id for s in shorts], timeout=20)
    assert [j.status for j in done] == ["succeeded"] * len(shorts)
    still = store.get(long.id)
    assert still is not None and still.status == "running", "the long job should still be running"
    assert {j.worker for j in done}.isdisjoint({still.worker})
    store.request_cancel(long.id)
    wait_for(store, [long.id], timeout=30)


def test_quiet_job_of_a_live_worker_is_not_reaped_after_redis_lost_everything(
    services: ServiceFactory, private_redis: tuple[RedisServer, JobStore]
) -> None:
    """Default lease (10 s). A job that reports nothing (one 12 s step: only its heartbeat, every lease / 3, renews
    its lease) runs while Redis restarts empty. The reconciler gives a running job without a lease only one
    presence interval plus 2 s (3 s); the worker's presence beat finds its key gone and gives the lease back
    first, so the live attempt is never reaped as lost: it ends succeeded as attempt 1."""
    private, store = private_redis
    services("worker", "--concurrency", "1", env={"LONGRUN_REDIS_URL": private.url})
    job = submit(store, "demo.steps", {"steps": 1, "delay": 12})
    _running(store, job.id, 1, timeout=60)
    private.restart()  # no persistence: the lease and the worker's presence key are gone
    (done,) = wait_for(store, [job.id], timeout=60)
    assert done.status == "succeeded" and done.attempt == 1, (done.status, done.attempt, done.error)
    assert [a.status for a in store.attempts(job.id)] == ["succeeded"]
