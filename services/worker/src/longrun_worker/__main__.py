"""`python -m longrun_worker [celery worker options]`: migrate, then run a Celery worker for Longrun's queues."""

from __future__ import annotations

import sys

from longrun_common.celery_app import QUEUES
from longrun_common.db import ensure_schema
from longrun_common.keys import Keys
from longrun_common.settings import Settings

from .app import create_worker_app


def main(argv: list[str]) -> None:
    settings = Settings()
    ensure_schema(settings)
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
