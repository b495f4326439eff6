"""The job as every endpoint returns it: the SQL record overlaid with the live Redis snapshot."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the hub builds views without SQL; importing the models would cost it a second at start
    from .models import Job


def iso(value: datetime | float | None) -> str | None:
    """ISO-8601 UTC for a datetime or epoch seconds."""
    if value is None:
        return None
    if isinstance(value, int | float):
        value = datetime.fromtimestamp(value, UTC)
    if value.tzinfo is None:  # SQLite returns naive datetimes; they were written as UTC
        value = value.replace(tzinfo=UTC)
    return value.isoformat().replace("+00:00", "Z")


def job_view(job: Job, snapshot: dict[str, Any] | None = None) -> dict[str, Any]:
    """The public job dict; live fields come from the snapshot when it is at least as new as SQL."""
    view: dict[str, Any] = {
        "id": job.id,
        "task": job.task,
        "tenant": job.tenant,
        "queue": job.queue,
        "priority": job.priority,
        "status": job.status,
        "progress": dict(job.progress or {}),
        "seq": job.seq,
        "attempt": job.attempt,
        "max_attempts": job.max_attempts,
        "result": job.result,
        "error": _public_error(job.error),
        "args": job.args,
        "created_at": iso(job.created_at),
        "started_at": iso(job.started_at),
        "finished_at": iso(job.finished_at),
        "updated_at": iso(job.updated_at),
        "next_retry_at": iso(job.next_retry_at),
        "cancel_requested": job.cancel_requested_at is not None,
    }
    if snapshot and snapshot.get("seq", 0) >= job.seq and snapshot.get("attempt", 0) >= job.attempt:
        view.update(snapshot_fields(snapshot))
    view["run_at"] = iso(job.run_at)
    view["queued_reason"] = _queued_reason(job, view["status"], snapshot)
    # Workflows: a step not yet runnable is `queued` for this reason (see longrun_common.workflows).
    view.update(kind=job.kind, parent_id=job.parent_id, root_id=job.root_id)
    return view


def _queued_reason(job: Job, status: str | None, snapshot: dict[str, Any] | None) -> str | None:
    """Why a queued job is not on the Celery queue yet: "waiting_for_dependencies" (a workflow step whose inputs
    are not all there: longrun_common.workflows), "delayed" (SQL's run_at, cleared when released), or what the
    fair scheduler said when it held the job ("fair_share", "tenant_concurrency_limit")."""
    if status != "queued":
        return None
    if job.waiting:
        return "waiting_for_dependencies"
    if job.run_at is not None:
        return "delayed"
    reason = (snapshot or {}).get("queued_reason")
    return str(reason) if reason else None


def snapshot_fields(snapshot: dict[str, Any]) -> dict[str, Any]:
    """The live part of a job, from its Redis snapshot alone (what the hub knows without SQL)."""
    fields: dict[str, Any] = {
        "status": snapshot.get("status"),
        "progress": snapshot.get("progress") or {},
        "seq": snapshot.get("seq", 0),
        "attempt": snapshot.get("attempt", 1),
        "updated_at": iso(snapshot.get("updated_at")),
    }
    for name in ("result", "error"):
        if name in snapshot:
            fields[name] = snapshot[name]
    for name in ("started_at", "finished_at", "next_retry_at"):
        if snapshot.get(name):
            fields[name] = iso(snapshot[name])
    return fields


def snapshot_job(job_id: str, snapshot: dict[str, Any]) -> dict[str, Any]:
    """A job dict built from the snapshot alone, for the hub's snapshot frame."""
    view: dict[str, Any] = {
        "id": job_id,
        "task": snapshot.get("task"),
        "tenant": snapshot.get("tenant"),
        "queue": snapshot.get("queue"),
        "max_attempts": snapshot.get("max_attempts"),
        "created_at": iso(snapshot.get("created_at")),
        "result": None,
        "error": None,
        "started_at": None,
        "finished_at": None,
        "next_retry_at": None,
    }
    view.update(snapshot_fields(snapshot))
    return view


def _public_error(error: dict[str, Any] | None) -> dict[str, Any] | None:
    if not error:
        return None
    return {k: v for k, v in error.items() if k != "traceback"}
