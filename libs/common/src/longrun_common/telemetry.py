"""Telemetry shared by every process: metric label helpers (and, below, tracing set-up)."""

from __future__ import annotations

# Why a job was retried, folded into a closed set: job error types are exception class names (unbounded).
RETRY_REASONS = ("transient", "timeout", "lost", "drained", "error")


def retry_reason(error_type: str) -> str:
    """The `reason` label of `longrun_job_retries_total` for a job error type."""
    if error_type in ("TransientError", "transient"):
        return "transient"
    if error_type in ("timeout", "lost", "drained"):
        return error_type
    return "error"
