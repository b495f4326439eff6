"""`python -m longrun_hub`: uvicorn serving `create_app(Settings())` on bind_host:hub_port.

On SIGTERM the hub first stops accepting, tells every client where to resume (reconnect frame, close 1012)
and gives them `hub_shutdown_grace` to leave; only then does uvicorn close what is left.

Stream tokens travel in the query string (browsers cannot set headers on WebSocket / EventSource), and
uvicorn logs request lines with it ("WebSocket /v1/ws/jobs/…?token=…" [accepted]): every log handler gets a
filter that replaces `token=` values before anything is written.
"""

from __future__ import annotations

import logging
import re
import socket
from typing import Any

import uvicorn

from longrun_common import telemetry
from longrun_common.httpserver import server_options
from longrun_common.settings import Settings

from .app import create_app
from .frames import CLIENT_FRAME_MAX
from .wsprotocol import HubWebSocketProtocol

TOKEN = re.compile(r"((?:^|[?&;\s\"'])(?:access_)?token=)[^&\s\"';]+", re.IGNORECASE)
REDACTED = "[redacted]"
UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")


def redact(text: str) -> str:
    """`text` with every `token=` value replaced."""
    return TOKEN.sub(r"\1" + REDACTED, text)


class RedactTokens(logging.Filter):
    """Rewrites a record whose message contains a `token=` value (the args are folded into the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a malformed record: leave it to the formatter to report
            return True
        if "token=" in message.lower():
            record.msg, record.args = redact(message), None
        return True


def install_token_redaction() -> RedactTokens:
    """Add the filter to uvicorn's loggers and to every handler they or the root logger write to (a filter on
    a handler also sees records propagated from child loggers). Call after uvicorn configured logging."""
    redactor = RedactTokens()
    loggers = [logging.getLogger(name) for name in UVICORN_LOGGERS] + [logging.getLogger()]
    for logger in loggers:
        if redactor not in logger.filters:
            logger.addFilter(redactor)
        for handler in logger.handlers:
            if not any(isinstance(f, RedactTokens) for f in handler.filters):
                handler.addFilter(redactor)
    return redactor


class HubServer(uvicorn.Server):
    """uvicorn, with the hub's drain before uvicorn's own connection shutdown."""

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        app = self.config.app
        hub = getattr(getattr(app, "state", None), "hub", None)
        if hub is not None:
            await hub.drain("shutdown")
        await super().shutdown(sockets)


def main() -> None:
    settings = Settings()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Delivery spans only: no per-command Redis spans on the hub's hot path.
    telemetry.setup_tracing("longrun-hub", redis=False, sqlalchemy=False)
    ping = settings.hub_ping_interval or None
    options: dict[str, Any] = {
        **server_options(settings),  # request line / header limits and deadline (414 / 431 / 408)
        # uvicorn's "websockets-sansio" (no task per socket; keepalive pings on timers), lighter per idle socket
        "ws": HubWebSocketProtocol,
    }
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.hub_port,
        ws_ping_interval=ping,
        ws_ping_timeout=settings.hub_ping_timeout if ping else None,
        ws_per_message_deflate=False,  # ~40 KB of zlib state per socket for frames of a few hundred bytes
        ws_max_size=CLIENT_FRAME_MAX,  # (uvicorn's default is 16 MiB)
        lifespan="on",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=max(1, int(settings.hub_shutdown_grace) + 1),
        **options,
    )
    install_token_redaction()  # uvicorn.Config has configured its loggers by now
    HubServer(config).run()


if __name__ == "__main__":
    main()
