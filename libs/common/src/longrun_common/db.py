"""Database engine and migrations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url

from .settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def create_db_engine(settings: Settings) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout for concurrent processes."""
    url = make_url(settings.sqlalchemy_url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    # Looked up at call time: tracing (longrun_common.telemetry) instruments sqlalchemy.create_engine.
    engine = sqlalchemy.create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


def migrate(settings: Settings) -> None:
    """Bring the database to the newest schema (idempotent; safe from several processes on PostgreSQL)."""
    engine = create_db_engine(settings)
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                # Several services may start at once; one migrates, the others wait and find it done.
                connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7410001)")
            config = alembic_config(settings)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def main() -> None:
    """`python -m longrun_common.db`: migrate the configured database."""
    settings = Settings()
    migrate(settings)
    print(f"database ready: {make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)}")


if __name__ == "__main__":
    main()
