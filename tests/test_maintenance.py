"""The reaper and reconciler run inside the gateway too: a lost job is recovered with every worker gone."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import update
from sqlmodel import Session, col

from longrun_common.events import Progress
from longrun_common.jobs import JobStore
from longrun_common.maintenance import Maintenance
from longrun_common.models import Job
from longrun_common.publisher import EventSpec
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from tests.support.fixtures import ServiceFactory
from tests.support.jobs import close_store, make_store, new_job, queued_messages, submit, wait_for

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


def _take_message(store: JobStore) -> dict[str, object]:
    """Do what a worker's consumer does first: pop the job's message off the queue."""
    (message,) = queued_messages(store.redis, store.keys.prefix)
    for key in store.redis.scan_iter(f"{store.keys.prefix}:celery:{store.keys.queue('default')}*"):
        store.redis.delete(key)
    return message


@pytest.mark.parametrize(("claim", "alive", "resent"), [
    ("dead", False, True),   # the worker that took the message died before running it
    ("live", True, False),   # a live worker holds it and is about to run it
    (None, False, True),     # popped and lost before anyone recorded it (kombu's BRPOP window)
])
def test_queued_job_whose_message_was_taken_and_lost_is_sent_again(
    job_store: JobStore, settings: Settings, claim: str | None, alive: bool, resent: bool
) -> None:
    job = submit(job_store, "demo.steps", {"steps": 2})
    _take_message(job_store)
    if claim:
        job_store.redis.hset(job_store.keys.job(job.id), "claim", f"1:{claim}@host")
    if alive:
        job_store.redis.set(job_store.keys.worker(f"{claim}@host"), "1", ex=30)
    _backdate(job_store, job.id, 10)
    Maintenance(job_store, settings).reconcile()
    messages = queued_messages(job_store.redis, job_store.keys.prefix)
    assert [m["headers"]["id"] for m in messages] == ([f"{job.id}.1"] if resent else [])
    if resent:
        # Taken by a worker that died: its turn had come, so it goes ahead of the queue (kombu level 0). Lost
        # from an empty queue (as after the broker lost every queue): its own priority (0 = kombu level 9), so
        # such a backlog never queues ahead of jobs the reaper requeues from dead workers.
        assert messages[0]["properties"]["priority"] == (0 if claim else 9)


def test_unclaimed_job_behind_a_backlog_is_left_alone(job_store: JobStore, settings: Settings) -> None:
    waiting = submit(job_store, "demo.steps", {"steps": 2})
    _take_message(job_store)  # its message is lost...
    submit(job_store, "demo.steps", {"steps": 2})  # ...but the queue is not empty: it may still come
    _backdate(job_store, waiting.id, 10)
    Maintenance(job_store, settings).reconcile()
    assert len(queued_messages(job_store.redis, job_store.keys.prefix)) == 1


def test_seq_never_repeats_after_redis_lost_a_running_job(job_store: JobStore, settings: Settings) -> None:
    job = submit(job_store, "demo.steps", {"steps": 2})
    assert job_store.begin_attempt(job.id, 1, "gone@host")
    for i in range(30):  # progress events reach Redis at once, SQL only now and then
        job_store.publisher.publish(job_store.redis, EventSpec(job.id, "progress", JobStatus.RUNNING, 1,
                                                               progress=Progress(current=i)))
        if i == 5:  # the worker's throttled SQL write
            with job_store.session() as session:
                session.execute(update(Job).where(col(Job.id) == job.id).values(seq=i + 2))
                session.commit()
    seen = int(job_store.redis.hget(job_store.keys.job(job.id), "seq") or 0)
    assert seen == 31  # seq 1 was the queued event: a new job starts from 1
    job_store.redis.delete(job_store.keys.job(job.id), job_store.keys.stream(job.id))  # Redis lost it
    job_store.redis.zadd(job_store.keys.leases(), {job.id: time.time() - 1})  # ...and the worker died
    Maintenance(job_store, settings).reap_expired_leases()
    assert int(job_store.redis.hget(job_store.keys.job(job.id), "seq") or 0) > seen


def test_job_whose_lease_redis_lost_with_its_worker_is_requeued_well_within_a_lease(
    job_store: JobStore, settings: Settings
) -> None:
    """A worker killed -9 just before Redis restarted empty: its job is running in SQL and has no lease. The
    reconciler gives it one heartbeat interval plus a reconnect margin, not a whole lease (the default 10 s),
    so it runs again within about a lease of the kill; a job whose worker is alive renews its lease and stays."""
    settings = settings.model_copy(update={"lease_seconds": 10.0, "reaper_interval": 1.0})
    dead, alive = (submit(job_store, "demo.steps", {"steps": 2}) for _ in range(2))
    assert job_store.begin_attempt(dead.id, 1, "gone@host")
    assert job_store.begin_attempt(alive.id, 1, "alive@host")
    keys = job_store.keys
    job_store.redis.delete(keys.leases(), *(key(job.id) for job in (dead, alive) for key in (keys.job, keys.stream)))
    maintenance = Maintenance(job_store, settings)
    started = time.monotonic()
    maintenance.reconcile()
    deadline = started + settings.lease_seconds
    while (current := job_store.get(dead.id)) is not None and current.attempt < 2:
        assert time.monotonic() < deadline, "the job of the dead worker waited a whole lease"
        # The live worker's heartbeat (every lease / 3) re-adds its lease.
        job_store.publisher.heartbeat(job_store.redis, alive.id, 1, time.time() + settings.lease_seconds)
        maintenance.reap_expired_leases()
        time.sleep(0.2)
    took = time.monotonic() - started
    assert current is not None and current.status == JobStatus.RETRYING.value, current
    assert current.error is not None and current.error["type"] == "lost"
    assert took < settings.lease_seconds * 0.8, f"requeued after {took:.1f}s"
    still = job_store.get(alive.id)
    assert still is not None and (still.status, still.attempt) == (JobStatus.RUNNING.value, 1)


def test_running_job_whose_lease_redis_lost_is_found_behind_a_backlog_larger_than_one_read(
    job_store: JobStore, settings: Settings
) -> None:
    """After a wipe with more jobs waiting than one read of active jobs returns (500), a running job with no lease
    still gets its short lease in one reconcile pass, so the reaper can requeue it if its worker is dead."""
    with Session(job_store.engine) as session:  # the backlog, accepted first (the database returns it first)
        session.add_all([new_job("demo.steps", {"steps": 1}) for _ in range(600)])
        session.commit()
    job = submit(job_store, "demo.steps", {"steps": 2})
    assert job_store.begin_attempt(job.id, 1, "gone@host")
    job_store.redis.zrem(job_store.keys.leases(), job.id)
    Maintenance(job_store, settings).reconcile()
    assert job_store.redis.zscore(job_store.keys.leases(), job.id) is not None


def test_requeue_after_redis_lost_a_job_whose_sql_seq_is_still_zero_numbers_past_what_clients_saw(
    job_store: JobStore, settings: Settings
) -> None:
    """SQL records a job's seq only now and then: a job killed early in its first attempt may still have seq 0
    there while clients saw seq 1 (queued) and 2, 3 (running). Redis then loses it; the reaper's `retrying` event
    must not start over at 1, or every client that saw 2 and 3 drops it."""
    job = submit(job_store, "demo.steps", {"steps": 2})
    assert job_store.begin_attempt(job.id, 1, "gone@host")
    for i in range(2):
        job_store.publisher.publish(job_store.redis, EventSpec(job.id, "progress", JobStatus.RUNNING, 1,
                                                               progress=Progress(current=i)))
    assert (job_store.get(job.id) or job).seq == 0
    job_store.redis.delete(job_store.keys.job(job.id), job_store.keys.stream(job.id))
    job_store.redis.zadd(job_store.keys.leases(), {job.id: time.time() - 1})
    Maintenance(job_store, settings).reap_expired_leases()
    assert (job_store.get(job.id) or job).status == JobStatus.RETRYING.value
    assert int(job_store.redis.hget(job_store.keys.job(job.id), "seq") or 0) > 3


def test_an_overdue_lease_is_reaped_by_an_instance_that_is_not_the_leader(
    job_store: JobStore, settings: Settings
) -> None:
    """The leader is often the worker just killed, and its lock outlives it: an instance that is not the leader
    leaves a lease that expired moments ago to the leader, and reaps one overdue by more than 1.5 ticks."""
    settings = settings.model_copy(update={"reaper_interval": 1.0})
    job_store.redis.set(job_store.keys.lock("maintenance"), "a-dead-leader", px=60_000)
    fresh, overdue = (submit(job_store, "demo.steps", {"steps": 2}) for _ in range(2))
    for job in (fresh, overdue):
        assert job_store.begin_attempt(job.id, 1, "gone@host")
    job_store.redis.zadd(job_store.keys.leases(), {fresh.id: time.time() - 0.5, overdue.id: time.time() - 2})
    Maintenance(job_store, settings).tick()
    statuses = {job.id: (current.status if (current := job_store.get(job.id)) else None) for job in (fresh, overdue)}
    assert statuses == {fresh.id: JobStatus.RUNNING.value, overdue.id: JobStatus.RETRYING.value}
    assert job_store.redis.get(job_store.keys.lock("maintenance")) == b"a-dead-leader"  # still not the leader
