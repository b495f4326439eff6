"""The reporter's throttling contract: leading edge, bounded burst rate, last value always published."""

from __future__ import annotations

import re
import threading
import time
from typing import Any

import pytest

from longrun_common.events import Progress
from longrun_common.publisher import HEARTBEAT_CANCEL, HEARTBEAT_OK, Published
from longrun_worker.api import JobCancelled, JobFenced
from longrun_worker.reporter import Reporter

pytestmark = pytest.mark.unit


class Recorder:
    def __init__(self, cancel_after: int | None = None, fence: bool = False):
        self.events: list[tuple[float, Progress, dict[str, Any] | None]] = []
        self.beats = 0
        self.cancel_after = cancel_after
        self.fence = fence
        self.lock = threading.Lock()

    def emit(self, progress: Progress, checkpoint: dict[str, Any] | None) -> Published:
        with self.lock:
            self.events.append((time.monotonic(), progress, checkpoint))
            n = len(self.events)
        cancel = self.cancel_after is not None and n >= self.cancel_after
        return Published(-1 if self.fence else n, cancel)

    def heartbeat(self) -> int:
        self.beats += 1
        return HEARTBEAT_CANCEL if self.cancel_after == 0 else HEARTBEAT_OK


def make(rec: Recorder, interval: float = 0.05, beat: float = 10.0) -> Reporter:
    reporter = Reporter(rec.emit, rec.heartbeat, interval=interval, heartbeat_every=beat)
    reporter.begin()
    return reporter


def test_leading_edge_publishes_at_once_after_quiet() -> None:
    rec = Recorder()
    reporter = make(rec, interval=0.2)
    time.sleep(0.25)
    sent = time.monotonic()
    reporter.set(current=1, total=10)
    deadline = time.monotonic() + 1
    while not rec.events and time.monotonic() < deadline:
        time.sleep(0.001)
    assert rec.events, "first update after a quiet interval must be published"
    assert rec.events[0][0] - sent < 0.1  # not held back for the 0.2 s interval
    reporter.close()


def test_burst_is_coalesced_and_last_value_published() -> None:
    rec = Recorder()
    reporter = make(rec, interval=0.05)
    reporter.start(total=100_000)
    started = time.monotonic()
    for _ in range(100_000):
        reporter.advance(1)
    elapsed = time.monotonic() - started
    reporter.close()
    assert rec.events[-1][1].current == 100_000 and rec.events[-1][1].percent == 100.0
    # At most one event per interval during the burst (plus the leading and final ones).
    assert len(rec.events) <= elapsed / 0.05 + 3
    gaps = [b[0] - a[0] for a, b in zip(rec.events[1:-1], rec.events[2:-1], strict=False)]
    assert all(gap >= 0.045 for gap in gaps)
    currents = [e[1].current for e in rec.events]
    assert currents == sorted(currents)


def test_checkpoint_travels_with_the_next_report() -> None:
    rec = Recorder()
    reporter = make(rec)
    reporter.checkpoint({"offset": 7})
    reporter.close()
    assert rec.events[-1][2] == {"offset": 7}


def test_cancel_is_raised_at_the_next_report() -> None:
    rec = Recorder(cancel_after=1)
    reporter = make(rec, interval=0.01)
    reporter.set(current=1)
    deadline = time.monotonic() + 2
    with pytest.raises(JobCancelled):
        while time.monotonic() < deadline:
            reporter.advance(1)
            time.sleep(0.005)
    reporter.close()


def test_quiet_task_heartbeats_and_sees_cancel() -> None:
    rec = Recorder(cancel_after=0)
    reporter = make(rec, interval=0.01, beat=0.05)
    time.sleep(0.3)
    assert rec.beats >= 2
    with pytest.raises(JobCancelled):
        reporter.raise_if_interrupted()
    reporter.close()


def test_fenced_attempt_stops() -> None:
    rec = Recorder(fence=True)
    reporter = make(rec, interval=0.0)
    reporter.set(current=1)
    time.sleep(0.1)
    with pytest.raises(JobFenced):
        reporter.advance(1)
    reporter.close()


def test_eta_is_estimated_from_rate() -> None:
    rec = Recorder()
    reporter = make(rec)
    reporter.start(total=10)
    time.sleep(0.1)
    reporter.advance(5)
    snap = reporter.snapshot()
    reporter.close()
    assert snap.percent == 50.0
    assert snap.eta_seconds is not None and 0.05 < snap.eta_seconds < 1.0


def test_meta_is_published_with_the_progress_and_kept_until_replaced() -> None:
    rec = Recorder()
    reporter = make(rec, interval=0.0)
    meta = {"file": "a.csv", "skipped": 2}
    reporter.set(current=1, total=4, meta=meta)
    meta["skipped"] = 99  # a later change to the task's dict is not published behind its back
    reporter.advance(1)
    reporter.start(total=10)  # a new phase keeps the meta
    reporter.close()
    assert rec.events[-1][1].meta == {"file": "a.csv", "skipped": 2}
    assert reporter.snapshot(complete=True).model_dump(exclude_none=True)["meta"] == {"file": "a.csv", "skipped": 2}


@pytest.mark.parametrize(("meta", "error", "message"), [
    ({"rows": "x" * 5000}, ValueError, "progress meta is 5011 bytes of JSON; the limit is 4096"),
    ({"when": object()}, TypeError, "progress meta must be JSON"),
    ({"ratio": float("nan")}, TypeError, "progress meta must be JSON"),
    (["not", "a", "dict"], TypeError, "progress meta must be a dict (a JSON object), got list"),
])
def test_bad_meta_is_refused_in_the_task_with_a_clear_error(meta: Any, error: type[Exception], message: str) -> None:
    rec = Recorder()
    reporter = make(rec, interval=0.0)
    with pytest.raises(error, match=re.escape(message)):
        reporter.set(meta=meta)
    reporter.close()
    assert all(event[1].meta is None for event in rec.events)
