"""The reaper and reconciler: find jobs whose worker vanished or whose Redis state was lost, and repair them.

It runs inside processes the stack already has (each gateway and each worker's main process); a Redis lock
lets one of them act at a time. Every repair is safe to repeat: SQL transitions are conditional on the
attempt and status, and a duplicate message for an attempt is dropped by the worker.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import update
from sqlmodel import Session, col, select

from . import forkguard, held, workflows
from .catalog import TaskPolicy
from .dispatch import announce_attempt_end, is_delayed, queue_depth, scheduler_for, send_job
from .events import JobError
from .jobs import JobStore
from .models import Attempt, Job, TaskRecord
from .publisher import sql_floor
from .redis_clients import sync_redis
from .rows import creation_fields, table_of
from .settings import Settings
from .states import TERMINAL, JobStatus

log = logging.getLogger(__name__)

# 1: still the leader; 2: just became it (the lock had lapsed, or Redis lost it with everything else); 0: not.
_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 2 or 0
"""

# Remove a lease only if it is still the expired one we looked at (a live worker may have renewed it).
_DROP_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


def presence_interval(settings: Settings) -> float:
    """How often a worker's main process renews its presence key (and after Redis lost it, its jobs' leases)."""
    return min(settings.lease_seconds / 3, 1.0)


