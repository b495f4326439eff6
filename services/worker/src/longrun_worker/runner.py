"""Running one attempt of one job inside a Celery task: every state change of a running job happens here."""

from __future__ import annotations

import json
import logging
import time
import traceback
from datetime import UTC, datetime
from typing import Any, NoReturn

from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from pydantic import BaseModel, ValidationError
from sqlalchemy import update
from sqlmodel import Session, col

from longrun_common import telemetry
from longrun_common.events import JobError, Progress, dumps
from longrun_common.models import Job
from longrun_common.publisher import EventSpec, Published, sql_floor
from longrun_common.states import JobStatus

from .api import JobCancelled, JobDrained, JobFailed, JobFenced, PermanentError, TaskDefinition, TransientError
from .context import JobContext
from .metrics import AttemptMetrics, record_retry
from .reporter import Reporter
from .resources import Resources

log = logging.getLogger(__name__)

RUNNING = (JobStatus.RUNNING,)


def run_attempt(celery_task: Task, definition: TaskDefinition, res: Resources, job_id: str, attempt: int) -> None:
    """Run `attempt` of `job_id` unless the message is stale, the job is cancelled, or another worker has it."""
    with telemetry.job_context(job_id, attempt):
        _run_attempt(celery_task, definition, res, job_id, attempt)


def _run_attempt(celery_task: Task, definition: TaskDefinition, res: Resources, job_id: str, attempt: int) -> None:
    store, settings = res.store, res.settings
    worker = str(celery_task.request.hostname or "worker")
    task_id = str(celery_task.request.id)
    # A retry's wait counts from its due time, which taking the attempt overwrites: read it first. A first
    # attempt's counts from its creation, which the taking returns: it needs no read.
    retried = store.get(job_id) if attempt > 1 else None
    job = store.begin_attempt(job_id, attempt, worker, unless_cancelled=True)
    if job is None:
        _not_taken(res, job_id, attempt, worker, task_id)
    lease = settings.lease_seconds
    started = time.time()
    published = res.publisher.publish(res.redis, EventSpec(
        job_id, "status", JobStatus.RUNNING, attempt, progress=Progress.model_validate(job.progress or {}),
        lease_until=started + lease, seq_floor=sql_floor(job.seq),
        fields={"started_at": repr(started), "worker": worker, "celery_id": task_id},
    ))
    if published.fenced:
        raise Ignore()
    metrics = AttemptMetrics(definition.name)
    metrics.begin(_waited(retried or job, started))
    try:
        _run_started(celery_task, definition, res, job, attempt, worker, task_id, published.seq, metrics)
    finally:
        metrics.end(metrics.outcome)


def _not_taken(res: Resources, job_id: str, attempt: int, worker: str, task_id: str) -> NoReturn:
    """The attempt could not be taken: say why, cancel a job that was cancelled before it started, and end the
    message with Ignore (no Celery event), so Flower keeps what the attempt's own run (or the reaper) reported
    for this task id instead of a SUCCESS that never happened."""
    store = res.store
    job = store.get(job_id)
    if job is None:
        log.warning("dropping message for unknown job %s", job_id)
        raise Ignore()
    if job.attempt != attempt or JobStatus(job.status).terminal:
        log.info("dropping stale message for job %s attempt %s (job at attempt %s, %s)",
                 job_id, attempt, job.attempt, job.status)
        if job.attempt == attempt and job.status == JobStatus.CANCELLED.value and job.started_at is None:
            res.events.revoked(task_id, worker)  # cancelled while queued: it never ran
        raise Ignore()
    if job.cancel_requested_at is not None:
        store.finish_if(job_id, attempt, JobStatus.CANCELLED, only_from=(JobStatus.QUEUED, JobStatus.RETRYING),
                        error=JobError(type="cancelled", message="cancelled before it started"))
        res.events.revoked(task_id, worker)
        raise Ignore()
    log.info("job %s attempt %s already taken or cancelled", job_id, attempt)
    raise Ignore()


