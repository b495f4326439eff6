"""Database engine and migrations."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import sqlalchemy
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError

from .settings import Settings

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# A pooled connection idle at least this long is pinged before it is handed out (see _ping_idle_connections).
IDLE_PING_SECONDS = 5.0


def create_db_engine(settings: Settings) -> Engine:
    """An engine for the configured database; SQLite gets WAL and a busy timeout for concurrent processes."""
    url = make_url(settings.sqlalchemy_url)
    kwargs: dict[str, Any] = {}
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
    # Looked up at call time: tracing (longrun_common.telemetry) instruments sqlalchemy.create_engine.
    engine = sqlalchemy.create_engine(url, **kwargs)
    if url.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Ping (the dialect's SELECT 1) a pooled connection that sat idle IDLE_PING_SECONDS or more before handing it
    out; a dead one is replaced, so a database restart costs no request.

    Why not pool_pre_ping: it pings on every checkout, a round trip per transaction (on PostgreSQL as much CPU as a
    submit's INSERT), although a connection used moments ago is almost always alive. One that died since (a restart
    within those seconds) fails its next statement; SQLAlchemy then sees a disconnect and invalidates the whole
    pool, so one request per process may get the 503 a database outage gets anyway.
    """

    @event.listens_for(engine, "checkin")
    def _idle_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.get("idle_since")
        if since is None or time.monotonic() - since < IDLE_PING_SECONDS:
            return  # a new connection, or one used moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError("pooled connection is dead") from exc  # the pool retries with a new one


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    # WAL + NORMAL: no fsync per commit (FULL cost 0.67 ms each here, and SQLite's one writer holds its lock
    # through it, so every other process waits too); a killed process still loses nothing committed, a power
    # cut may lose the newest commits. Production runs PostgreSQL.
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def alembic_config(settings: Settings) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", settings.sqlalchemy_url.replace("%", "%%"))
    return config


@contextlib.contextmanager
def _sqlite_migration_lock(settings: Settings) -> Iterator[None]:
    """An exclusive file lock next to a SQLite database file, held while migrating.

    SQLite has no advisory lock, and alembic reads the version table before its DDL takes SQLite's write lock:
    two services migrating a fresh file at once both see no tables and the second fails (`table ... already
    exists`). The lock file sits beside the database so every process that opens it agrees on the lock.
    """
    url = make_url(settings.sqlalchemy_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        yield
        return
    lock_path = Path(url.database + ".migrate.lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def migrate(settings: Settings) -> None:
    """Bring the database to the newest schema (idempotent; safe from several processes at once: PostgreSQL
    takes an advisory lock, SQLite a file lock next to the database; the later ones wait and find it done)."""
    with _sqlite_migration_lock(settings):
        engine = create_db_engine(settings)
        try:
            with engine.begin() as connection:
                if connection.dialect.name == "postgresql":
                    connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7410001)")
                config = alembic_config(settings)
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        finally:
            engine.dispose()


def schema_is_current(settings: Settings) -> bool:
    """True when the database answers and its schema is at the newest migration."""
    heads = set(ScriptDirectory.from_config(alembic_config(settings)).get_heads())
    engine = create_db_engine(settings)
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    except SQLAlchemyError:
        return False  # not reachable yet, or mid-migration: the caller asks again
    finally:
        engine.dispose()
    return current == heads


def wait_for_schema(settings: Settings, timeout: float, interval: float = 1.0) -> bool:
    """Wait until the schema is current (someone else migrates it: the chart's hook Job); False on timeout."""
    deadline = time.monotonic() + timeout
    while not schema_is_current(settings):
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)
    return True


SCHEMA_WAIT_SECONDS = 300.0


def ensure_schema(settings: Settings) -> None:
    """What a service does at start: migrate (LONGRUN_MIGRATE_ON_START, the default), or wait for whoever
    migrates (the chart's migrations Job) instead of racing it; RuntimeError if the schema never comes."""
    if settings.migrate_on_start:
        migrate(settings)
        return
    shown = make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)
    if not wait_for_schema(settings, SCHEMA_WAIT_SECONDS):
        raise RuntimeError(f"the database schema is not current after {SCHEMA_WAIT_SECONDS:g}s: {shown} "
                           "(LONGRUN_MIGRATE_ON_START is false: run `python -m longrun_common.db` first)")
    # Said on stderr before any logging is set up: an operator reading a pod's log sees who migrated.
    print(f"database schema current, migrations left to their own job: {shown}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """`python -m longrun_common.db`: migrate the configured database; with `--wait SECONDS`, only wait until
    someone else has (what a service's init container runs, so services never race the migrations Job)."""
    parser = argparse.ArgumentParser(prog="python -m longrun_common.db", description=main.__doc__)
    parser.add_argument("--wait", type=float, metavar="SECONDS", default=None,
                        help="do not migrate: wait up to SECONDS for the schema to be current; exit 1 if it is not")
    args = parser.parse_args(argv)
    # alembic reports each migration it runs ("Running upgrade a -> b") at INFO: the log shows what ran.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    shown = make_url(settings.sqlalchemy_url).render_as_string(hide_password=True)
    if args.wait is not None:
        if not wait_for_schema(settings, args.wait):
            print(f"database schema not current after {args.wait:g}s: {shown} (has the migration run?)",
                  file=sys.stderr)
            return 1
        print(f"database schema current: {shown}")
        return 0
    migrate(settings)
    print(f"database ready: {shown}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
