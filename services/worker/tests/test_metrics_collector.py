"""The worker's metrics endpoint turns the pool processes' last-report epochs into the stuck-job signal."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prometheus_client.mmap_dict import MmapedDict, mmap_key

from longrun_worker.metrics import _LAST_REPORT, REPORT_AGE, WorkerCollector


def write_last_report(directory: Path, task: str, epoch: float) -> None:
    """What a pool process's `last_report` gauge (multiprocess mode livemin) leaves in its file."""
    values = MmapedDict(str(directory / f"gauge_livemin_{os.getpid()}.db"))  # a live pid: not swept as dead
    key = mmap_key(_LAST_REPORT, _LAST_REPORT, ["task"], [task], "Epoch of the oldest last report")
    values.write_value(key, epoch, 0.0)
    values.close()


def report_ages(directory: Path) -> dict[str, float]:
    families = [m for m in WorkerCollector(str(directory)).collect() if m.name == REPORT_AGE]
    return {s.labels["task"]: s.value for family in families for s in family.samples}


def test_a_gauge_not_set_yet_is_no_report_at_the_epoch(tmp_path: Path) -> None:
    write_last_report(tmp_path, "fresh", 0.0)  # created by labels(), not yet set by the attempt's begin
    assert report_ages(tmp_path) == {}


def test_the_age_of_a_running_jobs_last_report(tmp_path: Path) -> None:
    write_last_report(tmp_path, "demo.steps", time.time() - 5)
    ages = report_ages(tmp_path)
    assert 4.5 <= ages["demo.steps"] < 30
