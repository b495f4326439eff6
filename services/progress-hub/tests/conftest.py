"""Hub test fixtures: jobs published exactly as the worker publishes them, tokens, WebSocket helpers."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from hubtest import Jobs, SharedHub

from longrun_common.settings import Settings
from tests.support.processes import Service, free_port, python_module, service_env


@pytest.fixture
def database_url(sqlite_url: str) -> str:
    """The hub has no database; services started here (gateway, worker) get SQLite, once per test."""
    return sqlite_url


@pytest.fixture
async def aredis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def jobs(aredis: aioredis.Redis, settings: Settings) -> Jobs:
    return Jobs(aredis, settings)


@pytest.fixture
def job_id() -> str:
    return str(uuid.uuid4())


@pytest.fixture(scope="session")
def shared_hub_service(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    """One real hub process for the tests that need no settings of their own (jobs are isolated by id)."""
    prefix, port = f"hs{uuid.uuid4().hex[:8]}", free_port()
    env = service_env({"LONGRUN_REDIS_URL": redis_url, "LONGRUN_KEY_PREFIX": prefix, "LONGRUN_HUB_PORT": str(port)})
    log = tmp_path_factory.mktemp("shared-hub") / "hub.log"
    service = Service("hub-shared", python_module("longrun_hub"), env, log, port).start()
    yield service
    service.stop()


@pytest.fixture
def hub(shared_hub_service: Service, aredis: aioredis.Redis, redis_url: str) -> SharedHub:
    env = shared_hub_service.env
    settings = Settings(redis_url=redis_url, key_prefix=env["LONGRUN_KEY_PREFIX"],
                        hub_port=int(env["LONGRUN_HUB_PORT"]))
    return SharedHub(shared_hub_service.url, Jobs(aredis, settings), shared_hub_service)
