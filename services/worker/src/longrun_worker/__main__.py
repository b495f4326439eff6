"""`python -m longrun_worker [celery worker options]`: migrate, then run a Celery worker for Longrun's queues.

Nothing that imports prometheus_client is imported at module level: PROMETHEUS_MULTIPROC_DIR must be set before
prometheus_client is first imported (it picks its value store then), so that every pool process writes its
metrics where the main process reads them.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from celery import Celery

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"

log = logging.getLogger("longrun_worker")


def prepare_multiprocess_dir() -> tuple[Path, bool]:
    """Point PROMETHEUS_MULTIPROC_DIR at an empty directory: the one given (emptied: values of an earlier run
    would be summed in), else a private temporary one. Returns it, and whether it is the private one (which the
    worker removes when it exits)."""
    given = os.environ.get(MULTIPROC_DIR)
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        for stale in path.glob("*.db"):
            stale.unlink()
        return path, False
    path = Path(tempfile.mkdtemp(prefix="longrun-worker-metrics-"))
    os.environ[MULTIPROC_DIR] = str(path)
    return path, True


def main(argv: list[str]) -> int:
    path, private = prepare_multiprocess_dir()
    try:
        return _run(argv)
    finally:
        if private:  # one left behind per run otherwise (a killed worker's still is: point it at a directory)
            shutil.rmtree(path, ignore_errors=True)


def _run(argv: list[str]) -> int:
    from longrun_common.db import ensure_schema
    from longrun_common.keys import Keys
    from longrun_common.settings import Settings

    from .api import REGISTRY
    from .app import create_worker_app

    settings = Settings()
    ensure_schema(settings)
    app = create_worker_app(settings)
    keys = Keys(settings.key_prefix)
    options = list(argv)
    if not any(opt.startswith(("-Q", "--queues")) for opt in options):
        # LONGRUN_WORKER_QUEUES (`make worker QUEUES=…`), else every queue of LONGRUN_QUEUES.
        options += ["--queues", ",".join(keys.queue(name) for name in settings.consumed_queues)]
    unrouted = sorted(name for name, d in REGISTRY.items() if d.policy.queue not in settings.queue_names)
    if unrouted:
        log.warning("tasks %s declare a default queue not in LONGRUN_QUEUES (%s): their jobs must name a queue",
                    ", ".join(unrouted), settings.queues)
    if not any(opt.startswith(("-l", "--loglevel")) for opt in options):
        options += ["--loglevel", "INFO"]
    # Mingle/gossip sync Celery's in-memory revokes between workers; Longrun keeps cancels in SQL and Redis,
    # so they only slow start-up.
    code = run_worker(app, ["worker", "--events", "--without-mingle", "--without-gossip", *options])
    if code:
        # Celery has already logged why ("Unrecoverable error: …"); say what happens next, in words an operator
        # searching the logs finds, and exit non-zero so that a supervisor restarts the worker.
        log.critical("worker stopped with exit code %s; exiting so that its supervisor restarts it", code)
    return code


def run_worker(app: Celery, argv: list[str]) -> int:
    """`app.worker_main(argv)`, keeping the worker's exit status.

    Celery's `worker_main` drops it: a worker that ended on an unrecoverable error exited 0, and a supervisor
    that restarts only failed processes (systemd `Restart=on-failure`, a Job/Pod with `restartPolicy:
    OnFailure`) left it down.
    """
    from celery.bin.celery import celery as cli

    cli.params[0].default = app  # what `app.start` does: the CLI's --app defaults to this app
    try:
        code = cli.main(args=argv, standalone_mode=False)  # returns the code of `ctx.exit(worker.exitcode)`
    finally:
        cli.params[0].default = None
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
