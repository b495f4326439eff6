"""JobContext: what a running task sees of its job."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlmodel import Session

from longrun_common.models import StoredFile
from longrun_common.settings import Settings
from longrun_common.storage import file_path

from .errors import PermanentError
from .reporter import Reporter


@dataclass
class StoredFileHandle:
    """An uploaded file as a task reads it."""

    id: str
    name: str
    size: int
    sha256: str
    path: Path


class JobContext:
    """Progress, checkpoints and files for one attempt of one job."""

    def __init__(self, *, job_id: str, attempt: int, tenant: str, task: str, reporter: Reporter,
                 resumed_from: dict[str, Any] | None, settings: Settings, session_factory: Any,
                 inputs: list[Any] | None = None):
        self.job_id = job_id
        self.attempt = attempt
        self.tenant = tenant
        self.task = task
        self.progress = reporter
        self.resumed_from = resumed_from
        # A workflow step: the results of the steps it depends on, in order (empty for a plain job).
        self.inputs: list[Any] = list(inputs or [])
        self.log = logging.getLogger(f"longrun.task.{task}")
        self._settings = settings
        self._session_factory = session_factory

    def checkpoint(self, data: dict[str, Any]) -> None:
        """Record where the task is; a retry or another worker resumes from the last one (`resumed_from`)."""
        self.progress.checkpoint(data)

    @property
    def cancel_requested(self) -> bool:
        return self.progress.cancel_requested

    def check(self) -> None:
        """Raise now if the job was cancelled or superseded (for loops that report rarely)."""
        self.progress.raise_if_interrupted()

    def file(self, file_id: str) -> StoredFileHandle:
        """An uploaded file of this job's tenant, by id (a PermanentError if it does not exist)."""
        with self._session_factory() as session:
            assert isinstance(session, Session)
            row = session.get(StoredFile, file_id)
        if row is None or row.tenant != self.tenant:
            raise PermanentError(f"file {file_id!r} does not exist; upload it with POST /v1/files first")
        path = file_path(self._settings, self.tenant, file_id)
        if not path.exists():
            raise PermanentError(f"file {file_id!r} is recorded but its content is missing from storage")
        return StoredFileHandle(row.id, row.name, row.size, row.sha256, path)
