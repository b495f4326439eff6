"""Progress reporting that costs the task almost nothing.

The task thread only updates in-memory state; one background thread per running job publishes it:
at once after a quiet interval (leading edge), at most once per interval during a burst, and always the last
value of a burst. The same thread renews the job's lease when the task is quiet (heartbeat) and notices cancel
and drain requests, which the task sees at its next report.
"""

from __future__ import annotations

import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from longrun_common.events import Progress, check_progress_meta
from longrun_common.publisher import HEARTBEAT_CANCEL, HEARTBEAT_DRAIN, HEARTBEAT_FENCED, Published

from .errors import JobCancelled, JobDrained, JobFenced

log = logging.getLogger(__name__)

Emit = Callable[[Progress, dict[str, Any] | None], Published]
Heartbeat = Callable[[], int]
# Told after each publish how many task-side calls the event carried (metrics; runs on the reporter thread).
OnPublish = Callable[[int], None]


@dataclass
class _State:
    current: float = 0.0
    total: float | None = None
    message: str | None = None
    stage: str | None = None
    percent: float | None = None
    meta: dict[str, Any] | None = None
    started_at: float = field(default_factory=time.monotonic)
    start_value: float = 0.0


class Reporter:
    """Coalescing progress reporter for one job attempt."""

    def __init__(self, emit: Emit, heartbeat: Heartbeat, *, interval: float, heartbeat_every: float,
                 on_publish: OnPublish | None = None):
        self._emit = emit
        self._on_publish = on_publish
        self._calls = 0  # task-side calls since the last publish
        self._heartbeat = heartbeat
        self._interval = interval
        self._heartbeat_every = heartbeat_every
        self._state = _State()
        self._checkpoint: dict[str, Any] | None = None
        self._dirty = False
        self._last_sent = 0.0  # monotonic time of the last publish or heartbeat
        self._cond = threading.Condition()
        self._stopped = False
        self.cancel_requested = False
        self.drain_requested = False
        self.fenced = False
        self.published = 0
        self._thread = threading.Thread(target=self._run, name="longrun-reporter", daemon=True)

    # --- task-facing API ------------------------------------------------------------------------------

    def start(self, total: float | None = None, *, current: float = 0, stage: str | None = None,
              message: str | None = None) -> None:
        """Begin (or restart) counting toward `total`; ETA is measured from here."""
        with self._cond:
            self._state = _State(current=current, total=total, message=message, stage=stage,
                                 meta=self._state.meta, start_value=current)
            self._mark_dirty()
        self.raise_if_interrupted()

    def advance(self, amount: float = 1, *, message: str | None = None) -> None:
        """Add `amount` to the current count."""
        with self._cond:
            self._state.current += amount
            if message is not None:
                self._state.message = message
            self._mark_dirty()
        self.raise_if_interrupted()

    def set(self, *, current: float | None = None, total: float | None = None, message: str | None = None,
            stage: str | None = None, percent: float | None = None, meta: dict[str, Any] | None = None) -> None:
        """Set any part of the progress explicitly. `meta` (a JSON object of at most 4 KiB) replaces the previous
        one and travels with every event as `progress.meta`; TypeError / ValueError say what is wrong with it."""
        checked = check_progress_meta(meta) if meta is not None else None  # in the task's thread: it sees the error
        with self._cond:
            state = self._state
            if current is not None:
                state.current = current
            if total is not None:
                state.total = total
            if message is not None:
                state.message = message
            if stage is not None:
                state.stage = stage
            if percent is not None:
                state.percent = percent
            if checked is not None:
                state.meta = checked
            self._mark_dirty()
        self.raise_if_interrupted()

    def checkpoint(self, data: dict[str, Any]) -> None:
        """Remember where the task is; published with the next report (atomically with it)."""
        with self._cond:
            self._checkpoint = data
            self._mark_dirty()
        self.raise_if_interrupted()

    def raise_if_interrupted(self) -> None:
        if self.fenced:
            raise JobFenced("a newer attempt of this job has taken over")
        if self.cancel_requested:
            raise JobCancelled("cancel requested")
        if self.drain_requested:
            raise JobDrained("worker is shutting down")

    # --- lifecycle ------------------------------------------------------------------------------------

    def begin(self) -> None:
        self._last_sent = time.monotonic()
        # The thread runs in a copy of the task's context: its publish spans nest under the task's span and
        # its log lines carry the job's fields.
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name="longrun-reporter", daemon=True)
        self._thread.start()

    def close(self, *, publish_pending: bool = True) -> None:
        """Stop the thread and publish whatever is still pending (unless the caller's next event, the job's
        success, carries it: `publish_pending=False`)."""
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(10)
        if publish_pending:
            self._flush()

    def snapshot(self, *, complete: bool = False) -> Progress:
        """The progress as clients see it (`complete` pins it to 100%)."""
        with self._cond:
            return self._progress_locked(complete)

    @property
    def last_checkpoint(self) -> dict[str, Any] | None:
        return self._checkpoint

    # --- internals ------------------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._calls += 1
        if not self._dirty:
            self._dirty = True
            self._cond.notify()

    def _progress_locked(self, complete: bool = False) -> Progress:
        state = self._state
        total, current = state.total, state.current
        percent = state.percent
        if complete:
            percent, current = 100.0, total if total is not None else current
        elif percent is None and total:
            percent = max(0.0, min(100.0, current / total * 100.0))
        eta = None
        done = current - state.start_value
        if total and not complete and done > 0:
            elapsed = time.monotonic() - state.started_at
            eta = max(0.0, elapsed / done * (total - current))
        return Progress(
            percent=None if percent is None else round(percent, 3),
            current=current,
            total=total,
            message=state.message,
            stage=state.stage,
            eta_seconds=None if eta is None else round(eta, 3),
            meta=state.meta,
        )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    now = time.monotonic()
                    flush_at = self._last_sent + self._interval
                    beat_at = self._last_sent + self._heartbeat_every
                    if self._dirty and now >= flush_at:
                        break
                    if now >= beat_at:
                        break
                    self._cond.wait(timeout=(min(flush_at, beat_at) if self._dirty else beat_at) - now)
                if self._stopped:
                    return
                dirty = self._dirty
            try:
                if dirty:
                    self._flush()
                else:
                    self._beat()
            except Exception:  # a Redis blip must not kill the task; the next report retries
                log.warning("progress publish failed; will retry", exc_info=True)
                with self._cond:
                    self._last_sent = time.monotonic()

    def _flush(self) -> None:
        with self._cond:
            if not self._dirty:
                return
            progress = self._progress_locked()
            checkpoint = self._checkpoint
            calls, self._calls = self._calls, 0
            self._dirty = False
            self._last_sent = time.monotonic()
        published = self._emit(progress, checkpoint)
        self.published += 1
        if self._on_publish is not None:
            self._on_publish(calls)
        self._note(published.fenced, published.cancel_requested, published.drain_requested)

    def _beat(self) -> None:
        with self._cond:
            self._last_sent = time.monotonic()
        code = self._heartbeat()
        self._note(code == HEARTBEAT_FENCED, code == HEARTBEAT_CANCEL, code == HEARTBEAT_DRAIN)

    def _note(self, fenced: bool, cancel: bool, drain: bool) -> None:
        self.fenced = self.fenced or fenced
        self.cancel_requested = self.cancel_requested or cancel
        self.drain_requested = self.drain_requested or drain
