"""Read-only operations views for dashboards: the tenant's queues and the live workers.

Both are tenant-safe: counts and waits cover only the caller's jobs; a worker is listed with the number of the
caller's jobs it runs (hostnames are the one shared fact, as in Flower).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlmodel import col

from longrun_common.models import Job
from longrun_common.states import JobStatus

from ..contract import QueuePage, WorkerPage, error_responses, ok
from ..deps import GatewayDep, SessionDep, TenantDep

router = APIRouter(prefix="/v1", tags=["operations"])

ACTIVE = (JobStatus.QUEUED.value, JobStatus.RUNNING.value, JobStatus.RETRYING.value)
MAX_WORKERS = 1000  # a page of presence keys is plenty for one dashboard; more would be a fleet view


def _epoch(value: datetime | None) -> float | None:
    if value is None:
        return None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@router.get("/queues", response_model=None, responses={**ok(200, QueuePage), **error_responses(401, 503)})
def list_queues(tenant: TenantDep, gateway: GatewayDep, session: SessionDep) -> dict[str, Any]:
    """The tenant's active jobs per queue (queued, running, retrying) and how long the oldest has waited."""
    rows = session.execute(
        select(col(Job.queue), col(Job.status), func.count(), func.min(col(Job.updated_at)),
               func.min(col(Job.next_retry_at)))
        .where(col(Job.tenant) == tenant, col(Job.status).in_(ACTIVE))
        .group_by(col(Job.queue), col(Job.status))
    ).all()
    now = time.time()
    queues: dict[str, dict[str, Any]] = {}
    for name in (gateway.settings.default_queue, *(row[0] for row in rows)):
        queues.setdefault(name, {"name": name, "queued": 0, "running": 0, "retrying": 0,
                                 "oldest_wait_seconds": None})
    for name, status, count, updated, next_retry in rows:
        entry = queues[name]
        entry[status] = count
        # Waiting means due and not running: queued since its last change, retrying since its retry time.
        since = _epoch(updated) if status == JobStatus.QUEUED.value else _epoch(next_retry)
        if status != JobStatus.RUNNING.value and since is not None:
            wait = round(max(0.0, now - since), 3)
            entry["oldest_wait_seconds"] = max(entry["oldest_wait_seconds"] or 0.0, wait)
    return {"items": sorted(queues.values(), key=lambda q: q["name"]), "next_cursor": None}


@router.get("/workers", response_model=None, responses={**ok(200, WorkerPage), **error_responses(401, 503)})
def list_workers(tenant: TenantDep, gateway: GatewayDep, session: SessionDep) -> dict[str, Any]:
    """Workers whose presence lease is alive, with how many of the tenant's jobs each is running."""
    prefix = gateway.keys.worker("")
    hostnames = sorted(
        key.decode()[len(prefix):] for key in gateway.redis.scan_iter(match=f"{prefix}*", count=500)
    )[:MAX_WORKERS]
    running: dict[str | None, int] = dict(
        session.execute(
            select(col(Job.worker), func.count())
            .where(col(Job.tenant) == tenant, col(Job.status) == JobStatus.RUNNING.value)
            .group_by(col(Job.worker))
        ).all()
    )
    items = [{"hostname": host, "running": int(running.get(host, 0))} for host in hostnames]
    return {"items": items, "next_cursor": None}
