"""Job state changes that touch SQL and Redis together: submit, cancel, requeue, and fenced transitions.

Order of writes: SQL first (the system of record), then the event (Redis), then any Celery message. A crash
between them leaves SQL ahead of Redis, which the reconciler repairs; never the reverse.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import kombu.exceptions
import redis
from celery import Celery
from sqlalchemy import ClauseElement, ColumnElement, Engine, insert, update
from sqlalchemy import select as core_select
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, delete, select

from . import statements, telemetry, workflows
from .catalog import TaskPolicy
from .dispatch import send_job, send_jobs
from .events import JobError, Progress, now
from .fairness import DELAYED
from .keys import Keys
from .models import Attempt, DeadLetter, IdempotencyKey, Job, TaskRecord, utcnow
from .publisher import LEASE_DROP, EventSpec, Published, Publisher, sql_floor
from .rows import creation_fields, epoch, job_of, row_values, table_of
from .states import TERMINAL, JobStatus, check_transition

log = logging.getLogger(__name__)

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)


@dataclass
class JobStore:
    """SQL + Redis + Celery for job state changes; one per process."""

    engine: Engine
    redis: redis.Redis[bytes]
    keys: Keys
    publisher: Publisher
    celery: Celery | None = None

    def session(self) -> Session:
        """A session whose rows stay readable after commit (they are handed to callers detached)."""
        return Session(self.engine, expire_on_commit=False)

    # --- submission -------------------------------------------------------------------------------------

    def submit(self, job: Job, idempotency: IdempotencyKey | None = None) -> Job:
        """Commit the job row (and its idempotency key), then publish `queued` and the Celery message.

        If Redis is down after the commit the job is still accepted: the reconciler publishes it later.
        """
        self.accept(job, idempotency)
        return job

    def accept(self, job: Job, idempotency: IdempotencyKey | None = None) -> Published | None:
        """`submit`, returning the `queued` event's publish (None when Redis was down: the reconciler will).

        A Core INSERT, not the ORM's unit of work: the row is written exactly as `session.add` would write it
        (every column from the model), at a fraction of the CPU, and `job` stays a plain detached object.
        """
        with self.engine.begin() as connection, telemetry.span("commit job", attributes={"longrun.job_id": job.id}):
            connection.execute(insert(table_of(Job)), [row_values(job)])
            if idempotency is not None:  # after the job, so the key's foreign key holds
                connection.execute(insert(table_of(IdempotencyKey)), [row_values(idempotency)])
        try:
            return self.announce(job)
        except redis.RedisError:
            log.warning("job %s accepted but not yet published (Redis unavailable); reconciler will", job.id)
            return None

    def submit_many(self, jobs: list[Job]) -> list[Published | None]:
        """Commit every row in one transaction, then publish every job's `queued` event and send every message,
        each step pipelined in one round trip.

        Each entry of the result is the job's publish, or None when Redis was down (the job is accepted all the
        same: the reconciler publishes and sends it later, as after a single submit). A job whose message could
        not be sent is not marked dispatched, so the reconciler sends it.
        """
        with self.engine.begin() as connection, telemetry.span("commit jobs", attributes={"longrun.jobs": len(jobs)}):
            connection.execute(insert(table_of(Job)), [row_values(job) for job in jobs])
        return self.announce_many(jobs)

    def announce_many(self, jobs: Sequence[Job]) -> list[Published | None]:
        """`announce` for many jobs already in SQL (a submit group, a batch submit, a workflow's released steps):
        every `queued` event in one pipelined round trip, then every message (`dispatch_many`).
        On a Redis or broker failure the jobs stay accepted: see `submit_many`."""
        try:
            published: list[Published | None] = list(self.publisher.publish_many(self.redis, [
                self._status_event(job) for job in jobs]))
        except redis.RedisError as exc:
            log.warning("%d jobs accepted but not yet published (%s); the reconciler will", len(jobs), exc)
            return [None] * len(jobs)
        if self.celery is None:
            return published
        try:
            reasons = self.dispatch_many(jobs)
        except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
            log.warning("%d jobs accepted but their messages not all sent (%s); the reconciler will", len(jobs), exc)
            return published
        return [None if p is None else replace(p, queued_reason=reason)
                for p, reason in zip(published, reasons, strict=True)]

    def _status_event(self, job: Job) -> EventSpec:
        """The event stating a waiting job's current (queued/retrying) status, with its creation fields."""
        return EventSpec(job.id, "status", JobStatus(job.status), job.attempt, fields=creation_fields(job),
                         seq_floor=sql_floor(job.seq))

    def announce(self, job: Job, *, urgent: bool = False) -> Published:
        """Publish the job's current (queued/retrying) status and send its message; the reconciler reuses this
        after Redis lost the job. Unlike `announce_many`, a Redis or broker failure raises."""
        published = self.publisher.publish(self.redis, self._status_event(job))
        if self.celery is not None:
            published = replace(published, queued_reason=self.dispatch(job, urgent=urgent))
        return published

    def dispatch(self, job: Job, *, urgent: bool = False) -> str | None:
        """`dispatch_many` for one job."""
        return self.dispatch_many([job], urgent=urgent)[0]

    def dispatch_many(self, jobs: Sequence[Job], *, urgent: bool = False) -> list[str | None]:
        """Send (or hold) the jobs' messages, then mark each in its hash, in one pipelined round trip:
        `dispatched` (the reconciler resends a queued job whose send never happened) and `queued_reason` while
        the fair scheduler holds it. The marks follow the sends: a mark must never claim a message not sent."""
        assert self.celery is not None
        reasons = send_jobs(self.celery, self.keys, jobs, urgent=urgent)
        pipe = self.redis.pipeline(transaction=False)
        for job, reason in zip(jobs, reasons, strict=True):
            if reason != DELAYED:  # a delayed job is marked when maintenance releases it (held.py)
                key = self.keys.job(job.id)
                pipe.hset(key, "dispatched", str(job.attempt))
                if reason is None:
                    pipe.hdel(key, "queued_reason")
                else:
                    pipe.hset(key, "queued_reason", reason)
        if len(pipe):
            pipe.execute()
        return reasons

    # --- cancellation -----------------------------------------------------------------------------------

    def request_cancel(self, job_id: str) -> Job | None:
        """Persist a cancel request; a queued or retrying job is cancelled at once, a running one at its
        next report (or forcibly by the reaper after the grace period). None when the job does not exist."""
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            if job.status in {s.value for s in TERMINAL}:
                return job
            if job.kind == workflows.KIND_WORKFLOW:  # a workflow node: cascade to every step below it
                return workflows.cancel(self, job)
            stamp = utcnow()
            session.execute(
                update(Job).where(col(Job.id) == job_id, col(Job.cancel_requested_at).is_(None))
                .values(cancel_requested_at=stamp, updated_at=stamp)
            )
            session.commit()
        self.redis.hset(self.keys.job(job_id), "cancel", "1")
        # A job no worker holds is cancelled here; the conditional update loses the race to a starting worker.
        self.finish_if(job_id, job.attempt, JobStatus.CANCELLED, only_from=(JobStatus.QUEUED, JobStatus.RETRYING),
                       error=JobError(type="cancelled", message="cancelled by request"))
        return self.get(job_id)

    # --- requeue ----------------------------------------------------------------------------------------

    def requeue(self, job_id: str) -> Job | None:
        """A failed or cancelled job starts again as a new attempt with a fresh retry budget."""
        with self.session() as session:
            job = session.get(Job, job_id)
            if job is None:
                return None
            check_transition(job.status, JobStatus.QUEUED, requeue=True)
            aborted = (job.error or {}).get("type") == workflows.ABORTED  # cancelled by its own workflow
            record = session.get(TaskRecord, job.task)
            budget = TaskPolicy.model_validate(record.policy).max_attempts if record else 1
            job.attempt += 1
            job.max_attempts = job.attempt + budget - 1
            job.status = JobStatus.QUEUED.value
            job.error = job.result = None
            job.finished_at = job.cancel_requested_at = job.next_retry_at = None
            job.waiting = False
            job.updated_at = utcnow()
            session.add(job)
            session.execute(delete(DeadLetter).where(col(DeadLetter.job_id) == job_id))
            session.commit()
            session.refresh(job)
        self.redis.hdel(self.keys.job(job_id), "cancel", "error", "result", "finished_at")
        self.announce(job)
        if job.parent_id:  # a workflow step: the workflow resumes from here
            workflows.reopen(self, job, revive_aborted=not aborted)
        return job

    # --- fenced transitions (worker, reaper) ------------------------------------------------------------

    def get(self, job_id: str) -> Job | None:
        with self.session() as session:
            return session.get(Job, job_id)

    def transition(
        self,
        job_id: str,
        attempt: int,
        target: JobStatus,
        *,
        only_from: tuple[JobStatus, ...],
        values: dict[str, Any] | None = None,
    ) -> bool:
        """Conditional SQL update: applies only while the job is at `attempt` and in one of `only_from`.

        This is the SQL half of fencing: a stale attempt's write matches no row.
        """
        with self.engine.begin() as connection:
            return self._transition(connection, job_id, attempt, target, only_from, values) is not None

    def _transition(self, connection: Connection, job_id: str, attempt: int, target: JobStatus,
                    only_from: tuple[JobStatus, ...], values: dict[str, Any] | None) -> Job | None:
        """`transition` inside the caller's transaction; the changed row (RETURNING: no second read), or None.
        `values` are plain values (a SQL expression among them builds a statement of its own); a `seq` only
        ever raises the job's."""
        for source in only_from:
            check_transition(source, target)
        values = values or {}
        if any(isinstance(value, ClauseElement) for value in values.values()):
            jobs = table_of(Job)
            row = connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id, jobs.c.attempt == attempt, jobs.c.status.in_([s.value for s in only_from]))
                .values(status=target.value, updated_at=utcnow(), **values)
                .returning(jobs)
            ).one_or_none()
        else:
            columns = tuple(sorted(values))
            statement = statements.end(target.value, tuple(s.value for s in only_from), columns)
            row = connection.execute(statement, {"p_id": job_id, "p_attempt": attempt, "v_updated_at": utcnow(),
                                                 **{f"v_{name}": values[name] for name in columns}}).one_or_none()
        return None if row is None else job_of(row)

    def finish_if(
        self,
        job_id: str,
        attempt: int,
        target: JobStatus,
        *,
        only_from: tuple[JobStatus, ...],
        error: JobError | None = None,
        result: Any = None,
        progress: Progress | None = None,
        dead_letter: bool = False,
        seq_floor: int = 0,
        published_seq: int = 0,
    ) -> bool:
        """End the job (succeeded/failed/cancelled) if it is still at `attempt` in `only_from`; publish the
        terminal event; dead-letter a failure when asked. Returns whether this call ended it.

        One transaction records the end, the attempt's end, the dead letter and, for a workflow step, the end's
        application to its parent (`workflows.settle`: the parent's count, the successor's release); the event
        follows the commit, then what the settle started (`workflows.after_settle`).

        `published_seq`: the newest seq this attempt has published (the runner knows it). SQL's seq becomes it in
        the same transaction: the ending's own seq is only one more, well within SEQ_GAP_AFTER_LOSS, so no write
        after the publish is needed. Without it the ending's seq is written after the publish.
        """
        stamp = utcnow()
        values: dict[str, Any] = {"finished_at": stamp, "next_retry_at": None, "error": None}
        if error is not None:
            values["error"] = error.model_dump(mode="json")
        if result is not None:
            values["result"] = result
        if progress is not None:
            values["progress"] = progress.model_dump(mode="json", exclude_none=True)
        if published_seq:
            values["seq"] = published_seq  # only ever raises it (statements.end)
        with self.engine.begin() as connection:
            job = self._transition(connection, job_id, attempt, target, only_from, values)
            if job is None:
                return False
            self._end_attempt(connection, job_id, attempt, target, error)
            if dead_letter and error is not None:
                connection.execute(insert(table_of(DeadLetter)), [row_values(DeadLetter(
                    job_id=job_id, tenant=job.tenant, task=job.task, error=error.model_dump(mode="json"),
                    attempts=attempt))])
            settlement = workflows.settle(connection, job) if job.parent_id else None
        self.publish_ending(job, seq_floor=seq_floor or published_seq, error=error, record_seq=not published_seq)
        if settlement is not None:
            try:
                workflows.after_settle(self, settlement)
            except Exception:
                log.exception("could not advance the workflow of step %s; the reconciler will", job.id)
        return True

    def publish_ending(self, job: Job, *, seq_floor: int = 0, error: JobError | None = None,
                       record_seq: bool = True) -> Published:
        """The terminal event of a job that has ended in SQL (also used to repair one Redis missed).
        `record_seq=False`: SQL's seq is already close enough (see `finish_if`)."""
        if error is None and job.error:
            error = JobError.model_validate(job.error)
        published = self.publisher.publish(
            self.redis,
            EventSpec(job.id, "status", JobStatus(job.status), job.attempt,
                      progress=Progress.model_validate(job.progress or {}), error=error, result=job.result,
                      lease_until=LEASE_DROP, seq_floor=seq_floor or sql_floor(job.seq),
                      fields={"finished_at": epoch(job.finished_at)}),
        )
        if record_seq:
            self._record_seq(job.id, published)
        return published

    def schedule_retry(
        self,
        job_id: str,
        attempt: int,
        error: JobError,
        delay: float,
        *,
        send: bool,
        progress: Progress | None = None,
        extra_budget: bool = False,
        seq_floor: int = 0,
    ) -> bool:
        """Running attempt `attempt` ends; the job waits `delay` s as `retrying` for attempt `attempt + 1`.

        The `retrying` event carries the new attempt number, which fences the old attempt at once. `send`
        publishes the next message here (the reaper); the worker instead lets Celery's retry send it.
        `extra_budget` gives the job one more attempt (a drained job did not fail).
        """
        next_at = now() + delay
        values: dict[str, Any] = {
            "attempt": attempt + 1,
            "next_retry_at": datetime.fromtimestamp(next_at, UTC),
            "error": error.model_dump(mode="json"),
        }
        if extra_budget:
            values["max_attempts"] = Job.max_attempts + 1
        if progress is not None:
            values["progress"] = progress.model_dump(mode="json", exclude_none=True)
        if not self.transition(job_id, attempt, JobStatus.RETRYING, only_from=(JobStatus.RUNNING,), values=values):
            return False
        self.end_attempt(job_id, attempt, JobStatus.RETRYING, error)
        published = self.publisher.publish(
            self.redis,
            EventSpec(job_id, "status", JobStatus.RETRYING, attempt + 1, progress=progress, error=error,
                      next_retry_at=next_at, lease_until=LEASE_DROP, seq_floor=seq_floor),
        )
        self._record_seq(job_id, published)
        if send and self.celery is not None:
            job = self.get(job_id)
            assert job is not None
            send_job(self.celery, self.keys, job, countdown=delay, urgent=True)  # it had already started
        return True

    def begin_attempt(self, job_id: str, attempt: int, worker: str, *, unless_cancelled: bool = False) -> Job | None:
        """Queued/retrying → running for exactly one taker of `attempt`; records the attempt. Returns the job as
        it is now (the update's RETURNING: a worker needs no read first), or None when this call did not take it
        (then read the job to tell why). `unless_cancelled`: a job with a cancel request is not taken.

        The update overwrites `updated_at` and `next_retry_at`: a caller that needs them as they were (how long a
        retry waited) reads the job first.
        """
        for source in (JobStatus.QUEUED, JobStatus.RETRYING):
            check_transition(source, JobStatus.RUNNING)
        stamp = utcnow()
        # One transaction: a process killed in between (a hard time limit) must not leave a running job
        # without its attempt row, which the attempt's ending would then never update. Core statements built
        # once (statements.py): the ORM's unit of work cost more than the two statements themselves.
        with self.engine.begin() as connection:
            row = connection.execute(statements.take(unless_cancelled), {
                "p_id": job_id, "p_attempt": attempt, "p_stamp": stamp, "p_worker": worker}).one_or_none()
            if row is None:
                return None
            connection.execute(statements.add_attempt(), {
                "job_id": job_id, "number": attempt, "status": JobStatus.RUNNING.value, "worker": worker,
                "started_at": stamp})
        return job_of(row)

    def end_attempt(self, job_id: str, attempt: int, status: JobStatus, error: JobError | None = None) -> None:
        with self.engine.begin() as connection:
            self._end_attempt(connection, job_id, attempt, status, error)

    @staticmethod
    def _end_attempt(connection: Connection, job_id: str, attempt: int, status: JobStatus,
                     error: JobError | None) -> None:
        connection.execute(statements.end_attempt(), {
            "p_job_id": job_id, "p_number": attempt, "p_status": status.value, "p_finished_at": utcnow(),
            "p_error": error.model_dump(mode="json") if error else None})

    def attempts(self, job_id: str) -> list[Attempt]:
        with self.session() as session:
            return list(session.exec(select(Attempt).where(Attempt.job_id == job_id).order_by(col(Attempt.number))))

    def _record_seq(self, job_id: str, published: Published) -> None:
        if published.fenced:
            return
        with self.session() as session:
            session.execute(update(Job).where(col(Job.id) == job_id, col(Job.seq) < published.seq)
                            .values(seq=published.seq))
            session.commit()

    def active_jobs(self, limit: int = 500) -> list[Job]:
        # Workflow nodes never reach a worker and waiting steps are not sent yet: workflows.reconcile has them.
        jobs = table_of(Job)
        return self.jobs_where(jobs.c.status.in_(ACTIVE), jobs.c.kind == "job", jobs.c.waiting.is_(False),
                               limit=limit)

    def jobs_where(self, *conditions: ColumnElement[bool], limit: int,
                   order_by: ColumnElement[Any] | None = None) -> list[Job]:
        """Jobs read with Core (rows.job_of), not the ORM: maintenance reads hundreds each pass, and during a
        fan-out the ORM's per-row cost there competed with the worker's own event loop."""
        jobs = table_of(Job)
        query = core_select(jobs).where(*conditions).limit(limit)
        if order_by is not None:
            query = query.order_by(order_by)
        with self.engine.connect() as connection:
            return [job_of(row) for row in connection.execute(query)]


