"""Jobs: submit, get (with long-poll), list, cancel."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session, col, select
from starlette.concurrency import run_in_threadpool

from longrun_common.models import Job
from longrun_common.states import TERMINAL, JobStatus
from longrun_common.views import job_view

from .. import views
from ..batch import BatchRequest, build_jobs
from ..contract import LOCATION, JobBatch, JobPage, JobView, error_responses, ok
from ..deps import (
    TEXT_PATTERN,
    GatewayDep,
    SessionDep,
    StoreDep,
    Submission,
    TenantDep,
    json_body,
    resolve_submission,
    submission,
)
from ..errors import REDIS_DOWN, invalid, not_found
from ..live import LiveUnavailable
from ..pagination import DEFAULT_LIMIT, MAX_LIMIT, page, stored_utc
from ..state import Gateway
from ..submission import JobRequest, SubmitCall, check_idempotency_key

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

DEGRADED_POLL_SECONDS = 1.0
# A status, or empty for "any": the 422 for anything else names the allowed values (the pattern).
STATUS_FILTER = f"^({'|'.join(s.value for s in JobStatus)})?$"

_parse_job = json_body(JobRequest)
_JOB_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": JobRequest.model_json_schema()}}},
    # Read by the handler itself (no FastAPI dependency: see submit_job); documented as a Header() would be.
    "parameters": [{"name": "Idempotency-Key", "in": "header", "required": False,
                    "schema": {"anyOf": [{"type": "string"}, {"type": "null"}], "title": "Idempotency-Key"}}],
}


@router.post(
    "",
    status_code=202,
    openapi_extra=_JOB_BODY,
    response_model=None,
    responses={
        **ok(202, JobView, "accepted: the new job", LOCATION),
        **ok(200, JobView, "an Idempotency-Key replay: the job this key first created", LOCATION),
        **error_responses(401, 409, 413, 422, 429, 503),
    },
)
async def submit_job(request: Request) -> JSONResponse:
    """Accept a job: 202 and its view; an Idempotency-Key replay returns the same job with 200.

    The hottest request, so it is lean: no FastAPI dependencies (each costs more than the checks it runs), the
    checks that need no I/O on the event loop, and one hop to the submit lane (lane.py), which commits it in a
    group with the submits waiting at that moment.
    """
    accepted = await resolve_submission(request, _parse_job, request.headers.get("idempotency-key"))
    key = check_idempotency_key(accepted.idempotency_key)
    gateway = accepted.gateway
    result = await gateway.submits.run(SubmitCall(accepted.tenant, accepted.body, key))
    job = result.job
    # A new job's live fields are what was just published (no HGETALL); a replay reads them afresh.
    live = views.queued_snapshot(job, result.published) if result.created else None
    if result.created:
        gateway.metrics.jobs_submitted.labels(job.task).inc()
    if live is None:
        live = await views.asnapshot(gateway, job.id)
    view = views.present(gateway.settings, job, live)
    return JSONResponse(view, status_code=202 if result.created else 200, headers={"Location": f"/v1/jobs/{job.id}"})


BatchSubmission = Annotated[Submission[BatchRequest], Depends(submission(BatchRequest, document_key=False))]
_BATCH_BODY = {
    "requestBody": {"required": True, "content": {"application/json": {"schema": BatchRequest.model_json_schema()}}}
}


@router.post(
    ":batch",
    status_code=202,
    openapi_extra=_BATCH_BODY,
    response_model=None,
    responses={
        **ok(202, JobBatch, "accepted: every job, in the order submitted"),
        **error_responses(401, 413, 422, 429, 503),
    },
)
def submit_batch(accepted: BatchSubmission) -> JSONResponse:
    """Accept up to 1,000 jobs in one transaction: all or none (one 422 names each problem as `jobs[i].field`)."""
    if accepted.idempotency_key is not None:  # refused, not ignored: a client must not believe its retry is safe
        raise invalid("Idempotency-Key", "is not supported on a batch submit; submit the jobs one by one to use it")
    gateway = accepted.gateway
    jobs = build_jobs(gateway, accepted.tenant, accepted.body)
    published = gateway.store.submit_many(jobs)
    for job in jobs:
        gateway.metrics.jobs_submitted.labels(job.task).inc()
    # Built from what was just written (the rows and each `queued` event's seq): no read-back per job.
    items = [views.present(gateway.settings, job, views.queued_snapshot(job, done)) for job, done in
             zip(jobs, published, strict=True)]
    return JSONResponse({"items": items}, status_code=202)


@router.get("", response_model=None, responses={**ok(200, JobPage), **error_responses(401, 422, 503)})
def list_jobs(
    tenant: TenantDep,
    gateway: GatewayDep,
    session: SessionDep,
    status: Annotated[str | None, Query(pattern=STATUS_FILTER, description="one status; empty = any")] = None,
    task: Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN, description="empty = any")] = None,
    queue: Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN, description="empty = any")] = None,
    created_after: Annotated[datetime | None, Query(description="ISO time; jobs created at or after it")] = None,
    created_before: Annotated[datetime | None, Query(description="ISO time; jobs created before it")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> dict[str, Any]:
    """The tenant's jobs, newest first, cursor-paginated."""
    statement = select(Job).where(col(Job.tenant) == tenant)
    if status:  # `?status=` (empty, as a form or a copied URL sends it) means no filter, not a 422
        statement = statement.where(col(Job.status) == status)
    if task:
        statement = statement.where(col(Job.task) == task)
    if queue:
        statement = statement.where(col(Job.queue) == queue)
    sqlite = session.get_bind().dialect.name == "sqlite"
    if created_after is not None:
        statement = statement.where(col(Job.created_at) >= stored_utc(created_after, naive=sqlite))
    if created_before is not None:
        statement = statement.where(col(Job.created_at) < stored_utc(created_before, naive=sqlite))
    jobs, next_cursor = page(session, statement, col(Job.created_at), col(Job.id), limit, cursor)
    return {"items": views.present_many(gateway, jobs), "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=None, responses={**ok(200, JobView), **error_responses(401, 404, 422, 503)})
async def get_job(
    job_id: str,
    tenant: TenantDep,
    gateway: GatewayDep,
    wait: Annotated[float | None, Query(description="long-poll up to this many seconds")] = None,
    after_seq: Annotated[int, Query(ge=0, description="return once the job's seq is above this")] = 0,
) -> dict[str, Any]:
    """The job with its live progress; `?wait=S&after_seq=N` holds the request until seq > N (or terminal)."""
    if wait is not None and not 0 < wait <= gateway.settings.long_poll_max_seconds:
        raise invalid(
            "wait",
            f"must be above 0 and at most {gateway.settings.long_poll_max_seconds:g} seconds",
            value=wait,
            maximum=gateway.settings.long_poll_max_seconds,
        )
    job = await run_in_threadpool(_load, gateway, tenant, job_id)  # 404 before subscribing to anything
    if wait is None:
        return views.present(gateway.settings, job, await views.asnapshot(gateway, job_id))
    return await _long_poll(gateway, tenant, job, wait, after_seq)


async def _long_poll(gateway: Gateway, tenant: str, job: Job, wait: float, after_seq: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    while True:
        try:
            return await _wait_for_event(gateway, tenant, job, deadline, after_seq)
        except LiveUnavailable:
            pass  # Redis is down: no events. Re-read SQL, then try the subscription again a second later.
        view = await _current(gateway, tenant, job.id)
        remaining = deadline - loop.time()
        if _ready(view, after_seq) or remaining <= 0:
            return view
        await asyncio.sleep(min(DEGRADED_POLL_SECONDS, remaining))


async def _wait_for_event(gateway: Gateway, tenant: str, job: Job, deadline: float, after_seq: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    # Subscribe first (confirmed by Redis), then read the snapshot: nothing published in between is lost.
    async with gateway.live.watch(job.id) as watch:
        snap = await views.asnapshot(gateway, job.id)
        while not _ready(job_view(job, snap), after_seq) and (remaining := deadline - loop.time()) > 0:
            if not await watch.wait(remaining):
                break
            if watch.broken:  # Redis dropped and events may be lost: answer with what is current now
                return await _current(gateway, tenant, job.id)
            if watch.seq > after_seq or watch.terminal:
                snap = await views.asnapshot(gateway, job.id)
        if not _ready(job_view(job, snap), after_seq):  # timed out: still answer with the freshest state
            snap = await views.asnapshot(gateway, job.id)
        return views.present(gateway.settings, job, snap)


def _ready(view: dict[str, Any], after_seq: int) -> bool:
    return int(view.get("seq") or 0) > after_seq or view.get("status") in TERMINAL


async def _current(gateway: Gateway, tenant: str, job_id: str) -> dict[str, Any]:
    fresh = await run_in_threadpool(_load, gateway, tenant, job_id)
    return views.present(gateway.settings, fresh, await views.asnapshot(gateway, job_id))


def _load(gateway: Gateway, tenant: str, job_id: str) -> Job:
    with Session(gateway.engine) as session:
        return views.load_job(session, tenant, job_id)


@router.post(
    "/{job_id}/cancel",
    status_code=202,
    response_model=None,
    responses={**ok(202, JobView, "cancel requested: the job"), **error_responses(401, 404, 503)},
)
def cancel_job(
    job_id: str, tenant: TenantDep, gateway: GatewayDep, session: SessionDep, store: StoreDep
) -> JSONResponse:
    """Request cancellation: a queued job is cancelled at once, a running one cooperatively then by force."""
    views.load_job(session, tenant, job_id)
    try:
        job = store.request_cancel(job_id)
    except REDIS_DOWN as exc:
        # SQL committed the request (`cancel_requested_at`) before Redis was touched, and SQL is enough:
        # a worker drops a job whose cancel is set when it starts it, and the reaper forces a running job
        # to `cancelled` after the grace period. Accepted, like a submit while Redis is down.
        job = store.get(job_id)
        if job is not None:
            _log_stored_cancel(job, exc)
    if job is None:  # deleted in between
        raise not_found("job", job_id)
    return JSONResponse(views.present(gateway.settings, job, views.snapshot(gateway, job_id)), status_code=202)


def _log_stored_cancel(job: Job, exc: Exception) -> None:
    if job.status in TERMINAL:  # Redis failed after the job was ended: only its event is missing
        log.warning("job %s is %s; its event is not published yet (redis unavailable: %s)", job.id, job.status, exc)
    elif job.status == JobStatus.RUNNING:
        log.warning(
            "cancel of running job %s stored in SQL only (redis unavailable: %s); the worker cannot see it, "
            "so the reaper cancels the job after the grace period",
            job.id,
            exc,
        )
    else:
        log.warning(
            "cancel of %s job %s stored in SQL only (redis unavailable: %s); it stays %s and is cancelled "
            "when a worker picks it up",
            job.status,
            job.id,
            exc,
            job.status,
        )
