"""Entry point for the Celery CLI and Flower: `celery -A longrun_worker.entry:app worker|flower`."""

from longrun_common.settings import Settings

from .app import create_worker_app

app = create_worker_app(Settings())
