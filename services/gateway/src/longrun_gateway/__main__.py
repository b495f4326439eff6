"""`python -m longrun_gateway`: migrate the database, then serve the API with uvicorn."""

from __future__ import annotations

import logging

import uvicorn

from longrun_common.db import migrate
from longrun_common.settings import Settings

from .app import create_app

# Long-polls may hold a request for up to a minute; on shutdown they get this long before being cut.
GRACEFUL_SHUTDOWN_SECONDS = 10


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    migrate(settings)
    uvicorn.run(
        create_app(settings),
        host=settings.bind_host,
        port=settings.gateway_port,
        log_level="info",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )


if __name__ == "__main__":
    main()
