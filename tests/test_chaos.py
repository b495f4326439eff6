"""Chaos: workers killed -9, Redis wiped, SIGTERM mid-job, a presumed-dead worker coming back.

Every accepted job must end `succeeded`, resumed from its checkpoint, with no stranded or duplicated work.
These run on PostgreSQL, the production database.
"""

from __future__ import annotations

import signal
import time

import pytest
import redis

from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready
from tests.support.jobs import close_store, events, make_store, submit, wait_for
from tests.support.processes import Service
from tests.support.servers import RedisServer

pytestmark = pytest.mark.integration

FAST = {"LONGRUN_LEASE_SECONDS": "2", "LONGRUN_REAPER_INTERVAL": "0.5"}


@pytest.fixture
def database_url(postgres_database_url: str) -> str:
    """PostgreSQL only, as in production: these tests are about Redis and workers, one database is enough."""
    return postgres_database_url


@pytest.fixture
def store(job_store: JobStore) -> JobStore:
    return job_store


def hostname_prefix(worker: Service) -> str:
    return worker.argv[worker.argv.index("--hostname") + 1].split("@")[0]


def wait_running_on(store: JobStore, ids: list[str], worker: Service, timeout: float = 30) -> list[Job]:
    """Wait until `worker` runs at least one of the jobs and has checkpointed some progress."""
    prefix = hostname_prefix(worker)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        held = [job for job in (store.get(i) for i in ids)
                if job and job.status == "running" and (job.worker or "").startswith(prefix)]
        if held and all(_checkpointed(store, job.id) for job in held):
            return held
        time.sleep(0.05)
    raise TimeoutError(f"worker {prefix} never ran any of {ids}:\n{worker.logs()[-3000:]}")


def wait_attempt(store: JobStore, job_id: str, attempt: int, timeout: float) -> None:
    """Wait until `attempt` of the job is running (or done)."""
    deadline = time.monotonic() + timeout
    while (job := store.get(job_id)) is None or job.attempt < attempt or job.status not in {"running", "succeeded"}:
        assert time.monotonic() < deadline, f"attempt {attempt} never started: {job and (job.status, job.attempt)}"
        time.sleep(0.05)


def _checkpointed(store: JobStore, job_id: str) -> bool:
    return bool(store.redis.hget(store.keys.job(job_id), "checkpoint"))


def assert_fenced_handover(store: JobStore, job_id: str) -> None:
    """Once a later attempt is announced, no event of an earlier attempt follows (the fence held)."""
    evs = events(store, job_id)
    assert [e["seq"] for e in evs] == list(range(1, len(evs) + 1))
    highest = 0
    for event in evs:
        assert event["attempt"] >= highest, f"stale attempt wrote seq {event['seq']} after the handover"
        highest = max(highest, event["attempt"])


def test_kill9_worker_group_jobs_resume_elsewhere(services: ServiceFactory, store: JobStore) -> None:
    doomed, survivor = (services("worker", "--concurrency", "2", wait=False) for _ in range(2))
    wait_ready(doomed, survivor)  # booted side by side; the jobs come after both are up
    jobs = [submit(store, "demo.steps", {"steps": 40, "delay": 0.1}) for _ in range(4)]
    ids = [job.id for job in jobs]
    held = wait_running_on(store, ids, doomed)
    killed_at = time.monotonic()
    doomed.signal_group(signal.SIGKILL)

    # With default settings (10 s lease) each of its jobs runs again within 15 s.
    for job in held:
        wait_attempt(store, job.id, 2, timeout=20)
    assert time.monotonic() - killed_at < 15

    done = wait_for(store, ids, timeout=60)
    assert all(job.status == "succeeded" for job in done), [(j.status, j.error) for j in done]
    for job in done:
        assert job.result["steps_run"] + job.result["resumed_from"] == 40  # nothing skipped
        if job.id in {h.id for h in held}:
            assert job.result["resumed_from"] > 0 and job.error is None
            assert store.attempts(job.id)[0].error["type"] == "lost"
            assert_fenced_handover(store, job.id)


