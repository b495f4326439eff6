"""Dead letters: jobs that exhausted their attempts. List, inspect, requeue (one or by filter), delete."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

import kombu.exceptions
import redis
from fastapi import APIRouter, Depends, Query, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic_core import PydanticCustomError
from sqlalchemy import delete
from sqlmodel import Session, col, select

from longrun_common.jobs import JobStore
from longrun_common.models import DeadLetter, Job
from longrun_common.states import IllegalTransition
from longrun_common.views import iso

from .. import views
from ..contract import DeadLetterDetail, DeadLetterPage, Deleted, JobView, Requeued, error_responses, ok
from ..deps import TEXT_PATTERN, GatewayDep, SessionDep, TenantDep, json_body
from ..errors import ApiError, invalid, not_found
from ..pagination import DEFAULT_LIMIT, MAX_LIMIT, page
from ..state import Gateway

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/dead-letters", tags=["dead letters"])

MAX_BULK = 500


def _timestamp(value: Any) -> Any:
    """An ISO 8601 string becomes a datetime (in JSON a time can only be a string); other types fail as usual."""
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value)
        except ValueError:
            # A custom error keeps pydantic's "Value error, " prefix out of the 422 message.
            raise PydanticCustomError("datetime_from_iso", "must be an ISO 8601 time, e.g. 2026-01-31T12:00:00Z") \
                from None
    return value


Timestamp = Annotated[datetime, BeforeValidator(_timestamp)]


class BulkRequeue(BaseModel):
    """`POST /v1/dead-letters/requeue` body: which dead letters to requeue (oldest first)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    task: str | None = Field(None, max_length=128, pattern=TEXT_PATTERN)
    error_type: str | None = Field(None, max_length=255, pattern=TEXT_PATTERN)
    since: Timestamp | None = Field(None, description="failed at or after this time (ISO 8601; no offset = UTC)")
    until: Timestamp | None = Field(None, description="failed before this time (ISO 8601; no offset = UTC)")
    limit: int = Field(100, ge=1, le=MAX_BULK)


BulkRequeueDep = Annotated[BulkRequeue, Depends(json_body(BulkRequeue, allow_empty=True))]
_BULK_BODY = {"requestBody": {"content": {"application/json": {"schema": BulkRequeue.model_json_schema()}}}}


@dataclass(frozen=True)
class Filter:
    """Which of a tenant's dead letters: the one filter of listing, requeue by filter and delete by filter.
    Empty strings (a blank form field, `?task=`) mean "any"."""

    task: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def statement(self, session: Session, tenant: str) -> Any:
        statement = select(DeadLetter).where(col(DeadLetter.tenant) == tenant)
        if self.task:
            statement = statement.where(col(DeadLetter.task) == self.task)
        if self.error_type:
            statement = statement.where(col(DeadLetter.error)["type"].as_string() == self.error_type)
        if self.since is not None:
            statement = statement.where(col(DeadLetter.failed_at) >= _sql_time(session, self.since))
        if self.until is not None:
            statement = statement.where(col(DeadLetter.failed_at) < _sql_time(session, self.until))
        return statement

    def oldest(self, session: Session, tenant: str, limit: int) -> Sequence[DeadLetter]:
        """Up to `limit` matching dead letters, oldest failure first (what the bulk operations act on)."""
        statement = self.statement(session, tenant).order_by(col(DeadLetter.failed_at), col(DeadLetter.id))
        return session.exec(statement.limit(limit)).all()  # type: ignore[no-any-return]


def _utc(value: datetime) -> datetime:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def _sql_time(session: Session, value: datetime) -> datetime:
    """UTC; naive on SQLite, where the timestamps are stored naive (in UTC)."""
    value = _utc(value)
    return value.replace(tzinfo=None) if session.get_bind().dialect.name == "sqlite" else value


def _checked(since: datetime | None, until: datetime | None) -> None:
    if since is not None and until is not None and _utc(since) >= _utc(until):
        raise invalid("until", f"must be after since ({_utc(since).isoformat()})", value=until.isoformat())


