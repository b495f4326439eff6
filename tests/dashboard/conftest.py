"""The dashboard's browser tests run against one real stack each: gateway, hub and a worker (SQLite)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from longrun_common.db import migrate
from longrun_common.settings import Settings
from tests.support.fixtures import ServiceFactory, wait_ready

from .helpers import Stack

# The worker takes only these queues: a job sent to `low` waits until someone cancels it.
WORKER_QUEUES = ("default", "high")


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the page is the same on both backends (the API's SQL is tested on both elsewhere)."""
    url = f"sqlite:///{tmp_path / 'longrun.db'}"
    migrate(Settings(database_url=url))
    return url


@pytest.fixture
def settings_env(settings_env: dict[str, str]) -> dict[str, str]:
    """Tenant acme runs one job at a time, so that a second one is held (and the page says why)."""
    return {**settings_env, "LONGRUN_TENANT_LIMITS": "acme:concurrency=1"}


@pytest.fixture
async def stack(services: ServiceFactory, settings_env: dict[str, str]) -> AsyncIterator[Stack]:
    hub = services("hub", wait=False)  # its port is known before it answers
    gateway = services("gateway", env={"LONGRUN_HUB_PUBLIC_URL": hub.url}, wait=False)
    prefix = settings_env["LONGRUN_KEY_PREFIX"]
    worker = services("worker", "--concurrency", "3", "--queues", ",".join(f"{prefix}.{q}" for q in WORKER_QUEUES),
                      wait=False)
    wait_ready(hub, gateway, worker)  # all three boot side by side
    async with httpx.AsyncClient(base_url=gateway.url, timeout=15,
                                 headers={"Authorization": "Bearer dev-key"}) as http:
        yield Stack(gateway.url, http)
