"""`POST /v1/jobs:batch`: up to MAX_BATCH jobs validated together and committed in one SQL transaction.

All or nothing: every job is checked against the catalog first, and one 422 lists every problem with its
field named by index (`jobs[3].args.steps`); only then are the rows inserted, in one transaction, before any
event or message is published (the order of a single submit, so nothing accepted is lost).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from longrun_common.models import Job

from .errors import ApiError, invalid_many
from .submission import JobRequest, build_job

if TYPE_CHECKING:
    from .state import Gateway

MAX_BATCH = 1000
# A batch's 422 lists at most this many problems (a 1,000-job batch with one mistake each would be unreadable).
MAX_BATCH_ERRORS = 50


class BatchRequest(BaseModel):
    """`POST /v1/jobs:batch` body. Strict, like a single submit's."""

    model_config = ConfigDict(extra="forbid", strict=True)

    jobs: list[JobRequest] = Field(min_length=1, max_length=MAX_BATCH)


def build_jobs(gateway: Gateway, tenant: str, request: BatchRequest) -> list[Job]:
    """Every job validated against the catalog; one 422 naming each problem by its index, else the rows."""
    jobs: list[Job] = []
    problems: list[Mapping[str, Any]] = []
    for index, item in enumerate(request.jobs):
        try:
            jobs.append(build_job(gateway, tenant, item))
        except ApiError as exc:
            if exc.status_code != 422:
                raise  # a 503 (catalog not ready, invalid schema) is about the service, not this job
            problems.extend(_prefixed(index, exc.details))
    if problems:
        raise invalid_many(problems[:MAX_BATCH_ERRORS])
    return jobs


def _prefixed(index: int, details: Any) -> list[dict[str, Any]]:
    """A single submit's field problems, renamed to `jobs[i].field`."""
    items = details if isinstance(details, list) else [{"field": "body", "message": str(details)}]
    out = []
    for detail in items:
        problem = dict(detail)
        field = str(problem.get("field") or "body")
        problem["field"] = f"jobs[{index}]" if field == "body" else f"jobs[{index}].{field}"
        out.append(problem)
    return out
