"""Stream tokens for the progress hub: one job, or all of the tenant's jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from .. import views
from ..contract import StreamToken, error_responses, ok
from ..deps import SessionDep, SettingsDep, TenantDep

router = APIRouter(prefix="/v1", tags=["stream tokens"])


@router.post(
    "/jobs/{job_id}/stream-token",
    response_model=None,
    responses={**ok(200, StreamToken), **error_responses(401, 404, 503)},
)
def job_stream_token(job_id: str, tenant: TenantDep, settings: SettingsDep, session: SessionDep) -> dict[str, Any]:
    """`{"token", "expires_at", "ws_url", "sse_url"}` for one of the tenant's jobs."""
    views.load_job(session, tenant, job_id)
    return views.job_stream(settings, tenant, job_id)


@router.post("/stream-token", response_model=None, responses={**ok(200, StreamToken), **error_responses(401)})
def tenant_stream_token(tenant: TenantDep, settings: SettingsDep) -> dict[str, Any]:
    """`{"token", "expires_at", "ws_url"}` for the multiplexed socket (any of the tenant's jobs)."""
    return views.tenant_stream(settings, tenant)
