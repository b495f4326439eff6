"""Submitting a job: validate against the SQL task catalog, honour Idempotency-Key, then JobStore.submit."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import kombu.exceptions
from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from sqlalchemy import Engine, delete
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from longrun_common.catalog import TaskPolicy
from longrun_common.jobs import JobStore
from longrun_common.models import IdempotencyKey, Job, TaskRecord, new_id, utcnow
from longrun_common.publisher import Published
from longrun_common.rows import detached
from longrun_common.settings import Settings

from .errors import ApiError, field_path, invalid, invalid_many

log = logging.getLogger(__name__)

QUEUE_PATTERN = r"^[A-Za-z0-9_.-]{1,64}$"
_KEY_PATTERN = re.compile(r"^[\x20-\x7e]{1,255}$")
MAX_ARG_ERRORS = 20
# How long a catalog row (and its compiled args schema) is reused before SQL is read again: a redeployed
# worker's catalog change reaches submissions within this time.
CATALOG_TTL_SECONDS = 5.0
# A submission while no worker has registered the catalog yet is told to come back this many seconds later.
CATALOG_EMPTY_RETRY_AFTER = 5
_SCHEMA_ERRORS = (SchemaError, re.error, TypeError, ValueError)
# The shortest time limit a job may ask for. Below it the limit fires while the worker is still setting the
# attempt up (reading SQL, publishing `running`), so the job could only ever time out.
MIN_TIME_LIMIT = 1.0
# A job's hard limit stays this far below the broker's visibility timeout (see time_limits).
VISIBILITY_MARGIN = 60.0
# The furthest a job may be delayed (run_at / delay): a year.
MAX_DELAY = 365 * 24 * 3600.0


class Gateway(Protocol):
    """What submitting uses of `state.Gateway`, which imports this module (the catalog cache lives on it)."""

    @property
    def settings(self) -> Settings: ...
    @property
    def engine(self) -> Engine: ...
    @property
    def store(self) -> JobStore: ...
    @property
    def catalog(self) -> TaskCatalog: ...


class JobRequest(BaseModel):
    """`POST /v1/jobs` body. Strict: no coercion, no unknown keys."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str = Field(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
    args: dict[str, Any] = Field(default_factory=dict)
    queue: str | None = Field(None, pattern=QUEUE_PATTERN)
    priority: int = Field(0, ge=0, le=9)
    # Range-checked against the task's policy in time_limits(), which names the allowed range in its 422.
    soft_time_limit: float | None = Field(None, description=f"seconds; at least {MIN_TIME_LIMIT:g}, at most the "
                                          "task's max_time_limit, below time_limit")
    time_limit: float | None = Field(None, description=f"seconds; at least {MIN_TIME_LIMIT:g}, at most the task's "
                                     "max_time_limit")

    run_at: str | None = Field(None, max_length=64, description="ISO 8601 time with a timezone: start no earlier "
                               "than this (at most a year ahead); not with delay")
    delay: float | None = Field(None, description=f"seconds from now to start the job, 0 to {MAX_DELAY:.0f}; not "
                                "with run_at")

    def digest(self) -> str:
        """sha256 of the canonical JSON of the request (sorted keys, defaults filled in)."""
        canonical = json.dumps(self.model_dump(mode="json"), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Submitted:
    job: Job
    created: bool  # False: an Idempotency-Key replay of an earlier submission
    published: Published | None = None  # a new job's `queued` event; None after a replay or while Redis is down


def check_idempotency_key(value: str | None) -> str | None:
    """None when absent; 422 unless 1-255 printable ASCII characters."""
    if value is None:
        return None
    if not _KEY_PATTERN.match(value):
        raise invalid("Idempotency-Key", "must be 1-255 printable ASCII characters", value=value[:100])
    return value


def check_queue(settings: Settings, queue: str | None, task: str | None = None) -> None:
    """422 unless the queue is configured (LONGRUN_QUEUES: the queues some worker set consumes), since a job on
    any other queue would never run. `task` names the task whose declared default queue this is."""
    allowed = settings.queue_names
    if queue is None or queue in allowed:
        return
    if task is None:
        message = f"unknown queue {queue!r}; allowed queues: {', '.join(allowed)}"
    else:
        message = (f"task {task!r} defaults to queue {queue!r}, which no worker consumes here; "
                   f"name one of: {', '.join(allowed)}")
    raise invalid("queue", message, value=queue, allowed=list(allowed))


def load_task(session: Session, name: str) -> tuple[TaskRecord, TaskPolicy]:
    """The task's catalog row and policy, or 422 listing the known tasks."""
    record = session.get(TaskRecord, name)
    if record is None:
        known = sorted(session.exec(select(TaskRecord.name)).all())
        if not known:
            # No worker has published its catalog yet (a fresh deployment whose workers are still starting):
            # the task may well exist in a minute, so this is "not yet", not "no such task".
            raise ApiError(
                503,
                f"no worker has registered its tasks yet, so {name!r} cannot be checked; retry shortly",
                code="unavailable",
                details={"dependency": "catalog", "task": name},
                headers={"Retry-After": str(CATALOG_EMPTY_RETRY_AFTER)},
            )
        listing = ", ".join(known)
        raise invalid("task", f"unknown task {name!r}; known tasks: {listing}", value=name, known=known)
    try:
        policy = TaskPolicy.model_validate(record.policy or {})
    except ValidationError:
        log.error("task %s has an invalid policy in the catalog; using defaults", name)
        policy = TaskPolicy()
    return record, policy


@dataclass(frozen=True)
class CatalogTask:
    """A task's catalog row with its policy and its checked args validator (Draft 2020-12)."""

    record: TaskRecord
    policy: TaskPolicy
    validator: Draft202012Validator

    @classmethod
    def of(cls, record: TaskRecord, policy: TaskPolicy) -> CatalogTask:
        """503 when the catalog holds an invalid args schema (the worker that wrote it must be fixed)."""
        schema = record.args_schema or {}
        try:
            Draft202012Validator.check_schema(schema)
        except _SCHEMA_ERRORS:
            raise _invalid_schema(record.name) from None
        return cls(record, policy, Draft202012Validator(schema))


class TaskCatalog:
    """Catalog tasks by name, each kept for `ttl` seconds after it was read from SQL (0: read every time).

    Unknown names are never cached, so a task a worker has just registered is found at once. Thread-safe
    enough: two threads that miss together both read SQL, and the last one's copy stays.
    """

    def __init__(self, engine: Engine, ttl: float = CATALOG_TTL_SECONDS) -> None:
        self.engine = engine
        self.ttl = ttl
        self._tasks: dict[str, tuple[float, CatalogTask]] = {}  # name -> (monotonic time read, task)

    def get(self, name: str) -> CatalogTask:
        """The task, or 422 listing the known tasks. Blocking (SQL) on a miss."""
        now = time.monotonic()
        cached = self._tasks.get(name)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        expired = self._tasks.pop(name, None)  # a task gone from the catalog must not linger here
        with Session(self.engine) as session:
            record, policy = load_task(session, name)
        if expired is not None and expired[1].record.args_schema == record.args_schema:
            # The same schema as before: reuse its checked validator (checking a schema costs milliseconds).
            task = CatalogTask(record, policy, expired[1].validator)
        else:
            task = CatalogTask.of(record, policy)
        if self.ttl > 0:
            self._tasks[name] = (now, task)
        return task

    def clear(self) -> None:
        """Forget every cached task: the next submission of each reads SQL."""
        self._tasks.clear()


def check_args(task: CatalogTask, args: dict[str, Any]) -> None:
    """Validate args against the task's JSON Schema; each problem names its field."""
    try:
        errors = sorted(task.validator.iter_errors(args), key=lambda e: [str(p) for p in e.absolute_path])
    except _SCHEMA_ERRORS:  # a schema can pass check_schema and still fail while validating
        raise _invalid_schema(task.record.name) from None
    if not errors:
        return
    problems = []
    for error in errors[:MAX_ARG_ERRORS]:
        loc: list[Any] = list(error.absolute_path)
        if error.validator == "required" and isinstance(error.instance, dict):
            missing = [p for p in error.validator_value if p not in error.instance]
            named = [p for p in missing if error.message.startswith(repr(p))]
            loc.append((named or missing or ["?"])[0])
        problems.append({"field": field_path(loc, root="args"), "message": error.message})
    raise invalid_many(problems)


def _invalid_schema(task: str) -> ApiError:
    """Called while handling the schema error, which the log shows."""
    log.exception("task %s has an invalid args_schema in the catalog", task)
    return ApiError(
        503,
        f"task {task!r} has an invalid args schema in the catalog; redeploy its worker",
        code="unavailable",
        details={"dependency": "catalog"},
    )


def time_limits(
    request: JobRequest, policy: TaskPolicy, visibility_timeout: float | None = None
) -> tuple[float | None, float | None]:
    """The job's (soft, hard) limits: asked-for values within [MIN_TIME_LIMIT, ceiling], defaults from the policy.

    The ceiling is the task's max_time_limit, and stays VISIBILITY_MARGIN below the broker's visibility timeout
    so a job's hard limit always fires before Redis would hand its message to a second worker.
    """
    ceiling = policy.max_time_limit
    if visibility_timeout is not None:
        ceiling = min(ceiling, visibility_timeout - VISIBILITY_MARGIN)
    for name in ("soft_time_limit", "time_limit"):
        value = getattr(request, name)
        if value is not None and not MIN_TIME_LIMIT <= value <= ceiling:  # NaN fails too
            raise invalid(
                name,
                f"{value:g} is outside the allowed range of {MIN_TIME_LIMIT:g} to {ceiling:g} seconds",
                value=value, minimum=MIN_TIME_LIMIT, maximum=ceiling,
            )
    soft = request.soft_time_limit if request.soft_time_limit is not None else policy.soft_time_limit
    hard = request.time_limit if request.time_limit is not None else policy.time_limit
    if soft is not None and hard is not None and soft >= hard:
        field = "soft_time_limit" if request.soft_time_limit is not None else "time_limit"
        raise invalid(
            field, f"soft_time_limit ({soft:g}) must be below time_limit ({hard:g})", value=getattr(request, field)
        )
    return soft, hard


def start_time(request: JobRequest, now: datetime | None = None) -> datetime | None:
    """When a delayed job may start (None: at once), from `run_at` or `delay`; 422 for anything unclear."""
    now = now or utcnow()
    if request.run_at is not None and request.delay is not None:
        raise invalid("delay", "give either run_at or delay, not both", value=request.delay)
    if request.delay is not None:
        if not 0 <= request.delay <= MAX_DELAY:  # NaN fails too
            raise invalid("delay", f"{request.delay:g} is outside the allowed range of 0 to {MAX_DELAY:.0f} seconds",
                          value=request.delay, minimum=0, maximum=MAX_DELAY)
        at = now + timedelta(seconds=request.delay)
    elif request.run_at is not None:
        try:
            at = datetime.fromisoformat(request.run_at)
        except ValueError:
            raise invalid("run_at", "must be an ISO 8601 time such as 2030-01-31T09:00:00Z",
                          value=request.run_at) from None
        if at.tzinfo is None or at.utcoffset() is None:
            raise invalid("run_at", "must carry a timezone (such as Z or +02:00)", value=request.run_at)
        if at - now > timedelta(seconds=MAX_DELAY):
            raise invalid("run_at", "must be at most a year from now", value=request.run_at)
    else:
        return None
    return at.astimezone(UTC) if at > now else None  # a time already past: start at once


def build_job(gateway: Gateway, tenant: str, request: JobRequest) -> Job:
    """Validate the request against the catalog and build the (unsaved) job row."""
    settings = gateway.settings
    check_queue(settings, request.queue)
    task = gateway.catalog.get(request.task)
    check_args(task, request.args)
    policy = task.policy
    soft, hard = time_limits(request, policy, settings.visibility_timeout)
    queue = request.queue or policy.queue or settings.default_queue  # the job's, else the task's default
    if request.queue is None:
        check_queue(settings, queue, task=request.task)
    run_at = start_time(request)
    stamp = utcnow()
    # Every field with a default factory is given (no factory call in `detached`).
    return detached(
        Job,
        id=new_id(),
        created_at=stamp,
        updated_at=stamp,
        progress={},
        run_at=run_at,
        tenant=tenant,
        task=request.task,
        queue=queue,
        priority=request.priority,
        args=request.args,
        max_attempts=policy.max_attempts,
        soft_time_limit=soft,
        time_limit=hard,
    )


@dataclass(frozen=True)
class SubmitCall:
    """One `POST /v1/jobs` waiting in the submit lane (lane.py)."""

    tenant: str
    request: JobRequest
    key: str | None  # its Idempotency-Key


def submit_group(gateway: Gateway, calls: Sequence[SubmitCall]) -> list[Submitted | Exception]:
    """Accept every call of a group (the submit lane's handler): each call's outcome, or the exception its request
    raises, in order.

    Calls without an Idempotency-Key are validated one by one (a 422 fails only its own request) and the valid
    ones committed in ONE transaction, then announced together (`JobStore.submit_many`: every `queued` event in
    one round trip, then the messages, then the `dispatched` marks). When that transaction fails (the database is
    down), each of them gets the error a single submit gets, and nothing of theirs was published.
    Calls with a key take the single path, each in its own transaction: two requests racing with one key are told
    apart by the key's unique constraint, whose IntegrityError would roll back every job of a shared transaction.
    """
    outcomes: list[Submitted | Exception | None] = [None] * len(calls)
    jobs: list[Job] = []
    slots: list[int] = []  # the call each job of `jobs` answers
    for index, call in enumerate(calls):
        if call.key is not None:
            continue
        try:
            jobs.append(build_job(gateway, call.tenant, call.request))
        except Exception as exc:  # its request's own error (422, or 503 from the catalog), raised there
            outcomes[index] = exc
        else:
            slots.append(index)
    if jobs:
        try:
            published = gateway.store.submit_many(jobs)
        except Exception as exc:  # the group's transaction failed: every job of it was rolled back
            for index in slots:
                outcomes[index] = exc
        else:
            for index, job, done in zip(slots, jobs, published, strict=True):
                outcomes[index] = Submitted(job, created=True, published=done)
    for index, call in enumerate(calls):
        if call.key is not None:
            try:
                outcomes[index] = submit(gateway, call.tenant, call.request, call.key)
            except Exception as exc:
                outcomes[index] = exc
    return [outcome for outcome in outcomes if outcome is not None]


def submit(gateway: Gateway, tenant: str, request: JobRequest, key: str | None) -> Submitted:
    """Accept a job; with an Idempotency-Key, a repeat of the same body returns the first job."""
    digest = request.digest() if key is not None else ""  # only a key's replay check needs it (sha256 of a dump)
    if key is not None:
        existing = find_key(gateway, tenant, key)
        if existing is not None:
            return replay(gateway, existing, digest, key)
    job = build_job(gateway, tenant, request)
    idempotency = None
    if key is not None:
        expires = utcnow() + timedelta(seconds=gateway.settings.idempotency_ttl_seconds)
        idempotency = IdempotencyKey(tenant=tenant, key=key, request_hash=digest, job_id=job.id, expires_at=expires)
    published = None
    try:
        published = gateway.store.accept(job, idempotency)
    except IntegrityError:
        # Two requests with one key raced; the loser's transaction (job and key) rolled back as a whole.
        existing = find_key(gateway, tenant, key) if key is not None else None
        if existing is None:
            raise
        return replay(gateway, existing, digest, key or "")
    except kombu.exceptions.OperationalError as exc:
        # The row is committed and the queued event published; only the broker send failed. The job is
        # accepted: the reconciler re-sends messages for queued jobs.
        log.warning("job %s accepted but its message is not sent yet: %s", job.id, exc)
    return Submitted(job, created=True, published=published)


def find_key(gateway: Gateway, tenant: str, key: str) -> IdempotencyKey | None:
    """The live key, or None; an expired key is deleted so the new request replaces it."""
    now = utcnow()
    with Session(gateway.engine) as session:
        row = session.get(IdempotencyKey, (tenant, key))
        if row is None:
            return None
        expires = row.expires_at if row.expires_at.tzinfo else row.expires_at.replace(tzinfo=UTC)
        if expires > now:
            return row
        # Conditional: never delete a key a concurrent request has just renewed.
        session.execute(
            delete(IdempotencyKey).where(
                col(IdempotencyKey.tenant) == tenant,
                col(IdempotencyKey.key) == key,
                col(IdempotencyKey.expires_at) <= _sql_time(session, now),
            )
        )
        session.commit()
        return None


def replay(gateway: Gateway, existing: IdempotencyKey, digest: str, key: str) -> Submitted:
    if existing.request_hash != digest:
        raise ApiError(
            409,
            f"Idempotency-Key {key!r} was already used with a different request body",
            code="idempotency_conflict",
            details={"idempotency_key": key},
        )
    job = gateway.store.get(existing.job_id)
    if job is None:  # impossible through the foreign key; say so rather than crash
        raise ApiError(
            409,
            f"Idempotency-Key {key!r} refers to a job that no longer exists",
            code="idempotency_conflict",
            details={"idempotency_key": key},
        )
    return Submitted(job, created=False)


def _sql_time(session: Session, value: datetime) -> datetime:
    return value.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else value