def _run_started(celery_task: Task, definition: TaskDefinition, res: Resources, job: Job, attempt: int,
                 worker: str, task_id: str, first_seq: int, metrics: AttemptMetrics) -> None:
    """The attempt is ours and announced: run the task and record how it ended (`metrics.outcome`).

    How it ends for Celery (and so for Flower): success returns; a failure raises JobFailed (FAILURE); a retry
    is Celery's retry under the next attempt's task id `{job_id}.{attempt + 1}` (RETRY, then a new task);
    a cancel raises JobCancelled (FAILURE with the reason); a fenced attempt ends with Ignore, leaving what the
    reaper reported for it.
    """
    next_task_id = f"{job.id}.{attempt + 1}"
    store, settings, job_id, lease = res.store, res.settings, job.id, res.settings.lease_seconds
    resumed_from = _last_checkpoint(res, job)
    sql_writer = _SqlProgress(res, job_id, attempt)
    last_seq = [first_seq]  # if Redis loses the job mid-run, its events continue after this

    def emit(progress: Progress, checkpoint: dict[str, Any] | None) -> Published:
        fields = {"checkpoint": dumps(checkpoint)} if checkpoint is not None else None
        result = res.publisher.publish(res.redis, EventSpec(
            job_id, "progress", JobStatus.RUNNING, attempt, progress=progress,
            lease_until=time.time() + lease, fields=fields, seq_floor=last_seq[0]))
        if not result.fenced:
            last_seq[0] = max(last_seq[0], result.seq)
            sql_writer.maybe_write(progress, checkpoint, result.seq)
            res.events.progress(task_id, worker, progress.model_dump_json(exclude_none=True))
        return result

    def heartbeat() -> int:
        return res.publisher.heartbeat(res.redis, job_id, attempt, time.time() + lease)

    reporter = Reporter(emit, heartbeat, interval=settings.progress_interval, heartbeat_every=lease / 3,
                        on_publish=metrics.reported)
    ctx = JobContext(job_id=job_id, attempt=attempt, tenant=job.tenant, task=job.task, reporter=reporter,
                     resumed_from=resumed_from, settings=settings, session_factory=lambda: Session(res.engine),
                     inputs=job.inputs)
    reporter.begin()
    try:
        args = definition.args_model.model_validate(job.args)
        result = definition.fn(ctx, args)
    except JobFenced:
        reporter.close()
        metrics.outcome = "fenced"
        log.warning("job %s attempt %s was superseded; stopping without writing", job_id, attempt)
        raise Ignore() from None
    except JobCancelled:
        _run_cancel_hook(definition, ctx)
        reporter.close()
        sql_writer.write(reporter.snapshot(), reporter.last_checkpoint)
        store.finish_if(job_id, attempt, JobStatus.CANCELLED, only_from=RUNNING, progress=reporter.snapshot(),
                        error=JobError(type="cancelled", message="cancelled by request"), published_seq=last_seq[0])
        metrics.outcome = "cancelled"
        raise
    except JobDrained as exc:
        reporter.close()
        sql_writer.write(reporter.snapshot(), reporter.last_checkpoint)
        error = JobError(type="drained", message=f"worker {worker} shut down; resuming on another worker",
                         retryable=True)
        if store.schedule_retry(job_id, attempt, error, 0.0, send=False, progress=reporter.snapshot(),
                                extra_budget=True, seq_floor=last_seq[0]):
            metrics.outcome = "drained"
            record_retry(definition.name, "drained")
            raise celery_task.retry(countdown=0, kwargs={"job_id": job_id, "attempt": attempt + 1},
                                    exc=exc, max_retries=None, task_id=next_task_id) from None
        metrics.outcome = "fenced"
        raise Ignore() from None
    except Exception as exc:  # every failure is recorded (SoftTimeLimitExceeded is an Exception too)
        reporter.close()
        sql_writer.write(reporter.snapshot(), reporter.last_checkpoint)
        error = classify(exc, definition)
        if error.retryable and attempt < job.max_attempts:
            delay = definition.policy.backoff(attempt)
            if store.schedule_retry(job_id, attempt, error, delay, send=False, progress=reporter.snapshot(),
                                    seq_floor=last_seq[0]):
                metrics.outcome = "retrying"
                record_retry(definition.name, error.type)
                raise celery_task.retry(countdown=delay, kwargs={"job_id": job_id, "attempt": attempt + 1},
                                        exc=exc, max_retries=None, task_id=next_task_id) from None
            metrics.outcome = "fenced"
            raise Ignore() from None
        if store.finish_if(job_id, attempt, JobStatus.FAILED, only_from=RUNNING, error=error,
                           progress=reporter.snapshot(), dead_letter=True, published_seq=last_seq[0]):
            raise JobFailed(f"{error.type}: {error.message}") from exc
        metrics.outcome = "fenced"
        raise Ignore() from None
    # Nothing pending is published, nor written to SQL, on its own: the success event carries the final progress
    # (SQL gets it in the same write), and a succeeded job never resumes, so its checkpoint is of no further use.
    # A short step (a fan-out's) costs one event and one SQL transaction fewer, and its parent one event fewer.
    reporter.close(publish_pending=False)
    if reporter.fenced:
        metrics.outcome = "fenced"
        raise Ignore()
    store.finish_if(job_id, attempt, JobStatus.SUCCEEDED, only_from=RUNNING, result=_jsonable(result),
                    progress=reporter.snapshot(complete=True), published_seq=last_seq[0])
    metrics.outcome = "succeeded"


