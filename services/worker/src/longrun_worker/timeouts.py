"""A time limit that stops an attempt anywhere — even before the job started — still ends it.

Celery's hard time limit kills the pool process and *acknowledges the message* (the worker's main process does
this in `Request.on_timeout`; `acks_late` does not protect it). Whatever the killed process had not written
stays unwritten, and nothing else would ever write it:

* killed before `begin_attempt` (a limit of a few milliseconds fires while the child still reads SQL), the job
  stayed `queued` for good: its message was gone, and its claim named a live worker, so the reconciler took
  the message for held and never resent it;
* the same on a retry's message left the job `retrying`, and the reconciler resent the overdue retry every
  lease period, each copy killed again before the attempt began — an attempt that never counted, forever.

So the main process, which sees every hard timeout, records it as the end of that attempt: `timeout`, then a
retry or a failure by the task's policy, exactly as if the task had raised. A soft limit that fires before the
task's own code takes the same path in the child (app.py), or, when it fired in Celery's code before the task
function was called, in the main process (`on_failure`). And when a message is
acknowledged, the claim it recorded is dropped, so the reconciler never again mistakes an acknowledged
message for one a live worker still holds.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from typing import Any

import redis
from celery import Celery
from celery.exceptions import SoftTimeLimitExceeded
from celery.worker.request import Request
from redis.commands.core import Script

from longrun_common import forkguard
from longrun_common.catalog import TaskPolicy
from longrun_common.events import JobError
from longrun_common.jobs import JobStore
from longrun_common.models import Job
from longrun_common.publisher import sql_floor
from longrun_common.settings import Settings
from longrun_common.states import JobStatus

from . import offloop
from .api import REGISTRY
from .resources import Resources, get_resources

log = logging.getLogger(__name__)

# The main process records a hard timeout this long after it fired: billiard sends SIGTERM, waits 0.1 s, then
# SIGKILL, so by then the child writes nothing more (its writes would be fenced anyway; this just avoids
# racing a transition the child is in the middle of).
SETTLE_SECONDS = 0.5

# Drop the claim only if it is still the one this message recorded (a newer attempt's claim stays).
_RELEASE_CLAIM = """
if redis.call('HGET', KEYS[1], 'claim') == ARGV[1] then
  return redis.call('HDEL', KEYS[1], 'claim')
end
return 0
"""

RUNNING = (JobStatus.RUNNING,)


def end_timed_out_attempt(res: Resources, job_id: str, attempt: int, worker: str, message: str) -> bool:
    """End `attempt` of `job_id` as a `timeout` (retrying or failed) if this worker holds it or it never began.

    Every write is conditional on the attempt and status, so a stale call (the child finished, the reaper got
    there first, another worker runs the attempt) changes nothing. Returns whether this call ended it.
    """
    store = res.store
    job = _attempt_to_end(store, job_id, attempt, worker)
    if job is None:
        return False
    floor = sql_floor(job.seq)
    if job.cancel_requested_at is not None:
        return store.finish_if(job_id, attempt, JobStatus.CANCELLED, only_from=RUNNING, seq_floor=floor,
                               error=JobError(type="cancelled", message="cancelled; its time limit stopped it"))
    policy = _policy(job.task)
    error = JobError(type="timeout", message=message)
    if policy.retries(error.type) and attempt < job.max_attempts:
        error.retryable = True
        log.warning("job %s attempt %s: %s; retrying", job_id, attempt, message)
        return store.schedule_retry(job_id, attempt, error, policy.backoff(attempt), send=True, seq_floor=floor)
    log.warning("job %s attempt %s: %s; no attempts left", job_id, attempt, message)
    return store.finish_if(job_id, attempt, JobStatus.FAILED, only_from=RUNNING, error=error, dead_letter=True,
                           seq_floor=floor)


def _attempt_to_end(store: JobStore, job_id: str, attempt: int, worker: str) -> Job | None:
    """The job, if `attempt` is this worker's to end: running here, or begun now because it never began."""
    job = store.get(job_id)
    if job is None or job.attempt != attempt:
        return None
    if JobStatus(job.status) in (JobStatus.QUEUED, JobStatus.RETRYING):
        # Killed before it began: begin it now so the attempt is recorded and counts against the budget.
        if store.begin_attempt(job_id, attempt, worker) is not None:
            return job
        # The limit may have interrupted the child's own begin_attempt while its COMMIT was on the wire:
        # PostgreSQL still commits it, after our read above; ours waited for that row and found it running.
        # That attempt is ours to end too (else it stays running until the reaper calls it lost).
        job = store.get(job_id)
    running_here = (job is not None and job.attempt == attempt and job.status == JobStatus.RUNNING.value
                    and job.worker == worker)
    return job if running_here else None


