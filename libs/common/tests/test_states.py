"""The job state machine."""

from __future__ import annotations

import pytest

from longrun_common.catalog import TaskPolicy
from longrun_common.states import IllegalTransition, JobStatus, can_transition, check_transition

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("current", "target"),
    [("queued", "running"), ("running", "retrying"), ("retrying", "running"), ("running", "succeeded"),
     ("queued", "cancelled"), ("running", "failed")],
)
def test_legal(current: str, target: str) -> None:
    assert check_transition(current, target) == JobStatus(target)


@pytest.mark.parametrize(
    ("current", "target"), [("succeeded", "running"), ("failed", "queued"), ("queued", "succeeded")]
)
def test_illegal(current: str, target: str) -> None:
    with pytest.raises(IllegalTransition, match=f"cannot go from {current} to {target}"):
        check_transition(current, target)


def test_requeue_only_from_failed_or_cancelled() -> None:
    assert can_transition(JobStatus.FAILED, JobStatus.QUEUED, requeue=True)
    assert not can_transition(JobStatus.SUCCEEDED, JobStatus.QUEUED, requeue=True)


def test_backoff_is_exponential_capped_and_jittered() -> None:
    policy = TaskPolicy(backoff_base=0.5, backoff_max=3, backoff_jitter=False)
    assert [policy.backoff(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 3.0]
    jittered = TaskPolicy(backoff_base=1, backoff_max=100)
    values = {round(jittered.backoff(3), 6) for _ in range(20)}
    assert len(values) > 1 and all(2.0 <= v <= 4.0 for v in values)

