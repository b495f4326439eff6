"""`python -m longrun_hub`: uvicorn serving `create_app(Settings())` on bind_host:hub_port.

On SIGTERM the hub first stops accepting, tells every client where to resume (reconnect frame, close 1012)
and gives them `hub_shutdown_grace` to leave; only then does uvicorn close what is left.
"""

from __future__ import annotations

import logging
import socket

import uvicorn

from longrun_common.settings import Settings

from .app import create_app


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
    ping = settings.hub_ping_interval or None
    config = uvicorn.Config(
        create_app(settings),
        host=settings.bind_host,
        port=settings.hub_port,
        ws="websockets-sansio",  # no task per socket; keepalive pings on timers
        ws_ping_interval=ping,
        ws_ping_timeout=settings.hub_ping_timeout if ping else None,
        ws_per_message_deflate=False,  # ~40 KB of zlib state per socket for frames of a few hundred bytes
        lifespan="on",
        access_log=False,
        backlog=4096,
        timeout_graceful_shutdown=max(1, int(settings.hub_shutdown_grace) + 1),
    )
    HubServer(config).run()


if __name__ == "__main__":
    main()
