"""The job as every gateway endpoint returns it: `longrun_common.views.job_view` plus stream links."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from typing import Any

import redis
from sqlmodel import Session

from longrun_common import tokens
from longrun_common.models import Job
from longrun_common.publisher import Published
from longrun_common.reader import decode_snapshot
from longrun_common.settings import Settings
from longrun_common.views import iso, job_view

from .errors import not_found
from .state import Gateway

log = logging.getLogger(__name__)


def hub_ws_base(settings: Settings) -> str:
    """The hub's public URL with the WebSocket scheme (http→ws, https→wss)."""
    url = settings.hub_public_url
    if url.startswith("https://"):
        return "wss://" + url[len("https://") :]
    if url.startswith("http://"):
        return "ws://" + url[len("http://") :]
    return url


def job_stream(settings: Settings, tenant: str, job_id: str) -> dict[str, Any]:
    """A fresh job-scoped token and where to use it."""
    token, expires = tokens.mint(settings.token_secret, tenant, job_id, settings.token_ttl_seconds)
    return {
        "token": token,
        "expires_at": iso(expires),
        "ws_url": f"{hub_ws_base(settings)}/v1/ws/jobs/{job_id}",
        "sse_url": f"{settings.hub_public_url}/v1/jobs/{job_id}/events",
    }


def tenant_stream(settings: Settings, tenant: str) -> dict[str, Any]:
    """A tenant-scoped token for the multiplexed socket."""
    token, expires = tokens.mint(settings.token_secret, tenant, None, settings.token_ttl_seconds)
    return {"token": token, "expires_at": iso(expires), "ws_url": f"{hub_ws_base(settings)}/v1/ws"}


def present(settings: Settings, job: Job, snapshot: dict[str, Any] | None) -> dict[str, Any]:
    """The public job dict."""
    view = job_view(job, snapshot)
    stream = job_stream(settings, job.tenant, job.id)
    view["stream"] = {"token": stream["token"], "ws_url": stream["ws_url"], "sse_url": stream["sse_url"]}
    return view


def is_uuid(value: str) -> bool:
    """Ids are UUIDs; anything else is simply not found (never a 500, never a DB round-trip)."""
    try:
        return str(uuid.UUID(value)) == value.lower() and len(value) == 36
    except ValueError:
        return False


def load_job(session: Session, tenant: str, job_id: str) -> Job:
    """The tenant's job, or 404 — a foreign job is indistinguishable from a missing one."""
    job = session.get(Job, job_id) if is_uuid(job_id) else None
    if job is None or job.tenant != tenant:
        raise not_found("job", job_id)
    return job


def queued_snapshot(job: Job, published: Published | None) -> dict[str, Any] | None:
    """The live fields of a job just submitted, from what was just written (None when nothing was published)."""
    if published is None or published.fenced:
        return None
    return {"status": job.status, "seq": published.seq, "attempt": job.attempt, "progress": {},
            "updated_at": job.updated_at, "queued_reason": published.queued_reason}


def snapshot(gateway: Gateway, job_id: str) -> dict[str, Any] | None:
    """The live snapshot, or None when Redis has none or is down (SQL alone then)."""
    try:
        return gateway.reader.snapshot(gateway.redis, job_id)
    except redis.RedisError as exc:
        log.info("snapshot of %s from SQL only: %s", job_id, exc)
        return None


async def asnapshot(gateway: Gateway, job_id: str) -> dict[str, Any] | None:
    try:
        return await gateway.reader.asnapshot(gateway.aredis, job_id)
    except redis.RedisError as exc:
        log.info("snapshot of %s from SQL only: %s", job_id, exc)
        return None


def snapshots(gateway: Gateway, job_ids: Sequence[str]) -> dict[str, dict[str, Any] | None]:
    """Snapshots of many jobs in one round-trip (a list page)."""
    if not job_ids:
        return {}
    try:
        pipe = gateway.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hgetall(gateway.keys.job(job_id))
        raw = pipe.execute()
    except redis.RedisError as exc:
        log.info("list snapshots from SQL only: %s", exc)
        return {}
    return {job_id: decode_snapshot(fields) for job_id, fields in zip(job_ids, raw, strict=True)}


def present_many(gateway: Gateway, jobs: Sequence[Job]) -> list[dict[str, Any]]:
    snaps = snapshots(gateway, [job.id for job in jobs])
    return [present(gateway.settings, job, snaps.get(job.id)) for job in jobs]
