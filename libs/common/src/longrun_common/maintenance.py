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
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import cast

from sqlalchemy import update
from sqlmodel import Session, col, select

from .catalog import TaskPolicy
from .dispatch import send_job
from .events import JobError
from .jobs import JobStore, creation_fields
from .models import Attempt, Job, TaskRecord
from .settings import Settings
from .states import TERMINAL, JobStatus

log = logging.getLogger(__name__)

_RENEW_LOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

# Remove a lease only if it is still the expired one we looked at (a live worker may have renewed it).
_DROP_EXPIRED = """
local score = redis.call('ZSCORE', KEYS[1], ARGV[1])
if score and tonumber(score) <= tonumber(ARGV[2]) then
  return redis.call('ZREM', KEYS[1], ARGV[1])
end
return 0
"""


class Maintenance:
    """Lease reaper, forced cancels, and the reconciler, for one process."""

    def __init__(self, store: JobStore, settings: Settings, *, owner: str | None = None):
        self.store = store
        self.settings = settings
        self.owner = owner or uuid.uuid4().hex
        self._last_reconcile = 0.0
        self._renew = store.redis.register_script(_RENEW_LOCK)
        self._drop = store.redis.register_script(_DROP_EXPIRED)

    def start(self) -> threading.Event:
        """Run in a daemon thread until the returned event is set."""
        stop = threading.Event()
        threading.Thread(target=self.run, args=(stop,), name="longrun-maintenance", daemon=True).start()
        return stop

    def run(self, stop: threading.Event) -> None:
        while not stop.wait(self.settings.reaper_interval):
            try:
                self.tick()
            except Exception:  # Redis or SQL down: try again next tick
                log.warning("maintenance tick failed", exc_info=True)

    def is_leader(self) -> bool:
        ttl_ms = int(max(3.0, self.settings.reaper_interval * 5) * 1000)
        return bool(self._renew(keys=[self.store.keys.lock("maintenance")], args=[self.owner, ttl_ms]))

    def tick(self) -> None:
        if not self.is_leader():
            return
        self.reap_expired_leases()
        self.force_cancels()
        if time.monotonic() - self._last_reconcile >= max(2.0, self.settings.reaper_interval * 3):
            self._last_reconcile = time.monotonic()
            self.reconcile()

    # --- leases ---------------------------------------------------------------------------------------

    def reap_expired_leases(self) -> list[str]:
        """Requeue (or dead-letter) running jobs whose lease expired; returns the job ids handled."""
        now = time.time()
        leases = self.store.keys.leases()
        expired = [m.decode() for m in self.store.redis.zrangebyscore(leases, "-inf", now, start=0, num=200)]
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
        if job.cancel_requested_at is not None:
            self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING,),
                                 error=JobError(type="cancelled", message="cancelled; its worker stopped"))
            return
        if timed_out:
            error = JobError(type="timeout", message=f"hard time limit of {job.time_limit:g}s exceeded")
        else:
            error = JobError(type="lost", message=f"worker {job.worker} stopped renewing the job's lease")
        policy = self._policy(job.task)
        if policy.retries(error.type) and job.attempt < job.max_attempts:
            error.retryable = True
            log.warning("job %s attempt %s: %s; requeueing", job.id, job.attempt, error.message)
            self.store.schedule_retry(job.id, job.attempt, error, 0.0, send=True, seq_floor=job.seq)
        else:
            log.warning("job %s attempt %s: %s; no attempts left", job.id, job.attempt, error.message)
            self.store.finish_if(job.id, job.attempt, JobStatus.FAILED, only_from=(JobStatus.RUNNING,),
                                 error=error, dead_letter=True)

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
            self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.RUNNING,),
                                 error=JobError(type="cancelled", message="cancelled by force after the grace period"))

    # --- reconciler -----------------------------------------------------------------------------------

    def reconcile(self) -> None:
        """Repair what Redis lost: re-announce queued jobs, resend overdue retries, re-lease running jobs,
        finish cancels that could not reach Redis, and republish terminal events Redis never got."""
        self._republish_recent_endings()
        redis, keys = self.store.redis, self.store.keys
        jobs = self.store.active_jobs()
        if not jobs:
            return
        pipe = redis.pipeline(transaction=False)
        for job in jobs:
            pipe.hmget(keys.job(job.id), ["attempt", "tenant", "dispatched"])
        states = pipe.execute()
        now = datetime.now(UTC)
        settle = timedelta(seconds=2)  # the gateway publishes right after its commit; don't race it
        overdue = timedelta(seconds=self.settings.lease_seconds + 5)
        for job, (redis_attempt, tenant, dispatched) in zip(jobs, states, strict=True):
            # Redis is behind SQL when the hash is gone (lost data) or holds an older attempt (a requeue
            # committed while Redis was down).
            behind = redis_attempt is None or int(redis_attempt) < job.attempt
            updated = job.updated_at if job.updated_at.tzinfo else job.updated_at.replace(tzinfo=UTC)
            settled = now - updated > settle
            if job.status == JobStatus.RUNNING.value:
                # No lease (Redis lost it): give the worker one lease period to renew it, then the reaper acts.
                redis.zadd(keys.leases(), {job.id: time.time() + self.settings.lease_seconds}, nx=True)
                if tenant is None and redis_attempt is not None:
                    # The hash was recreated by the worker's next report after a loss: restore who owns it.
                    restored = cast("Mapping[str | bytes, str]", creation_fields(job))  # str keys are fine
                    redis.hset(keys.job(job.id), mapping=restored)
            elif job.cancel_requested_at is not None and settled:
                # A cancel persisted while Redis was down: no worker holds the job, so end it here.
                self.store.finish_if(job.id, job.attempt, JobStatus.CANCELLED,
                                     only_from=(JobStatus.QUEUED, JobStatus.RETRYING),
                                     error=JobError(type="cancelled", message="cancelled by request"),
                                     seq_floor=job.seq)
            elif behind and settled:
                log.warning("job %s (%s) lost from Redis; republishing", job.id, job.status)
                self.store.announce(job)
            elif (job.status == JobStatus.QUEUED.value and settled and self.store.celery is not None
                  and (dispatched or b"").decode() != str(job.attempt)):
                log.warning("job %s was accepted but its message never sent; sending it", job.id)
                send_job(self.store.celery, keys, job)
                redis.hset(keys.job(job.id), "dispatched", str(job.attempt))
            elif job.status == JobStatus.RETRYING.value and job.next_retry_at is not None:
                due = job.next_retry_at if job.next_retry_at.tzinfo else job.next_retry_at.replace(tzinfo=UTC)
                if now - due > overdue and self.store.celery is not None:
                    log.warning("job %s retry overdue; resending attempt %s", job.id, job.attempt)
                    self._push_back_retry(job)
                    send_job(self.store.celery, keys, job)

    def _republish_recent_endings(self) -> None:
        """A job that ended in SQL while its terminal event could not be published (Redis down between the
        two writes) gets that event now, so watchers see the end."""
        since = datetime.now(UTC) - timedelta(minutes=10)
        with Session(self.store.engine) as session:
            ended = list(session.exec(select(Job).where(col(Job.finished_at) > since,
                                                        col(Job.status).in_([s.value for s in TERMINAL])
                                                        ).order_by(col(Job.finished_at).desc()).limit(500)))
        if not ended:
            return
        pipe = self.store.redis.pipeline(transaction=False)
        for job in ended:
            pipe.hget(self.store.keys.job(job.id), "status")
        for job, status in zip(ended, pipe.execute(), strict=True):
            if status is not None and status.decode() != job.status:
                log.warning("job %s is %s in SQL but %s in Redis; republishing its end", job.id, job.status,
                            status.decode())
                self.store.publish_ending(job)

    def _push_back_retry(self, job: Job) -> None:
        """Move next_retry_at to now, so a resent retry is not resent again until it is overdue once more."""
        with Session(self.store.engine) as session:
            session.execute(update(Job).where(col(Job.id) == job.id, col(Job.attempt) == job.attempt,
                                              col(Job.status) == JobStatus.RETRYING.value)
                            .values(next_retry_at=datetime.now(UTC)))
            session.commit()