class Maintenance:
    """Lease reaper, forced cancels, and the reconciler, for one process."""

    def __init__(self, store: JobStore, settings: Settings, *, owner: str | None = None,
                 on_lost: Callable[[Job, JobError, bool], None] | None = None):
        self.store = store
        # Told of each attempt it ended because its lease expired (the job, why, whether it retries): the
        # process's metrics, and Flower, which would show the lost task as started forever.
        self.on_lost = on_lost
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex
        self._last_reconcile = 0.0
        self._next_reap = 0.0  # during a long reconcile pass: when to reap (and renew the lock) again
        # The broker's queues (for the queue-empty check) live on LONGRUN_BROKER_URL when that is its own Redis.
        self.broker = sync_redis(settings.broker_url) if settings.broker_url else store.redis
        self._renew = store.redis.register_script(_RENEW_LOCK)
        self._drop = store.redis.register_script(_DROP_EXPIRED)

    @property
    def lost_lease_grace(self) -> float:
        """How long a running job whose lease Redis lost waits for its worker to give it back before it is reaped.

        A live worker's main process renews its presence every presence interval; the renewal that finds the key
        gone (Redis lost everything) re-adds the leases of all its running jobs at once (the worker's
        presence.py). A dead worker never does. So one presence interval plus 2 s for the worker's Redis client
        to reconnect and its SQL read: a job whose worker was killed shortly before the wipe runs again about
        when its lost lease would have expired, not a heartbeat interval after the reconciler noticed."""
        return min(self.settings.lease_seconds, presence_interval(self.settings) + 2.0)

    def start(self) -> threading.Event:
        """Run in a daemon thread until the returned event is set."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="longrun-maintenance", daemon=True).start()
        return stop

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.reaper_interval):
            try:
                with forkguard.held():  # in a worker's main process, a pool process forked now would hang
                    self.tick()
            except Exception:  # Redis or SQL down: try again next tick
                log.warning("maintenance tick failed", exc_info=True)

    def _lead(self) -> int:
        """Take or keep the leader lock: 0 not the leader, 1 still the leader, 2 just became it."""
        # A dead leader's lock must lapse within one lease: a worker killed -9 is often the leader, and its
        # jobs' leases expire after `lease_seconds`; a longer lock would hold their requeue back past that.
        interval = self.settings.reaper_interval
        ttl_ms = int(max(interval * 2, min(max(3.0, interval * 5), self.settings.lease_seconds)) * 1000)
        return int(self._renew(keys=[self.store.keys.lock("maintenance")], args=[self.owner, ttl_ms]))

    def tick(self) -> None:
        lead = self._lead()
        if not lead:
            # The leader is often the worker just killed -9, and its lock outlives it by up to its TTL: a lease
            # the leader has let sit expired for 1.5 ticks is reaped by whoever sees it. Reaping twice is harmless
            # (every transition is conditional), and a live leader got there first, so this costs one ZRANGE.
            self.reap_expired_leases(overdue=self.settings.reaper_interval * 1.5)
            return
        held.release_delayed(self.store)  # first: a delayed job is released on time (± one tick)
        self.reap_expired_leases()
        self.force_cancels()
        held.dispatch_all(self.store)
        # A new leader reconciles at once: the lock is new after Redis lost every key (leases included), and the
        # short lease a lost one gets back (lost_lease_grace) should start then, not a reconcile period later.
        if lead == 2 or time.monotonic() - self._last_reconcile >= max(2.0, self.settings.reaper_interval * 3):
            self._last_reconcile = time.monotonic()
            self.reconcile()
            held.recount(self.store)

    # --- leases ---------------------------------------------------------------------------------------

    def reap_expired_leases(self, overdue: float = 0.0) -> list[str]:
        """Requeue (or dead-letter) running jobs whose lease expired (at least `overdue` seconds ago); returns the
        job ids handled."""
        now = time.time()
        leases = self.store.keys.leases()
        expired = [m.decode() for m in self.store.redis.zrangebyscore(leases, "-inf", now - overdue, start=0,
                                                                      num=200)]
        handled = []
        for job_id in expired:
            job = self.store.get(job_id)
            if job is None or job.status != JobStatus.RUNNING.value:
                self._drop(keys=[leases], args=[job_id, now])
                continue
            self._recover(job)
            self._drop(keys=[leases], args=[job_id, now])
            handled.append(job_id)
        return handled

    def _recover(self, job: Job) -> None:
        attempt_started = self._attempt_started(job)
        timed_out = bool(job.time_limit and attempt_started
                         and time.time() >= attempt_started.timestamp() + job.time_limit)
        # A running job has published (queued, running) even when SQL's throttled seq is still 0: after Redis lost
        # its hash, this event must still number past every seq a client saw, or clients drop it.
        floor = sql_floor(max(job.seq, 1))
        if job.cancel_requested_at is not None:
            error = JobError(type="cancelled", message="cancelled; its worker stopped")
            if self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING,),
                                    error=error, seq_floor=floor):
                self._tell_lost(job, error, retried=False)
            return
        if timed_out:
            error = JobError(type="timeout", message=f"hard time limit of {job.time_limit:g}s exceeded")
        else:
            error = JobError(type="lost", message=f"worker {job.worker} stopped renewing the job's lease")
        policy = self._policy(job.task)
        if policy.retries(error.type) and job.attempt < job.max_attempts:
            error.retryable = True
            log.warning("job %s attempt %s: %s; requeueing", job.id, job.attempt, error.message)
            if self.store.schedule_retry(job.id, job.attempt, error, 0.0, send=True, seq_floor=floor):
                self._tell_lost(job, error, retried=True)
        else:
            log.warning("job %s attempt %s: %s; no attempts left", job.id, job.attempt, error.message)
            if self.store.finish_if(job.id, job.attempt, JobStatus.FAILED, only_from=(JobStatus.RUNNING,),
                                    error=error, dead_letter=True, seq_floor=floor):
                self._tell_lost(job, error, retried=False)

    def _tell_lost(self, job: Job, error: JobError, *, retried: bool) -> None:
        try:
            if self.store.celery is not None:
                announce_attempt_end(self.store.celery, task_id=f"{job.id}.{job.attempt}",
                                     hostname=job.worker or "unknown", error_type=error.type,
                                     message=error.message, retried=retried)
            if self.on_lost is not None:
                self.on_lost(job, error, retried)
        except Exception:  # metrics and monitoring events must never stop the reaper
            log.warning("could not report the lost attempt of job %s", job.id, exc_info=True)

    def _attempt_started(self, job: Job) -> datetime | None:
        with Session(self.store.engine) as session:
            row = session.exec(select(Attempt).where(Attempt.job_id == job.id, Attempt.number == job.attempt)).first()
        if row is None:
            return None
        started = row.started_at
        return started if started.tzinfo else started.replace(tzinfo=UTC)

    def _policy(self, task: str) -> TaskPolicy:
        with Session(self.store.engine) as session:
            record = session.get(TaskRecord, task)
        return TaskPolicy.model_validate(record.policy) if record else TaskPolicy()

    # --- cancels --------------------------------------------------------------------------------------

    def force_cancels(self) -> None:
        """A running job that ignored its cancel request for the grace period is terminated."""
        cutoff = datetime.now(UTC) - timedelta(seconds=self.settings.cancel_grace_seconds)
        with Session(self.store.engine) as session:
            stuck = list(session.exec(select(Job).where(
                Job.status == JobStatus.RUNNING.value, col(Job.cancel_requested_at).is_not(None),
                col(Job.cancel_requested_at) < cutoff).limit(100)))
        for job in stuck:
            celery_id = self.store.redis.hget(self.store.keys.job(job.id), "celery_id")
            if celery_id and self.store.celery is not None:
                self.store.celery.control.revoke(celery_id.decode(), terminate=True, signal="SIGKILL")
            error = JobError(type="cancelled", message="cancelled by force after the grace period")
            if self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING,),
                                    error=error):
                self._tell_lost(job, error, retried=False)

    # --- reconciler -----------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Repair what Redis lost or never got: see the table in docs/INTERNALS.md."""
        self._republish_recent_endings()
        workflows.reconcile(self.store)  # steps ended but not applied, released but not started
        # Running jobs read on their own, first: active_jobs reads at most 500 in no particular order, and with a
        # backlog over that (the database returns queued rows first) a running job whose lease Redis lost, and
        # whose worker died, would never be given the short lease that lets the reaper requeue it.
        running = self._running_jobs()
        jobs = running + [j for j in self.store.active_jobs() if j.status != JobStatus.RUNNING.value]
        if not jobs:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(self.store.keys.job(job.id), ["attempt", "tenant", "dispatched", "claim"])
        hashes = [_JobHash(*(None if v is None else v.decode() for v in values)) for values in pipe.execute()]
        scheduler = scheduler_for(self.store.celery) if self.store.celery is not None else None
        empty = {q for q in {j.queue for j in jobs} if queue_depth(self.broker, self.store.keys, q, scheduler) == 0}
        settled_before = datetime.now(UTC) - timedelta(seconds=2)  # the gateway publishes right after its commit
        # Running jobs first (as read): restoring a lost lease is one command, and after Redis lost every key the
        # waiting jobs may be hundreds of re-announcements that would hold back the reaping of dead workers' jobs.
        pairs = list(zip(jobs, hashes, strict=True))
        self._next_reap = time.monotonic() + self.settings.reaper_interval
        for job, found in pairs:
            if not self._keep_reaping():
                return  # another instance leads now; it reconciles from its own reading
            if job.status == JobStatus.RUNNING.value:
                self._reconcile_running(job, found)
            elif _aware(job.updated_at) < settled_before:
                self._reconcile_waiting(job, found, queue_empty=job.queue in empty)

    def _running_jobs(self) -> list[Job]:
        """Every running job (at most one per worker process, so a bounded read)."""
        jobs = table_of(Job)
        return self.store.jobs_where(jobs.c.status == JobStatus.RUNNING.value, jobs.c.kind == "job", limit=5000)

    def _keep_reaping(self) -> bool:
        """Reap expired leases and renew the lock every reaper interval during a reconcile pass; False when the
        lock went to another instance. After Redis lost every key a pass re-announces every waiting job, which
        takes tens of seconds on a busy host: the short leases it gave back (lost_lease_grace) expire meanwhile,
        and their jobs must be requeued then, not when the pass ends."""
        if time.monotonic() < self._next_reap:
            return True
        self._next_reap = time.monotonic() + self.settings.reaper_interval
        if not self._lead():
            return False
        self.reap_expired_leases()
        return True

    def _reconcile_running(self, job: Job, found: _JobHash) -> None:
        redis, keys = self.store.redis, self.store.keys
        # No lease (Redis lost it): put back a short one that only a live worker renews; then the reaper acts.
        redis.zadd(keys.leases(), {job.id: time.time() + self.lost_lease_grace}, nx=True)
        if found.tenant is None and found.attempt is not None:
            # The hash was recreated by the worker's next report after a loss: restore who owns it.
            redis.hset(keys.job(job.id), mapping=cast("Mapping[str | bytes, str]", creation_fields(job)))

    def _reconcile_waiting(self, job: Job, found: _JobHash, *, queue_empty: bool) -> None:
        """A queued or retrying job that no worker is running."""
        celery, keys = self.store.celery, self.store.keys
        if job.cancel_requested_at is not None:
            # A cancel persisted while Redis was down: no worker holds the job, so end it here.
            self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED,
                                 only_from=(JobStatus.QUEUED, JobStatus.RETRYING),
                                 error=JobError(type="cancelled", message="cancelled by request"))
        elif found.attempt is None or int(found.attempt) < job.attempt:
            # Redis lost the job, or missed a requeue committed while it was down. A job that never started goes
            # back at its own priority: after Redis lost every queue these are all the waiting jobs, and sent as
            # urgent they would queue ahead of the jobs the reaper requeues from workers that die afterwards.
            log.warning("job %s (%s) lost from Redis; republishing", job.id, job.status)
            self.store.announce(job, urgent=job.status == JobStatus.RETRYING.value)
        elif celery is None or is_delayed(job):
            return  # a delayed job waits in SQL until held.release_delayed sends it
        elif job.status == JobStatus.RETRYING.value:
            due = _aware(job.next_retry_at) if job.next_retry_at else None
            if due and datetime.now(UTC) - due > timedelta(seconds=self.settings.lease_seconds + 5):
                # The delayed retry message was held by a worker that died.
                log.warning("job %s retry overdue; resending attempt %s", job.id, job.attempt)
                self._push_back_retry(job)
                send_job(celery, keys, job, urgent=True)
        elif found.dispatched != str(job.attempt):
            log.warning("job %s was accepted but its message never sent; sending it", job.id)
            send_job(celery, keys, job)  # it never reached the front of its queue: its own priority
            self.store.redis.hset(keys.job(job.id), "dispatched", str(job.attempt))
        else:
            self._resend_if_message_lost(job, found.claim, queue_empty)

    def _resend_if_message_lost(self, job: Job, claim: str | None, queue_empty: bool) -> None:
        """A queued job's message is gone when the worker that took it died before running it, or when it is
        neither on its (empty) queue nor claimed (kombu pops a message before recording it as unacked)."""
        keys, redis = self.store.keys, self.store.redis
        attempt, _, host = (claim or "").partition(":")
        if attempt == str(job.attempt):
            if redis.exists(keys.worker(host)):
                return  # a live worker holds it and is about to run it
            reason, urgent = f"worker {host} took its message and is gone", True  # its turn had come
        elif queue_empty:
            # After the broker lost its queues this is every waiting job: at their own priority, so they do not
            # queue ahead of jobs the reaper requeues from workers that die afterwards.
            reason, urgent = "its message is neither queued nor held by a worker", False
        else:
            return
        log.warning("job %s: %s; sending it again", job.id, reason)
        assert self.store.celery is not None
        redis.hdel(keys.job(job.id), "claim")
        send_job(self.store.celery, keys, job, urgent=urgent)

    def _republish_recent_endings(self) -> None:
        """A job that ended in SQL while its terminal event could not be published (Redis down between the
        two writes) gets that event now, so watchers see the end."""
        since = datetime.now(UTC) - timedelta(minutes=10)
        # Ids and statuses only: this runs every few seconds over up to 500 rows, in a busy worker's main process,
        # where whole rows (every JSON column decoded into a model) cost the most of the pass. A mismatch, rare,
        # reads its row.
        with Session(self.store.engine) as session:
            ended = session.execute(select(col(Job.id), col(Job.status)).where(
                col(Job.finished_at) > since, col(Job.status).in_([s.value for s in TERMINAL])
            ).order_by(col(Job.finished_at).desc()).limit(500)).all()
        if not ended:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for job_id, _ in ended:
            pipe.hget(self.store.keys.job(job_id), "status")
        for (job_id, status), live in zip(ended, pipe.execute(), strict=True):
            if live is not None and live.decode() != status:
                job = self.store.get(job_id)
                if job is not None and job.status == status:  # not changed since (a requeue would have)
                    log.warning("job %s is %s in SQL but %s in Redis; republishing its end", job_id, status,
                                live.decode())
                    self.store.publish_ending(job)

    def _push_back_retry(self, job: Job) -> None:
        """Move next_retry_at to now, so a resent retry is not resent again until it is overdue once more."""
        with Session(self.store.engine) as session:
            session.execute(update(Job).where(col(Job.id) == job.id, col(Job.attempt) == job.attempt,
                                              col(Job.status) == JobStatus.RETRYING.value)
                            .values(next_retry_at=datetime.now(UTC)))
            session.commit()


@dataclass(frozen=True)
class _JobHash:
    """The fields of a job's Redis hash the reconciler compares with SQL."""

    attempt: str | None
    tenant: str | None
    dispatched: str | None
    claim: str | None


def _aware(value: datetime) -> datetime:
    """SQLite returns naive datetimes; they were written as UTC."""
    return value if value.tzinfo else value.replace(tzinfo=UTC)
