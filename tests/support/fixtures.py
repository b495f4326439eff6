"""Shared pytest fixtures: real Redis, real SQL (SQLite and PostgreSQL), fresh prefixes, real services."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import redis
from sqlalchemy import Engine

from longrun_common.db import create_db_engine, migrate
from longrun_common.jobs import JobStore
from longrun_common.settings import Settings

from .jobs import close_store, make_store
from .processes import Service, free_port, python_module, service_env
from .servers import postgres_url_for_tests, redis_url_for_tests

TABLES = ("api_keys", "dead_letters", "idempotency_keys", "attempts", "files", "tasks", "jobs")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    with redis_url_for_tests() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_url_for_tests() as url:
        migrate(Settings(database_url=url))
        yield url


@pytest.fixture
def key_prefix() -> str:
    """A fresh Redis key / queue prefix per test: tests never see each other's keys or messages."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test using this runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'longrun.db'}"
        migrate(Settings(database_url=url))
        return url
    url: str = request.getfixturevalue("postgres_database_url")
    return url


@pytest.fixture
def postgres_database_url(postgres_url: str) -> str:
    """The session's PostgreSQL database, emptied for this test."""
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("TRUNCATE " + ", ".join(TABLES) + " CASCADE")
    return postgres_url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    """SQLite only, for tests where the backend does not matter."""
    url = f"sqlite:///{tmp_path / 'longrun.db'}"
    migrate(Settings(database_url=url))
    return url


@pytest.fixture
def settings_env(redis_url: str, database_url: str, key_prefix: str, tmp_path: Path) -> dict[str, str]:
    """LONGRUN_* variables for this test's services (free ports, own prefix, own storage)."""
    return {
        "LONGRUN_REDIS_URL": redis_url,
        "LONGRUN_DATABASE_URL": database_url,
        "LONGRUN_KEY_PREFIX": key_prefix,
        "LONGRUN_API_KEYS": "dev:dev-key,acme:acme-key",
        "LONGRUN_STORAGE_DIR": str(tmp_path / "files"),
        "LONGRUN_GATEWAY_PORT": str(free_port()),
        "LONGRUN_HUB_PORT": str(free_port()),
    }


@pytest.fixture
def settings(settings_env: dict[str, str]) -> Settings:
    values = {k.removeprefix("LONGRUN_").lower(): v for k, v in settings_env.items()}
    return Settings(**values)


@pytest.fixture
def engine(settings: Settings) -> Iterator[Engine]:
    engine = create_db_engine(settings)
    yield engine
    engine.dispose()


ServiceFactory = Callable[..., Service]


@pytest.fixture
def services(tmp_path: Path, settings_env: dict[str, str]) -> Iterator[ServiceFactory]:
    """Start real services: `services("gateway")`, `services("hub")`, `services("worker", "--concurrency=2")`.

    Extra environment goes in `env=`; every service started here is stopped after the test. `wait=False` returns
    at once: start several that way, then `wait_ready(*started)`, and they boot side by side (each one's imports
    take seconds; one after another that was most of a test's set-up).
    """
    started: list[Service] = []

    def start(kind: str, *args: str, env: dict[str, str] | None = None, wait: bool = True) -> Service:
        merged = service_env({**settings_env, **(env or {})})
        index = sum(1 for s in started if s.name.startswith(kind))
        log = tmp_path / f"{kind}-{index}.log"
        if kind == "gateway":
            port = int(merged["LONGRUN_GATEWAY_PORT"]) if index == 0 else free_port()
            merged["LONGRUN_GATEWAY_PORT"] = str(port)
            service = Service(kind, python_module("longrun_gateway", *args), merged, log, port)
        elif kind == "hub":
            port = int(merged["LONGRUN_HUB_PORT"]) if index == 0 else free_port()
            merged["LONGRUN_HUB_PORT"] = str(port)
            service = Service(kind, python_module("longrun_hub", *args), merged, log, port)
        elif kind == "worker":
            # Its metrics files in the test's own directory: a worker killed at teardown (below) cannot remove
            # the private temporary one it would make.
            merged.setdefault("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / f"worker-{index}-metrics"))
            argv = python_module("longrun_worker", "--hostname", f"w{index}-{uuid.uuid4().hex[:6]}@%h", *args)
            service = Service(kind, argv, merged, log)
        else:
            raise ValueError(f"unknown service {kind!r}")
        started.append(service)
        service.start(ready_path="/healthz" if wait else None)
        if kind == "worker" and wait:
            wait_ready(service)
        return service

    yield start
    for service in reversed(started):
        if service.name == "worker":
            # Celery's warm shutdown takes ~2 s even when idle, and longer with a job running; nothing here checks
            # it (the tests of SIGTERM and Ctrl-C send their own), so a worker is killed: its keys carry this
            # test's prefix and its database is this test's own or emptied before the next one.
            service.kill()
        service.stop()


def wait_ready(*started: Service) -> None:
    """Wait until each service started with `wait=False` is ready: answers /healthz, or (a worker) logged 'ready.'."""
    for service in started:
        if service.port is not None:
            service.wait_http("/healthz", timeout=90)
        else:
            service.wait_log("ready.", timeout=60)


@pytest.fixture
def job_store(settings: Settings) -> Iterator[JobStore]:
    """A JobStore on this test's Redis, database and prefix (submits like the gateway; closed after)."""
    store = make_store(settings)
    yield store
    close_store(store)
