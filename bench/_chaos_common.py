"""bench/chaos.py's shared parts: what one side is, what a kill and an outcome record, and the formatting helpers.

Not a benchmark (running this file only says so).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from _chaos_workflow import FlowOutcome
from _common import percentile

from longrun_common.states import TERMINAL
from tests.support.processes import Service

TERMINAL_VALUES = {s.value for s in TERMINAL}
RECOVERY_SLACK = 3.0  # issue 10: a killed worker's job runs again within the lease + 3 s (p90)
WIPE_BOUND = 30.0  # ... and after Redis restarts empty, every accepted job within 30 s


@dataclass
class Kill:
    at: float  # wall clock (epoch seconds)
    host: str
    in_flight: list[tuple[str, int]]  # (job id, attempt) the worker was running


@dataclass
class Outcome:
    side: str
    settings: list[str]
    jobs: int
    makespan: float = float("nan")  # t0 until the last job succeeded
    succeeded: int = 0
    stranded: int = 0
    dead: int = 0
    duplicated: int = 0
    retried: int = 0  # jobs that needed more than one start
    kills: list[Kill] = field(default_factory=list)
    recoveries: list[float] = field(default_factory=list)
    not_recovered: int = 0
    finished_before_kill: int = 0
    evidence: list[str] = field(default_factory=list)
    t0: float = 0.0
    recovery_by_kill: dict[str, list[float]] = field(default_factory=dict)
    ready_after: list[float] = field(default_factory=list)  # worker start -> ready, seconds
    seq_behind: int | None = None  # Longrun: jobs whose Redis seq ended below the seq SQL recorded
    seq_regressed: int | None = None  # Longrun: jobs whose live events went back to a lower seq
    terminal_hidden: int | None = None  # ... and whose terminal event came with a seq already seen
    snapshot_gone: int | None = None  # Longrun: jobs with no Redis snapshot at the end (ended before the restart)
    detections: list[float] = field(default_factory=list)  # kill -> the job given back to the queue, seconds
    detection_by_kill: dict[str, list[float]] = field(default_factory=dict)
    # Longrun: kill -> when the lease its job last renewed ran out (a Redis wipe in between voids it), seconds
    lease_expiry_by_kill: dict[str, list[float]] = field(default_factory=dict)
    wiped_at: float | None = None  # when Redis was restarted empty
    # Longrun: each job not ended at the wipe -> seconds until it was back (its first event after the wipe:
    # queued again, retrying, running, or ended); None = never seen again.
    back_after_wipe: dict[str, float | None] | None = None
    # ... each job running at the wipe -> seconds until it ran again (a `running` event: its worker renewed
    # it, or a new attempt started; or it ended).
    running_after_wipe: dict[str, float | None] | None = None

    flows: list[FlowOutcome] = field(default_factory=list)  # the workflows run through the same chaos

    @property
    def lost(self) -> int:
        return self.jobs - self.succeeded


class Side:
    """One system under chaos: how to start a worker, submit, count, and judge the outcome."""

    name = ""

    def __init__(self, args: Any):
        self.args = args
        self.workers: list[Service] = []
        self.serial = 0  # worker names are unique per side: lr1@bench, lr2@bench, ...

    def hostname(self, service: Service) -> str:
        return service.argv[service.argv.index("--hostname") + 1]

    def start_worker(self, wait: bool) -> Service:
        raise NotImplementedError

    def submit_all(self) -> list[str]:
        raise NotImplementedError

    def expected(self, ids: list[str]) -> int:
        """What `done` counts when everything ended: the jobs, and the workflows' parts this side counts."""
        return len(ids)

    def done(self) -> int:
        """Jobs that reached an end (succeeded; Longrun also failed/cancelled)."""
        raise NotImplementedError

    def in_flight(self, host: str) -> list[tuple[str, int]]:
        raise NotImplementedError

    def restart_redis(self) -> None:
        raise NotImplementedError

    def outcome(self, ids: list[str], kills: list[Kill], t0: float) -> Outcome:
        raise NotImplementedError


def safe(fn: Callable[[], Any], default: Any) -> Any:
    """Counting may fail while Redis restarts; keep the last value then."""
    try:
        return fn()
    except Exception:
        return default


def since(at: float | None, start: float) -> float | None:
    return None if at is None else at - start


def epoch(value: datetime) -> float:
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def spread(values: list[float]) -> str:
    if not values:
        return "none"
    return f"{percentile(values, 50):.1f} / {percentile(values, 90):.1f} / {max(values):.1f} s"


def wipe_spread(after: dict[str, float | None] | None) -> str:
    """`p50 / p90 / max` of the seconds until each job was back after the wipe, and how many never were."""
    if after is None:
        return "n/a"
    seen = [v for v in after.values() if v is not None]
    missing = len(after) - len(seen)
    return f"{len(after)}: {spread(seen)}" + (f"; {missing} never" if missing else "")


if __name__ == "__main__":
    print("bench/_chaos_common.py holds helpers of bench/chaos.py; it is not a benchmark itself.")
