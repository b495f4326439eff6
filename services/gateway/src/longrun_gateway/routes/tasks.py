"""The task catalog, as the workers published it to SQL (no worker code imported here)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import ValidationError
from sqlmodel import col, select

from longrun_common.catalog import TaskPolicy
from longrun_common.models import TaskRecord

from ..contract import TaskList, error_responses, ok
from ..deps import SessionDep, TenantDep

router = APIRouter(prefix="/v1/tasks", tags=["tasks"])


@router.get("", response_model=None, responses={**ok(200, TaskList), **error_responses(401, 503)})
def list_tasks(_tenant: TenantDep, session: SessionDep) -> dict[str, Any]:
    """`{"tasks": [{"name", "description", "args_schema", "policy"}]}`, by name."""
    records = session.exec(select(TaskRecord).order_by(col(TaskRecord.name))).all()
    return {"tasks": [_entry(record) for record in records]}


def _entry(record: TaskRecord) -> dict[str, Any]:
    try:  # the policy with its defaults filled in, as the gateway will apply it
        policy = TaskPolicy.model_validate(record.policy or {}).model_dump(mode="json")
    except ValidationError:
        policy = dict(record.policy or {})
    return {"name": record.name, "description": record.description, "args_schema": record.args_schema, "policy": policy}