def _waited(job: Job, started: float) -> float | None:
    """How long the attempt waited for a worker: since submit, a requeue, or the retry's due time."""
    if job.attempt > 1 and job.next_retry_at is not None:
        since: datetime | None = job.next_retry_at
    else:
        since = job.created_at if job.attempt == 1 else job.updated_at
    if since is None:
        return None
    since = since if since.tzinfo else since.replace(tzinfo=UTC)
    return started - since.timestamp()


def classify(exc: BaseException, definition: TaskDefinition) -> JobError:
    """The job error for an exception, and whether the task's policy retries it."""
    trace = "".join(traceback.format_exception(exc))[-8000:]
    if isinstance(exc, SoftTimeLimitExceeded):
        kind, message = "timeout", "soft time limit exceeded"
    elif isinstance(exc, ValidationError):
        return JobError(type="invalid_args", message=str(exc), traceback=trace, retryable=False)
    elif isinstance(exc, PermanentError):
        return JobError(type="PermanentError", message=str(exc), traceback=trace, retryable=False)
    else:
        kind, message = type(exc).__name__, str(exc) or type(exc).__name__
    retryable = (
        isinstance(exc, TransientError)
        or definition.policy.retries(kind)
        or (bool(definition.retry_on) and isinstance(exc, definition.retry_on))
    )
    return JobError(type=kind, message=message, traceback=trace, retryable=retryable)


def _run_cancel_hook(definition: TaskDefinition, ctx: JobContext) -> None:
    if definition.on_cancel is None:
        return
    try:
        definition.on_cancel(ctx)
    except Exception:
        log.exception("on_cancel hook of %s failed", definition.name)


def _last_checkpoint(res: Resources, job: Job) -> dict[str, Any] | None:
    """The newest checkpoint: Redis has the latest report's; SQL has a throttled copy that survives Redis.
    A first attempt has none: no earlier attempt ran to write one (no read, once per job)."""
    if job.attempt == 1:
        return job.checkpoint
    raw = res.redis.hget(res.keys.job(job.id), "checkpoint")
    if raw:
        value = json.loads(raw)
        return value if isinstance(value, dict) else None
    return job.checkpoint


def _jsonable(result: Any) -> Any:
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    return json.loads(dumps(result))


class _SqlProgress:
    """Progress and checkpoints reach SQL at most once per `sql_progress_interval` (Redis gets every one).

    The interval counts from the attempt's start: a job shorter than that writes no progress row while it runs
    (its ending writes the final progress; a failure or a cancel writes its checkpoint first), which spares a
    fan-out of short steps one SQL transaction each. Until then Redis has every report and checkpoint.
    """

    def __init__(self, res: Resources, job_id: str, attempt: int):
        self._res, self._job_id, self._attempt = res, job_id, attempt
        self._last = time.monotonic()

    def maybe_write(self, progress: Progress, checkpoint: dict[str, Any] | None, seq: int) -> None:
        if time.monotonic() - self._last >= self._res.settings.sql_progress_interval:
            self.write(progress, checkpoint, seq)

    def write(self, progress: Progress, checkpoint: dict[str, Any] | None, seq: int | None = None) -> None:
        self._last = time.monotonic()
        values: dict[str, Any] = {"progress": progress.model_dump(mode="json", exclude_none=True)}
        if checkpoint is not None:
            values["checkpoint"] = checkpoint
        if seq is not None:
            values["seq"] = seq
        with Session(self._res.engine) as session:
            session.execute(update(Job).where(col(Job.id) == self._job_id, col(Job.attempt) == self._attempt,
                                              col(Job.status) == JobStatus.RUNNING.value).values(**values))
            session.commit()
