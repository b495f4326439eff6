"""The event schema: progress and status frames as the worker publishes and the hub delivers them."""

from __future__ import annotations

import json
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .states import JobStatus


class Progress(BaseModel):
    """A job's progress as clients see it."""

    model_config = ConfigDict(extra="forbid")

    percent: float | None = None
    current: float | None = None
    total: float | None = None
    message: str | None = None
    stage: str | None = None
    eta_seconds: float | None = None


class JobError(BaseModel):
    """Why an attempt or a job failed."""

    type: str = Field(description="error class, e.g. `timeout`, `ValueError`, `cancelled`, `lost`")
    message: str
    traceback: str | None = None
    retryable: bool = False


class Event(BaseModel):
    """One job event. `seq` is per job, contiguous from 1; `ts` is the publisher's wall clock."""

    type: Literal["progress", "status"]
    job_id: str
    seq: int
    ts: float
    status: JobStatus
    progress: Progress = Field(default_factory=Progress)
    attempt: int = 1
    error: JobError | None = None
    result: Any = None
    next_retry_at: float | None = None

    def frame(self) -> dict[str, Any]:
        """The wire dict: optional fields appear only when set."""
        return self.model_dump(mode="json", exclude_none=True)


def dumps(value: Any) -> str:
    """Compact JSON used for every event and snapshot field."""
    return json.dumps(value, separators=(",", ":"), default=str)


def now() -> float:
    return time.time()
