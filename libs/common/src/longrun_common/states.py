"""The job state machine: the one place that decides which status changes are legal."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

_ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    # running -> running is a new attempt taking over after a lost worker (the reaper's requeue goes
    # through retrying, but a redelivered message may start a fresh attempt directly).
    JobStatus.RUNNING: frozenset(
        {JobStatus.RETRYING, JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED}
    ),
    JobStatus.RETRYING: frozenset({JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}

# Terminal states are final except through an explicit requeue (a dead letter, or an operator).
_REQUEUE_FROM = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


class IllegalTransition(ValueError):
    """A status change the state machine forbids."""

    def __init__(self, current: JobStatus, target: JobStatus) -> None:
        allowed = ", ".join(sorted(_ALLOWED[current])) or "none (terminal)"
        super().__init__(f"job cannot go from {current} to {target}; allowed from {current}: {allowed}")
        self.current = current
        self.target = target


def can_transition(current: JobStatus, target: JobStatus, *, requeue: bool = False) -> bool:
    """True when `current -> target` is legal (`requeue` admits failed/cancelled -> queued)."""
    if requeue:
        return current in _REQUEUE_FROM and target is JobStatus.QUEUED
    return target in _ALLOWED[current]


def check_transition(current: JobStatus | str, target: JobStatus | str, *, requeue: bool = False) -> JobStatus:
    """Return `target` as a JobStatus, or raise IllegalTransition."""
    current, target = JobStatus(current), JobStatus(target)
    if not can_transition(current, target, requeue=requeue):
        raise IllegalTransition(current, target)
    return target