def test_redis_wiped_with_jobs_queued_all_succeed(services: ServiceFactory, settings: Settings) -> None:
    private = RedisServer().start()
    try:
        own = settings.model_copy(update={"redis_url": private.url})
        store = make_store(own)
        ids = [submit(store, "demo.steps", {"steps": 3}).id for _ in range(5)]
        client = redis.Redis.from_url(private.url)
        assert client.dbsize() > 0
        client.flushall()  # the broker messages, snapshots and streams are gone; SQL still has the jobs
        client.close()
        services("worker", "--concurrency", "2", env={"LONGRUN_REDIS_URL": private.url})
        done = wait_for(store, ids, timeout=60)
        assert [job.status for job in done] == ["succeeded"] * 5
        close_store(store)
    finally:
        private.stop()


def test_sigterm_drains_and_the_job_resumes_on_another_worker(services: ServiceFactory, store: JobStore) -> None:
    drain = {"LONGRUN_DRAIN_SECONDS": "1"}
    # Both workers are up before the job: whichever takes it is the one that leaves. The job (15 s) need only
    # outlast the 1 s drain window and the handover on a loaded host, not a second worker's start-up too.
    workers = [services("worker", "--concurrency", "1", env=drain, wait=False) for _ in range(2)]
    wait_ready(*workers)
    job = submit(store, "demo.steps", {"steps": 150, "delay": 0.1})
    deadline = time.monotonic() + 30
    while (current := store.get(job.id)) is None or current.status != "running" or not _checkpointed(store, job.id):
        assert time.monotonic() < deadline, f"the job never got going: {current and current.status}"
        time.sleep(0.05)
    (leaving,) = [w for w in workers if (current.worker or "").startswith(hostname_prefix(w) + "@")]
    assert leaving.process is not None
    leaving.process.send_signal(signal.SIGTERM)  # the main process only, as Kubernetes does
    leaving.process.wait(30)
    after_exit = store.get(job.id)
    assert after_exit is not None
    assert not (after_exit.status == "running" and after_exit.worker
                and after_exit.worker.startswith(hostname_prefix(leaving)))
    (done,) = wait_for(store, [job.id], timeout=90)
    assert done.status == "succeeded" and done.attempt == 2
    assert done.result["resumed_from"] > 0
    assert store.attempts(job.id)[0].error["type"] == "drained"
    assert done.max_attempts == 5  # a drain does not use up the retry budget


def test_revived_stale_worker_is_fenced_off(services: ServiceFactory, store: JobStore) -> None:
    stale = services("worker", "--concurrency", "1", env=FAST)
    job = submit(store, "demo.steps", {"steps": 60, "delay": 0.1})
    wait_running_on(store, [job.id], stale)
    stale.signal_group(signal.SIGSTOP)  # looks dead: no heartbeats, no reports
    try:
        services("worker", "--concurrency", "1", env=FAST)
        wait_attempt(store, job.id, 2, timeout=30)
    finally:
        stale.signal_group(signal.SIGCONT)  # it wakes up mid-job, still believing it owns attempt 1
    (done,) = wait_for(store, [job.id], timeout=90)
    assert done.status == "succeeded" and done.attempt == 2 and done.result["attempt"] == 2
    assert_fenced_handover(store, job.id)
    deadline = time.monotonic() + 10
    while "superseded" not in stale.logs():
        assert time.monotonic() < deadline, stale.logs()[-3000:]
        time.sleep(0.1)


def test_redis_restart_mid_job_keeps_seq_and_owner(services: ServiceFactory, settings: Settings) -> None:
    private = RedisServer().start()
    own = settings.model_copy(update={"redis_url": private.url})
    store = make_store(own)
    try:
        services("worker", "--concurrency", "1", env={"LONGRUN_REDIS_URL": private.url, **FAST})
        job = submit(store, "demo.steps", {"steps": 60, "delay": 0.05})
        waiting = submit(store, "demo.steps", {"steps": 2})  # queued behind it
        deadline = time.monotonic() + 30
        while int(store.redis.hget(store.keys.job(job.id), "seq") or 0) < 10:
            assert time.monotonic() < deadline, "job never got going"
            time.sleep(0.05)
        seen = int(store.redis.hget(store.keys.job(job.id), "seq") or 0)
        private.restart()  # no persistence: every key is gone, the running task goes on
        done = wait_for(store, [job.id, waiting.id], timeout=60)
        assert [j.status for j in done] == ["succeeded", "succeeded"]
        after = events(store, job.id)
        assert after and after[0]["seq"] > seen  # seq went on from where it was, never back to 1
        assert store.redis.hget(store.keys.job(job.id), "tenant") == b"dev"  # owner restored for the hub
    finally:
        close_store(store)
        private.stop()
