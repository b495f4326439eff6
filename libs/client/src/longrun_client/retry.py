"""When to send a request again, and how long to wait: 429 and 503 (honouring `Retry-After`), and connection
failures, with capped, jittered exponential backoff."""

from __future__ import annotations

import random
from dataclasses import dataclass

import httpx

from .errors import retry_after

RETRY_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # sends in all, the first included
    base: float = 0.25
    cap: float = 10.0
    max_retry_after: float = 60.0

    def backoff(self, attempt: int) -> float:
        """Delay before attempt `attempt + 1` (0-based): full jitter on base·2^attempt, capped."""
        return random.uniform(0.5, 1.0) * min(self.cap, self.base * 2.0**attempt)

    def delay_after(self, response: httpx.Response, attempt: int) -> float | None:
        """How long to wait before retrying this answer, or None when it is final."""
        if response.status_code not in RETRY_STATUSES or attempt + 1 >= self.attempts:
            return None
        hinted = retry_after(response)
        return min(hinted, self.max_retry_after) if hinted is not None else self.backoff(attempt)

    def delay_after_error(self, exc: httpx.TransportError, idempotent: bool, attempt: int) -> float | None:
        """A connection that never opened is always safe to retry; a lost answer only for idempotent calls."""
        if attempt + 1 >= self.attempts:
            return None
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout) or idempotent:
            return self.backoff(attempt)
        return None
