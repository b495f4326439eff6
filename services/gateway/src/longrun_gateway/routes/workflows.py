"""Workflows: `POST /v1/workflows` (chain, group, chord, nested) and `GET /v1/jobs/{id}/children`."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from sqlmodel import col, select

from longrun_common import workflows
from longrun_common.models import Job

from .. import views
from ..contract import LOCATION, JobPage, JobView, error_responses, ok
from ..deps import GatewayDep, SessionDep, Submission, TenantDep, submission
from ..errors import invalid
from ..pagination import DEFAULT_LIMIT, MAX_LIMIT
from ..workflow_spec import WorkflowRequest, build

router = APIRouter(tags=["workflows"])

# Auth, the tenant's rate limit and the body, in the submit routes' one dependency.
WorkflowSubmission = Annotated[Submission[WorkflowRequest], Depends(submission(WorkflowRequest, document_key=False))]
_BODY = {
    "requestBody": {"required": True,
                    "content": {"application/json": {"schema": WorkflowRequest.model_json_schema()}}}
}


@router.post(
    "/v1/workflows",
    status_code=202,
    openapi_extra=_BODY,
    response_model=None,
    responses={
        **ok(202, JobView, "accepted: the workflow's root job (`kind: workflow`)", LOCATION),
        **error_responses(401, 413, 422, 429, 503),
    },
)
def submit_workflow(submitted: WorkflowSubmission) -> JSONResponse:
    """Accept a workflow: every step checked first (one 422 names each problem by its path in the spec), then
    every row committed in one transaction and the first steps sent."""
    gateway, tenant, body = submitted.gateway, submitted.tenant, submitted.body
    rows = build(gateway, tenant, body)
    root = workflows.submit(gateway.store, rows)
    for job in rows:
        if job.kind == workflows.KIND_JOB:
            gateway.metrics.jobs_submitted.labels(job.task).inc()
    view = views.present(gateway.settings, root, views.snapshot(gateway, root.id))
    return JSONResponse(view, status_code=202, headers={"Location": f"/v1/jobs/{root.id}"})


@router.get(
    "/v1/jobs/{job_id}/children",
    response_model=None,
    responses={**ok(200, JobPage, "the node's direct children, in spec order"), **error_responses(401, 404, 422, 503)},
)
def list_children(
    job_id: str,
    tenant: TenantDep,
    gateway: GatewayDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=32, description="`next_cursor` of the previous page")] = None,
) -> dict[str, Any]:
    """A job's children in spec order (a plain job has none), paginated by position."""
    views.load_job(session, tenant, job_id)
    after = -1
    if cursor is not None:
        if not cursor.isdigit():
            raise invalid("cursor", "must be the next_cursor of a previous page", value=cursor)
        after = int(cursor)
    statement = (select(Job).where(col(Job.parent_id) == job_id, col(Job.position) > after)
                 .order_by(col(Job.position)).limit(limit + 1))
    rows = list(session.exec(statement).all())
    next_cursor = str(rows[limit - 1].position) if len(rows) > limit else None
    return {"items": views.present_many(gateway, rows[:limit]), "next_cursor": next_cursor}
