"""Gateway fixtures: an in-process app with its real lifespan, on real Redis and real SQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from gateway_support import seed_catalog, serve, serve_seeded
from sqlalchemy import Engine

from longrun_common.settings import Settings
from longrun_gateway.app import create_app
from tests.support.processes import free_port


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """In-process gateways here run without the reaper/reconciler, so it cannot touch the jobs tests craft."""
    return settings.model_copy(update={"maintenance": False})


@pytest.fixture
def sqlite_settings(redis_url: str, sqlite_url: str, key_prefix: str, tmp_path: Path) -> Settings:
    """For tests where the SQL backend does not matter (HTTP-level behaviour)."""
    return Settings(
        redis_url=redis_url,
        database_url=sqlite_url,
        key_prefix=key_prefix,
        api_keys="dev:dev-key,acme:acme-key",
        storage_dir=str(tmp_path / "files"),
        gateway_port=free_port(),
        maintenance=False,
    )


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    """The catalog rows in this test's database (both backends)."""
    seed_catalog(engine)
    return engine


@pytest.fixture
async def client(settings: Settings, seeded: Engine) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a gateway on this test's settings (SQLite and PostgreSQL)."""
    async with serve(create_app(settings)) as http:
        yield http


@pytest.fixture
async def lite_client(sqlite_settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """A client for a gateway on SQLite, with the catalog seeded."""

    async with serve_seeded(sqlite_settings) as http:
        yield http
