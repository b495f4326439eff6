"""`python -m longrun_worker [celery worker options]`: migrate, then run a Celery worker for Longrun's queues.

Nothing is imported at module level but the standard library: PROMETHEUS_MULTIPROC_DIR must be set before
prometheus_client is first imported (it picks its value store then), so that every pool process writes its
metrics where the main process reads them.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"


def prepare_multiprocess_dir() -> Path:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory: the one given (emptied: values of an earlier run
    would be summed in), else a private temporary one."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path
    path = Path(tempfile.mkdtemp(prefix="longrun-worker-metrics-"))
    os.environ[MULTIPROC_DIR] = str(path)
    return path


def main(argv: list[str]) -> None:
    prepare_multiprocess_dir()

    from longrun_common.celery_app import QUEUES
    from longrun_common.db import migrate
    from longrun_common.keys import Keys
    from longrun_common.settings import Settings

    from .app import create_worker_app

    settings = Settings()
    migrate(settings)
    app = create_worker_app(settings)
    keys = Keys(settings.key_prefix)
    options = list(argv)
    if not any(opt.startswith(("-Q", "--queues")) for opt in options):
        options += ["--queues", ",".join(keys.queue(name) for name in QUEUES)]
    if not any(opt.startswith(("-l", "--loglevel")) for opt in options):
        options += ["--loglevel", "INFO"]
    # Mingle/gossip sync Celery's in-memory revokes between workers; Longrun keeps cancels in SQL and Redis,
    # so they only slow start-up.
    app.worker_main(["worker", "--events", "--without-mingle", "--without-gossip", *options])


if __name__ == "__main__":
    main(sys.argv[1:])
