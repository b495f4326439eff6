"""`python -m longrun_gateway [--workers N] [--access-log]`: migrate the database, then serve the API with uvicorn.

`python -m longrun_gateway keys …` manages API keys instead (see keys_cli.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import uvicorn

from longrun_common import telemetry
from longrun_common.db import ensure_schema
from longrun_common.httpserver import server_options
from longrun_common.settings import Settings

from .app import create_app
from .metrics import MULTIPROC_DIR, multiprocess_dir

# Long-polls may hold a request for up to a minute; on shutdown they get this long before being cut.
GRACEFUL_SHUTDOWN_SECONDS = 10


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m longrun_gateway", description=__doc__)
    parser.add_argument(
        "--workers",
        type=_positive,
        default=1,
        help="uvicorn worker processes sharing the port (default 1); metrics are summed over all of them",
    )
    parser.add_argument(
        "--access-log",
        action="store_true",
        help="log a line per request (off by default: it costs more than a cheap request; errors are always logged)",
    )
    return parser.parse_args(argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["keys"]:
        from . import keys_cli  # only this command needs it

        raise SystemExit(keys_cli.main(argv[1:]))
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    ensure_schema(settings)
    options: dict[str, Any] = {
        "host": settings.bind_host,
        "port": settings.gateway_port,
        "log_level": "info",
        "access_log": args.access_log,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        **server_options(settings),  # request line / header limits and deadline (414 / 431 / 408)
    }
    if args.workers == 1 and MULTIPROC_DIR not in os.environ:
        telemetry.setup_tracing("longrun-gateway", celery=True)
        uvicorn.run(create_app(settings), **options)
        return
    # Each worker process builds its own app (the factory); their metrics meet in one directory.
    with multiprocess_dir():
        uvicorn.run("longrun_gateway.app:create_app_from_env", factory=True, workers=args.workers, **options)


if __name__ == "__main__":
    main()
