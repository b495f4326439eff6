"""Celery task events Longrun sends itself, so that Flower (which only sees events) tells the truth.

Celery's own events describe the Celery task, not the job: a job that Longrun records as failed or cancelled
returns normally from the Celery task's point of view. The runner therefore raises for a failure (Celery sends
`task-failed`), sends `task-revoked` before ending a cancelled attempt, and reports progress as a custom
`task-progress` event (Flower shows its `result` field and the state `PROGRESS`), at most once per published
progress event: the coalesced rate, from the reporter thread, never from the task's own thread.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

from celery import Celery

log = logging.getLogger(__name__)


class TaskEvents:
    """One event dispatcher per process (created on first use, after the fork), shared by its threads."""

    def __init__(self, app: Celery | None) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._dispatcher: Any = None
        self._connection: Any = None
        self._pid = 0

    @property
    def enabled(self) -> bool:
        return self.app is not None and bool(self.app.conf.worker_send_task_events)

    def send(self, type_: str, uuid: str, hostname: str, **fields: Any) -> None:
        """Send one task event; a broker blip loses the event, never the job."""
        if not self.enabled:
            return
        assert self.app is not None
        try:
            with self._lock:
                if self._dispatcher is None or self._pid != os.getpid() or self._dispatcher.hostname != hostname:
                    self._close_locked()
                    self._connection = self.app.connection_for_write()
                    self._dispatcher = self.app.events.Dispatcher(self._connection, hostname=hostname, enabled=True)
                    self._pid = os.getpid()
                self._dispatcher.send(type_, uuid=uuid, **fields)
        except Exception:
            log.warning("could not send %s for task %s", type_, uuid, exc_info=True)
            with self._lock:
                self._close_locked()

    def progress(self, uuid: str, hostname: str, progress_json: str) -> None:
        self.send("task-progress", uuid, hostname, result=progress_json)

    def revoked(self, uuid: str, hostname: str) -> None:
        self.send("task-revoked", uuid, hostname, terminated=False, signum=None, expired=False)

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        dispatcher, connection = self._dispatcher, self._connection
        self._dispatcher = self._connection = None
        if self._pid != os.getpid():
            return  # the parent's connection: never close it from a forked child
        for closing in (dispatcher, connection):
            if closing is not None:
                try:
                    closing.close()
                except Exception:  # already broken; nothing to release
                    log.debug("closing the event dispatcher failed", exc_info=True)
