"""The real stack for the client's tests (imported by name: this folder is on sys.path in prepend mode)."""

from __future__ import annotations

import itertools
import sys
import uuid
from pathlib import Path
from typing import Any

from longrun_client import Client
from tests.support.processes import Service, free_port, python_module, service_env

TENANTS = 200
START_TIMEOUT = 180.0  # generous: on a loaded CI machine importing the gateway alone can take half a minute


class Stack:
    """The services of one test module, on their own Redis prefix, SQLite file and ports."""

    def __init__(self, redis_url: str, tmp: Path) -> None:
        self.tmp = tmp
        self.env = {
            "LONGRUN_REDIS_URL": redis_url,
            "LONGRUN_DATABASE_URL": f"sqlite:///{tmp / 'longrun.db'}",
            "LONGRUN_KEY_PREFIX": f"c{uuid.uuid4().hex[:10]}",
            "LONGRUN_API_KEYS": ",".join(f"t{i}:t{i}-key" for i in range(TENANTS)),
            "LONGRUN_STORAGE_DIR": str(tmp / "files"),
            "LONGRUN_HUB_PORT": str(free_port()),
            "LONGRUN_GATEWAY_PORT": str(free_port()),
        }
        self.env["LONGRUN_HUB_PUBLIC_URL"] = f"http://127.0.0.1:{self.env['LONGRUN_HUB_PORT']}"
        self.started: list[Service] = []
        self._tenants = itertools.count()

    def start(self, name: str, argv: list[str], port: int | None = None, ready_log: str | None = None,
              env: dict[str, str] | None = None, wait: bool = True) -> Service:
        merged = service_env({**self.env, **(env or {})})
        service = Service(name, argv, merged, self.tmp / f"{name}-{len(self.started)}.log", port)
        self.started.append(service)
        service.start(ready_path="/healthz" if wait else None, timeout=START_TIMEOUT)
        if ready_log and wait:
            service.wait_log(ready_log, timeout=START_TIMEOUT)
        return service

    def up(self) -> Stack:
        # All three boot side by side; the tests begin once the worker is ready, so it has registered the task
        # catalog the gateway validates submissions against.
        hostname = f"c{uuid.uuid4().hex[:6]}@%h"
        self.worker = self.start("worker", python_module("longrun_worker", "--hostname", hostname,
                                                         "--concurrency", "2"), wait=False)
        self.hub = self.start("hub", python_module("longrun_hub"), int(self.env["LONGRUN_HUB_PORT"]), wait=False)
        self.gateway = self.start("gateway", python_module("longrun_gateway"), int(self.env["LONGRUN_GATEWAY_PORT"]),
                                  wait=False)
        self.worker.wait_log("ready.", timeout=START_TIMEOUT)
        for service in (self.hub, self.gateway):
            service.wait_http("/healthz", START_TIMEOUT)
        return self

    def stop(self) -> None:
        for service in reversed(self.started):
            service.stop()

    def new_key(self) -> str:
        """The API key of a tenant no other test used."""
        index = next(self._tenants)
        assert index < TENANTS, "more tests than tenants: raise TENANTS"
        return f"t{index}-key"

    def client(self, api_key: str | None = None, **options: Any) -> Client:
        return Client(self.gateway.url, api_key or self.new_key(), **options)

    def hub_without_websockets(self) -> Service:
        """A hub served with uvicorn's WebSockets off: upgrades get a plain HTTP 404, as behind some proxies."""
        port = free_port()
        code = ("import uvicorn; from longrun_common.settings import Settings; from longrun_hub.app import create_app; "
                "s = Settings(); uvicorn.run(create_app(s), host='127.0.0.1', port=s.hub_port, ws='none')")
        return self.start("hub-nows", [sys.executable, "-c", code], port, env={"LONGRUN_HUB_PORT": str(port)})

    def restart_hub(self) -> None:
        """Stop the hub (SIGTERM: it tells its clients to reconnect) and start it again on the same port."""
        self.hub.stop()
        self.hub.start(timeout=START_TIMEOUT)