def _query_times(since: str | None, until: str | None) -> tuple[datetime | None, datetime | None]:
    """`?since=&until=` as times; empty means no bound. A 422 names the parameter."""
    times: list[datetime | None] = []
    for name, value in (("since", since), ("until", until)):
        try:
            times.append(_timestamp(value) if value else None)
        except ValueError as exc:
            raise invalid(name, str(exc), value=value) from None
    _checked(*times)
    return times[0], times[1]


_SINCE = Query(max_length=64, description="failed at or after this time (ISO 8601; no offset = UTC); empty = any",
               json_schema_extra={"format": "date-time"})
_UNTIL = Query(max_length=64, description="failed before this time (ISO 8601; no offset = UTC); empty = any",
               json_schema_extra={"format": "date-time"})
_TASK = Query(max_length=128, pattern=TEXT_PATTERN, description="task name; empty = any")
_ERROR_TYPE = Query(max_length=255, pattern=TEXT_PATTERN, description="`error.type`; empty = any")


def _items(gateway: Gateway, session: Session, letters: Sequence[DeadLetter]) -> list[dict[str, Any]]:
    ids = [letter.job_id for letter in letters]
    jobs = {job.id: job for job in session.exec(select(Job).where(col(Job.id).in_(ids))).all()} if ids else {}
    presented = dict(zip(jobs, views.present_many(gateway, list(jobs.values())), strict=True))
    return [
        {
            "id": letter.id,
            "job_id": letter.job_id,
            "task": letter.task,
            "error": {k: v for k, v in (letter.error or {}).items() if k != "traceback"},
            "attempts": letter.attempts,
            "failed_at": iso(letter.failed_at),
            "job": presented.get(letter.job_id),
        }
        for letter in letters
    ]


def _load(session: Session, tenant: str, letter_id: str) -> DeadLetter:
    letter = session.get(DeadLetter, letter_id) if views.is_uuid(letter_id) else None
    if letter is None or letter.tenant != tenant:
        raise not_found("dead letter", letter_id)
    return letter


def _requeue(store: JobStore, job_id: str) -> Job | None:
    """Requeue one job; a Redis outage after the SQL commit still counts (the reconciler publishes it)."""
    try:
        return store.requeue(job_id)
    except (redis.RedisError, kombu.exceptions.OperationalError) as exc:
        log.warning("job %s requeued in SQL; publishing deferred: %s", job_id, exc)
        return store.get(job_id)