def _policy(task: str) -> TaskPolicy:
    definition = REGISTRY.get(task)
    return definition.policy if definition is not None else TaskPolicy()


def request_class(settings: Settings, app: Celery) -> type[Request]:
    """The Celery request class of every Longrun task: records hard timeouts and releases claims on ack."""

    class LongrunRequest(Request):  # type: ignore[misc]  # celery is untyped
        def on_timeout(self, soft: bool, timeout: float) -> None:
            super().on_timeout(soft, timeout)
            if soft:
                return  # the child raises SoftTimeLimitExceeded, and the runner records it
            self._record(f"hard time limit of {timeout:g}s exceeded; the worker process was killed")

        def on_failure(self, exc_info: Any, send_failed_event: bool = True, return_ok: bool = False) -> None:
            super().on_failure(exc_info, send_failed_event=send_failed_event, return_ok=return_ok)
            # A soft limit that fired in Celery's own code, before the task function was even called.
            exc = getattr(exc_info, "exception", None)
            exc = getattr(exc, "exc", exc)  # unwrap billiard's ExceptionWithTraceback
            if isinstance(exc, SoftTimeLimitExceeded):
                self._record("soft time limit exceeded before the task ran")

        def _record(self, message: str) -> None:
            job_id, attempt = _job_of(self.kwargs)
            if job_id is not None:
                # Off the consumer's event loop: SQL may be slow, and the child must be done first.
                threading.Thread(target=_record_timeout, name="longrun-timeout", daemon=True,
                                 args=(settings, app, job_id, attempt, str(self.hostname), message)).start()

        def acknowledge(self) -> None:
            super().acknowledge()
            job_id, attempt = _job_of(self.kwargs)
            if job_id is None:
                return
            res = get_resources(settings, app)
            key, claim = res.keys.job(job_id), f"{attempt}:{self.hostname}"
            # Off the consumer's loop (offloop.py); a failure is logged there: the reconciler's claim check only
            # delays a resend.
            offloop.call_soon(("claim", key, claim), lambda: _release_script(res.redis)(keys=[key], args=[claim]))

    return LongrunRequest


@functools.lru_cache(maxsize=4)
def _release_script(client: redis.Redis[bytes]) -> Script:
    return client.register_script(_RELEASE_CLAIM)


def _job_of(kwargs: Any) -> tuple[str | None, int]:
    if not isinstance(kwargs, dict) or "job_id" not in kwargs:
        return None, 0
    return str(kwargs["job_id"]), int(kwargs.get("attempt", 1))


def _record_timeout(settings: Settings, app: Celery, job_id: str, attempt: int, worker: str, message: str) -> None:
    time.sleep(SETTLE_SECONDS)
    try:
        with forkguard.held():  # a thread of the main process, which forks the pool's processes
            end_timed_out_attempt(get_resources(settings, app), job_id, attempt, worker, message)
    except Exception:  # SQL or Redis down: the reaper (running job) or the reconciler (claim released) repairs
        log.exception("could not record the time limit of job %s attempt %s", job_id, attempt)
