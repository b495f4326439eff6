"""Task declarations as they travel from workers (who declare them) to the gateway (which validates)."""

from __future__ import annotations

import random
from typing import Any

from pydantic import BaseModel, Field, model_validator


class TaskPolicy(BaseModel):
    """Retry and time-limit policy of one task."""

    max_attempts: int = Field(1, ge=1, le=100)
    backoff_base: float = Field(1.0, ge=0, description="seconds before the first retry")
    backoff_max: float = Field(600.0, ge=0, description="cap on any one backoff")
    backoff_jitter: bool = True
    retry_on: list[str] = Field(
        default_factory=lambda: ["TransientError", "timeout", "lost", "ConnectionError", "TimeoutError"],
        description="error types that retry; any other error fails the job at once",
    )
    soft_time_limit: float | None = Field(None, gt=0, description="default soft limit, seconds")
    time_limit: float | None = Field(None, gt=0, description="default hard limit, seconds")
    max_time_limit: float = Field(24 * 3600.0, gt=0, description="the most a job may ask for")
    queue: str = "default"

    @model_validator(mode="after")
    def _limits_ordered(self) -> TaskPolicy:
        if self.soft_time_limit and self.time_limit and self.soft_time_limit >= self.time_limit:
            raise ValueError("soft_time_limit must be below time_limit")
        return self

    def backoff(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after failed attempt `attempt` (1-based): exponential, capped, full jitter."""
        delay = min(self.backoff_max, self.backoff_base * (2 ** (attempt - 1)))
        if self.backoff_jitter:
            # Jitter between half and the full delay: spreads a thundering herd, keeps the order of magnitude.
            delay *= 0.5 + (rng or random).random() * 0.5
        return float(delay)

    def retries(self, error_type: str) -> bool:
        return error_type in self.retry_on


class TaskSpec(BaseModel):
    """One entry of `GET /v1/tasks`."""

    name: str
    description: str = ""
    args_schema: dict[str, Any]
    policy: TaskPolicy