@router.get("", response_model=None, responses={**ok(200, DeadLetterPage), **error_responses(401, 422, 503)})
def list_dead_letters(
    tenant: TenantDep,
    gateway: GatewayDep,
    session: SessionDep,
    task: Annotated[str | None, _TASK] = None,
    error_type: Annotated[str | None, _ERROR_TYPE] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    job_id: Annotated[str | None, Query(max_length=64, pattern=TEXT_PATTERN, description="one job's letter")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """The tenant's dead letters, newest failure first."""
    statement = Filter(task, error_type, *_query_times(since, until)).statement(session, tenant)
    if job_id:  # a job page finds its letter (traceback, attempt history) by the job's id
        statement = statement.where(col(DeadLetter.job_id) == job_id)
    letters, next_cursor = page(session, statement, col(DeadLetter.failed_at), col(DeadLetter.id), limit, cursor)
    return {"items": _items(gateway, session, letters), "next_cursor": next_cursor}


@router.post(
    "/requeue",
    status_code=202,
    openapi_extra=_BULK_BODY,
    response_model=None,
    responses={**ok(202, Requeued), **error_responses(401, 413, 422, 503)},
)
def requeue_many(tenant: TenantDep, gateway: GatewayDep, session: SessionDep, body: BulkRequeueDep) -> JSONResponse:
    """Requeue up to `limit` matching dead letters, oldest first: `{"requeued": [job ids]}`."""
    _checked(body.since, body.until)
    matching = Filter(body.task, body.error_type, body.since, body.until).oldest(session, tenant, body.limit)
    job_ids = list(dict.fromkeys(letter.job_id for letter in matching))
    requeued = []
    for job_id in job_ids:
        try:
            if _requeue(gateway.store, job_id) is not None:
                requeued.append(job_id)
        except IllegalTransition as exc:  # requeued or changed concurrently: skip, report the rest
            log.info("dead letter of job %s not requeued: %s", job_id, exc)
    return JSONResponse({"requeued": requeued}, status_code=202)


@router.delete("", response_model=None, responses={**ok(200, Deleted), **error_responses(401, 422, 503)})
def delete_many(
    tenant: TenantDep,
    session: SessionDep,
    task: Annotated[str | None, _TASK] = None,
    error_type: Annotated[str | None, _ERROR_TYPE] = None,
    since: Annotated[str | None, _SINCE] = None,
    until: Annotated[str | None, _UNTIL] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_BULK, description="delete at most this many, oldest first")] = 100,
) -> dict[str, Any]:
    """Forget up to `limit` matching dead letters, oldest failure first (the jobs stay failed): `{"deleted": n}`.
    Bounded so one request stays short; repeat until `deleted` is 0 to clear a larger set."""
    matching = Filter(task, error_type, *_query_times(since, until)).oldest(session, tenant, limit)
    ids = [letter.id for letter in matching]
    if not ids:
        return {"deleted": 0}
    # The tenant again in the DELETE itself: the ids were read in this transaction, but say so anyway.
    result = session.execute(delete(DeadLetter).where(col(DeadLetter.id).in_(ids), col(DeadLetter.tenant) == tenant))
    session.commit()
    return {"deleted": int(result.rowcount)}  # type: ignore[attr-defined]


@router.get(
    "/{letter_id}", response_model=None, responses={**ok(200, DeadLetterDetail), **error_responses(401, 404, 503)}
)
def get_dead_letter(letter_id: str, tenant: TenantDep, gateway: GatewayDep, session: SessionDep) -> dict[str, Any]:
    """One dead letter in full: as listed, plus the traceback and every attempt (the job carries its args)."""
    letter = _load(session, tenant, letter_id)
    item = _items(gateway, session, [letter])[0]
    item["traceback"] = (letter.error or {}).get("traceback")
    item["history"] = [
        {
            "attempt": attempt.number,
            "status": attempt.status,
            "worker": attempt.worker,
            "error": attempt.error,
            "started_at": iso(attempt.started_at),
            "finished_at": iso(attempt.finished_at),
        }
        for attempt in gateway.store.attempts(letter.job_id)
    ]
    return item


@router.post(
    "/{letter_id}/requeue",
    status_code=202,
    response_model=None,
    responses={**ok(202, JobView, "requeued: the job"), **error_responses(401, 404, 409, 503)},
)
def requeue_one(letter_id: str, tenant: TenantDep, gateway: GatewayDep, session: SessionDep) -> JSONResponse:
    """The job starts again as a new attempt with a fresh retry budget; 202 and the job."""
    letter = _load(session, tenant, letter_id)
    try:
        job = _requeue(gateway.store, letter.job_id)
    except IllegalTransition as exc:
        raise ApiError(
            409, f"job {letter.job_id} cannot be requeued: {exc}", details={"job_id": letter.job_id}
        ) from None
    if job is None:
        raise not_found("dead letter", letter_id)
    return JSONResponse(views.present(gateway.settings, job, views.snapshot(gateway, job.id)), status_code=202)


@router.delete(
    "/{letter_id}",
    status_code=204,
    response_model=None,
    responses={**ok(204, None, "deleted"), **error_responses(401, 404, 503)},
)
def delete_dead_letter(letter_id: str, tenant: TenantDep, session: SessionDep) -> Response:
    """Forget a dead letter (the job itself stays failed)."""
    letter = _load(session, tenant, letter_id)
    session.delete(letter)
    session.commit()
    return Response(status_code=204)
