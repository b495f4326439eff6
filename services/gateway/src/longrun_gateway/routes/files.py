"""Uploaded files: tasks take their ids, never paths."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool

from longrun_common.models import StoredFile, new_id
from longrun_common.storage import file_path
from longrun_common.views import iso

from .. import uploads
from ..contract import LOCATION, StoredFileView, error_responses, ok
from ..deps import GatewayDep, SessionDep, TenantDep
from ..errors import not_found
from ..state import Gateway
from ..views import is_uuid

router = APIRouter(prefix="/v1/files", tags=["files"])

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {"file": {"type": "string", "format": "binary"}},
                }
            }
        },
    }
}


@router.post(
    "",
    status_code=201,
    openapi_extra=_UPLOAD_BODY,
    response_model=None,
    responses={**ok(201, StoredFileView, "stored", LOCATION), **error_responses(401, 413, 422, 503)},
)
async def upload_file(request: Request, tenant: TenantDep, gateway: GatewayDep) -> JSONResponse:
    """Multipart field `file` → `{"id", "name", "size", "sha256"}` (201)."""
    file_id = new_id()
    destination = file_path(gateway.settings, tenant, file_id)
    received = await uploads.receive(request, destination, gateway.settings.max_upload_bytes)
    stored = StoredFile(
        id=file_id,
        tenant=tenant,
        name=received.name,
        size=received.size,
        sha256=received.sha256,
        content_type=received.content_type,
    )
    try:
        await run_in_threadpool(_save, gateway, stored)
    except BaseException:
        destination.unlink(missing_ok=True)  # no row, no file
        raise
    return JSONResponse(_public(stored, full=False), status_code=201, headers={"Location": f"/v1/files/{file_id}"})


def _save(gateway: Gateway, stored: StoredFile) -> None:
    with Session(gateway.engine) as session:
        session.add(stored)
        session.commit()
        session.refresh(stored)


@router.get("/{file_id}", response_model=None, responses={**ok(200, StoredFileView), **error_responses(401, 404, 503)})
def get_file(file_id: str, tenant: TenantDep, session: SessionDep) -> dict[str, Any]:
    """The file's metadata (404 for another tenant's file, exactly as for a missing one)."""
    stored = session.get(StoredFile, file_id) if is_uuid(file_id) else None
    if stored is None or stored.tenant != tenant:
        raise not_found("file", file_id)
    return _public(stored, full=True)


def _public(stored: StoredFile, *, full: bool) -> dict[str, Any]:
    body: dict[str, Any] = {"id": stored.id, "name": stored.name, "size": stored.size, "sha256": stored.sha256}
    if full:
        body.update(content_type=stored.content_type, created_at=iso(stored.created_at))
    return body
