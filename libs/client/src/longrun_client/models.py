"""Typed views of the API's JSON: jobs, progress, events, pages, dead letters, tasks, files, API keys.

Each model keeps the full JSON in `raw`, so fields added by newer servers are never lost.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
M = TypeVar("M")

TERMINAL = frozenset({"succeeded", "failed", "cancelled"})


def _build(cls: type[M], data: dict[str, Any], **overrides: Any) -> M:
    """A dataclass from the JSON object's known fields (unknown ones stay in `raw`)."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    values = {k: v for k, v in data.items() if k in names}
    values.update(overrides)
    values["raw"] = data
    return cls(**values)


@dataclass
class Progress:
    percent: float | None = None
    current: float | None = None
    total: float | None = None
    message: str | None = None
    stage: str | None = None
    eta_seconds: float | None = None
    meta: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> Progress:
        return _build(cls, data or {})


@dataclass
class Stream:
    token: str
    ws_url: str
    sse_url: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Job:
    id: str
    task: str
    status: str
    tenant: str | None = None
    queue: str | None = None
    priority: int = 0
    kind: str | None = None
    args: dict[str, Any] = field(default_factory=dict)
    progress: Progress = field(default_factory=Progress)
    seq: int = 0
    attempt: int = 0
    max_attempts: int | None = None
    result: Any = None
    error: dict[str, Any] | None = None
    next_retry_at: str | None = None
    cancel_requested: bool = False
    parent_id: str | None = None
    root_id: str | None = None
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    updated_at: str | None = None
    stream: Stream | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Job:
        stream = data.get("stream")
        return _build(cls, data, progress=Progress.from_dict(data.get("progress")),
                      stream=_build(Stream, stream) if isinstance(stream, dict) and "ws_url" in stream else None)

    @property
    def done(self) -> bool:
        return self.status in TERMINAL


@dataclass
class Event:
    """One frame of a job's stream: `progress` or `status` events, or a `snapshot` (the whole job at `seq`).

    Long-poll (the last fallback of `follow()`) yields snapshots: the job as it is at each new `seq`.
    """

    type: str
    job_id: str
    seq: int
    status: str | None = None
    progress: Progress = field(default_factory=Progress)
    ts: float | None = None
    attempt: int | None = None
    error: dict[str, Any] | None = None
    result: Any = None
    child: dict[str, Any] | None = None
    job: Job | None = None
    transport: str = "ws"
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_frame(cls, frame: dict[str, Any], transport: str) -> Event:
        if frame.get("type") == "snapshot":
            job = Job.from_dict(frame["job"])
            return cls(type="snapshot", job_id=job.id, seq=int(frame.get("seq", job.seq)), status=job.status,
                       progress=job.progress, attempt=job.attempt, error=job.error, result=job.result, job=job,
                       transport=transport, raw=frame)
        return _build(cls, frame, progress=Progress.from_dict(frame.get("progress")), transport=transport)

    @classmethod
    def from_job(cls, job: Job, transport: str = "poll") -> Event:
        return cls(type="snapshot", job_id=job.id, seq=job.seq, status=job.status, progress=job.progress,
                   attempt=job.attempt, error=job.error, result=job.result, job=job, transport=transport,
                   raw=job.raw)

    @property
    def done(self) -> bool:
        """The job ended with this event (a `retrying` status is not an end)."""
        return self.status in TERMINAL and self.type in ("status", "snapshot")


@dataclass
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None

    @classmethod
    def parse(cls, data: dict[str, Any], item: Callable[[dict[str, Any]], T]) -> Page[T]:
        return cls([item(x) for x in data.get("items", [])], data.get("next_cursor"))


@dataclass
class DeadLetter:
    id: str
    job_id: str
    task: str
    error: dict[str, Any] | None = None
    attempts: int = 0
    failed_at: str | None = None
    job: Job | None = None
    traceback: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DeadLetter:
        job = data.get("job")
        return _build(cls, data, job=Job.from_dict(job) if job else None, history=data.get("history") or [])


@dataclass
class TaskInfo:
    name: str
    description: str | None = None
    args_schema: dict[str, Any] = field(default_factory=dict)
    policy: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskInfo:
        return _build(cls, data)


@dataclass
class StoredFile:
    id: str
    name: str
    size: int
    sha256: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StoredFile:
        return _build(cls, data)


@dataclass
class ApiKey:
    """An API key as listed; `key` is set only in the answer that creates or rotates it (shown once)."""

    id: str
    tenant: str
    name: str
    scopes: list[str] = field(default_factory=list)
    prefix: str | None = None
    status: str | None = None
    created_at: str | None = None
    last_used_at: str | None = None
    expires_at: str | None = None
    revoked_at: str | None = None
    grace_until: str | None = None
    key: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKey:
        return _build(cls, data)
