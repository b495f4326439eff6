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
    # Free-form, task-defined (rows_skipped, current_file, …): checked by the worker's reporter to be a JSON
    # object of at most PROGRESS_META_MAX_BYTES, so every event, snapshot and SQL row stays small.
    meta: dict[str, Any] | None = None


PROGRESS_META_MAX_BYTES = 4096


def check_progress_meta(meta: Any) -> dict[str, Any]:
    """`meta` as it will be stored: a JSON object of at most PROGRESS_META_MAX_BYTES (compact UTF-8).

    Raises TypeError / ValueError with a message for the task's author (it surfaces in their task).
    """
    if not isinstance(meta, dict):
        raise TypeError(f"progress meta must be a dict (a JSON object), got {type(meta).__name__}")
    try:
        text = json.dumps(meta, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"progress meta must be JSON (str keys; str, number, bool, None, list, dict values): "
                        f"{exc}") from None
    size = len(text.encode())
    if size > PROGRESS_META_MAX_BYTES:
        raise ValueError(f"progress meta is {size} bytes of JSON; the limit is {PROGRESS_META_MAX_BYTES}. Keep it "
                         "to small counters and names; put large data in the job's result")
    loaded: dict[str, Any] = json.loads(text)  # a copy: later changes to the caller's dict are not published
    return loaded


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
