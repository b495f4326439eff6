"""The event schema: progress and status frames as the worker publishes and the hub delivers them."""

from __future__ import annotations

import json
import time
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


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


def dumps(value: Any) -> str:
    """Compact JSON used for every event and snapshot field."""
    return json.dumps(value, separators=(",", ":"), default=str)


def now() -> float:
    return time.time()
