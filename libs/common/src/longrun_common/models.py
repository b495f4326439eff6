"""SQL tables (SQLModel): the system of record. Every row carries its tenant."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, Column, DateTime, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from .states import JobStatus


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return str(uuid.uuid4())


def _ts(**kwargs: Any) -> Any:
    """A timezone-aware timestamp column."""
    return Field(sa_column=Column(DateTime(timezone=True), **kwargs), default=None)


class Job(SQLModel, table=True):
    """One submitted job and its latest known state."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_tenant_created", "tenant", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_run_at", "run_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant: str = Field(max_length=64, index=True)
    task: str = Field(max_length=128)
    queue: str = Field(default="default", max_length=64)
    priority: int = 0
    args: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    status: str = Field(default=JobStatus.QUEUED.value, max_length=16)
    attempt: int = 1
    max_attempts: int = 1
    seq: int = 0
    progress: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    result: Any = Field(default=None, sa_column=Column(JSON, nullable=True))
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    checkpoint: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    soft_time_limit: float | None = None
    time_limit: float | None = None
    worker: str | None = Field(default=None, max_length=255)
    cancel_requested_at: datetime | None = _ts()
    next_retry_at: datetime | None = _ts()
    # A delayed job waits in SQL until this time (maintenance then releases it and clears it); None = not delayed.
    run_at: datetime | None = _ts()
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    started_at: datetime | None = _ts()
    finished_at: datetime | None = _ts()
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    # Workflows (see workflows.py): a plain job is kind "job" with no parent; a chain/group/chord node is kind
    # "workflow". `waiting`: a step not yet released (its dependencies have not finished); `settled`: this
    # job's end has been applied to its parent; `pending`: a node's children not yet settled.
    kind: str = Field(default="job", max_length=16)
    parent_id: str | None = Field(default=None, max_length=36, index=True)
    root_id: str | None = Field(default=None, max_length=36, index=True)
    position: int | None = None
    waiting: bool = False
    settled: bool = False
    pending: int | None = None
    inputs: list[Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    flow: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))


class Attempt(SQLModel, table=True):
    """One run of a job: who ran it, when, how it ended."""

    __tablename__ = "attempts"
    __table_args__ = (UniqueConstraint("job_id", "number"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: str = Field(foreign_key="jobs.id", max_length=36, index=True)
    number: int
    status: str = Field(default=JobStatus.RUNNING.value, max_length=16)
    worker: str | None = Field(default=None, max_length=255)
    error: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    started_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    finished_at: datetime | None = _ts()


class StoredFile(SQLModel, table=True):
    """An uploaded file; tasks take its id, never a path."""

    __tablename__ = "files"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    tenant: str = Field(max_length=64, index=True)
    name: str = Field(max_length=255)
    size: int
    sha256: str = Field(max_length=64)
    content_type: str | None = Field(default=None, max_length=255)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class TaskRecord(SQLModel, table=True):
    """A task's declaration as the workers publish it; the gateway validates against it."""

    __tablename__ = "tasks"

    name: str = Field(primary_key=True, max_length=128)
    description: str = Field(default="", sa_column=Column(Text, nullable=False))
    args_schema: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    policy: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    updated_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class DeadLetter(SQLModel, table=True):
    """A job that exhausted its attempts, with what is needed to understand and requeue it."""

    __tablename__ = "dead_letters"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=36)
    job_id: str = Field(foreign_key="jobs.id", max_length=36, index=True)
    tenant: str = Field(max_length=64, index=True)
    task: str = Field(max_length=128)
    error: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    attempts: int
    failed_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))


class IdempotencyKey(SQLModel, table=True):
    """Same key + same body → the same job; expires after a window."""

    __tablename__ = "idempotency_keys"

    tenant: str = Field(primary_key=True, max_length=64)
    key: str = Field(primary_key=True, max_length=255)
    request_hash: str = Field(max_length=64)
    job_id: str = Field(foreign_key="jobs.id", max_length=36)
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ApiKey(SQLModel, table=True):
    """An API key: its tenant, scopes and lifetime, and a keyed hash of it (never the key itself).

    `id` is the key's public lookup part (`lr_<id>_<secret>`), so a request finds its row by primary key.
    """

    __tablename__ = "api_keys"
    __table_args__ = (Index("ix_api_keys_tenant_created", "tenant", "created_at", "id"),)

    id: str = Field(primary_key=True, max_length=32)
    tenant: str = Field(max_length=64)
    name: str = Field(max_length=128)
    scopes: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    secret_hash: str = Field(max_length=64)
    created_by: str | None = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_column=Column(DateTime(timezone=True), nullable=False))
    last_used_at: datetime | None = _ts()
    expires_at: datetime | None = _ts()
    revoked_at: datetime | None = _ts()
    # Rotation: the successor's id, and until when this key still works beside it.
    replaced_by: str | None = Field(default=None, max_length=32)
    grace_until: datetime | None = _ts()
