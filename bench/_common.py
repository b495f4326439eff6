"""Shared helpers for the benchmarks: a private stack (Redis, database, services), percentiles and tables.

Not a benchmark itself (`make bench` runs every bench/*.py; running this file only says so).
Every benchmark owns everything it talks to: a private redis-server on a free port, a temp SQLite file (or a
PostgreSQL database it creates and drops), and its own processes, all on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # `uv run python bench/x.py` puts bench/ first; tests.support lives at the root
    sys.path.insert(0, str(REPO))

from sqlalchemy.engine import make_url  # noqa: E402

from longrun_common.db import migrate  # noqa: E402
from longrun_common.settings import Settings  # noqa: E402
from tests.support.processes import Service, free_port, python_module, service_env  # noqa: E402
from tests.support.servers import RedisServer  # noqa: E402

KEY_PREFIX = "bench"


# --- numbers and tables --------------------------------------------------------------------------------------

def percentile(values: Sequence[float], p: float) -> float:
    """The p-th percentile (0-100) with linear interpolation; nan for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = (len(ordered) - 1) * p / 100.0
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def ratio(ours: float, baseline: float) -> str:
    """`ours / baseline` as `1.23x` (n/a when the baseline is zero or missing)."""
    if not baseline or math.isnan(baseline) or math.isnan(ours):
        return "n/a"
    return f"{ours / baseline:.2f}x"


def ms(seconds: float) -> str:
    return "n/a" if math.isnan(seconds) else f"{seconds * 1000:.1f} ms"


def num(value: float, digits: int = 0) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    return f"{value:,.{digits}f}"


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[Any]],
                notes: Sequence[str] = ()) -> None:
    """A compact fixed-width table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    print()
    print(title)
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    for note in notes:
        print(f"  {note}")
    sys.stdout.flush()


def collapsed_stacks(path: Path) -> Iterator[tuple[list[str], int]]:
    """py-spy's raw (collapsed) output: each sampled stack, outermost frame first, with its sample count."""
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            yield stack.split(";"), int(count)


def paced(rate: float, count: int) -> Iterator[tuple[int, float]]:
    """An open-loop schedule: item i is due at start + i / rate (time.perf_counter); sleeps until each is due and
    yields (i, due), so a late item shows as its lateness, not as a later schedule."""
    start = time.perf_counter()
    for i in range(count):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        yield i, due


def say(message: str) -> None:
    """Progress lines while a benchmark runs (stderr, so the tables on stdout stay clean)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- arguments -------------------------------------------------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark shares."""
    ap = argparse.ArgumentParser(description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--database-url", default=None,
                    help="SQL database (default: a temp SQLite file). A PostgreSQL URL names a database that this "
                         "benchmark creates and drops, e.g. postgresql://postgres@127.0.0.1:5432/longrun_bench")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (service logs) afterwards")
    return ap


# --- the database ----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def database(url: str | None, workdir: Path) -> Iterator[str]:
    """A migrated, empty database for one run: a temp SQLite file, or a PostgreSQL database created and
    dropped here (refuses to touch one that already exists)."""
    if url is None:
        path = workdir / "longrun.db"
        url = f"sqlite:///{path}"
        migrate(Settings(database_url=url))
        yield url
        return
    parsed = make_url(url)
    if not parsed.get_backend_name().startswith("postgres"):
        migrate(Settings(database_url=url))
        yield url
        return
    import psycopg

    name = parsed.database or ""
    if name in {"", "postgres", "template0", "template1"}:
        name = f"longrun_bench_{os.getpid()}"
    admin = parsed.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            raise SystemExit(f"database {name!r} already exists; name one this benchmark may create and drop")
        conn.execute(f'CREATE DATABASE "{name}"')
    own = parsed.set(drivername="postgresql", database=name).render_as_string(hide_password=False)
    try:
        migrate(Settings(database_url=own))
        yield own
    finally:
        with contextlib.suppress(Exception), psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- the stack -------------------------------------------------------------------------------------------------

@dataclass
class Stack:
    """A private Redis, a database and the Longrun processes started on them; stop() ends all of it."""

    workdir: Path
    redis: RedisServer
    database_url: str
    extra_env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        """LONGRUN_* for every process of this stack (own Redis, database, prefix, storage, ports)."""
        return {
            "LONGRUN_REDIS_URL": self.redis.url,
            "LONGRUN_DATABASE_URL": self.database_url,
            "LONGRUN_KEY_PREFIX": KEY_PREFIX,
            "LONGRUN_API_KEYS": "dev:dev-key",
            "LONGRUN_STORAGE_DIR": str(self.workdir / "files"),
            "LONGRUN_HUB_PUBLIC_URL": "http://127.0.0.1:1",
            **self.extra_env,
        }

    @property
    def settings(self) -> Settings:
        values = {k.removeprefix("LONGRUN_").lower(): v for k, v in self.env.items()}
        return Settings(**values)

    def _log(self, kind: str) -> Path:
        index = sum(1 for s in self.services if s.name == kind)
        return self.workdir / f"{kind}-{index}.log"

    def gateway(self, *args: str, timeout: float = 60.0) -> Service:
        """A real gateway (`python -m longrun_gateway [args]`, uvicorn) on a free port, ready on /healthz."""
        port = free_port()
        env = service_env({**self.env, "LONGRUN_GATEWAY_PORT": str(port)})
        service = Service("gateway", python_module("longrun_gateway", *args), env, self._log("gateway"), port)
        self.services.append(service)
        service.start(timeout=timeout)
        return service

    def worker(self, *args: str, hostname: str | None = None, wait: bool = True, timeout: float = 90.0) -> Service:
        """A real Longrun worker (`python -m longrun_worker`) in its own process group."""
        name = hostname or f"lr-{uuid.uuid4().hex[:6]}@bench"
        argv = python_module("longrun_worker", "--hostname", name, *args)
        metrics = self.workdir / f"{name.split('@')[0]}-metrics"  # removed with the stack (a killed worker cannot)
        env = service_env({**self.env, "PROMETHEUS_MULTIPROC_DIR": str(metrics)})
        service = Service("worker", argv, env, self._log("worker"))
        self.services.append(service)
        service.start()
        if wait:
            service.wait_log("ready.", timeout=timeout)
        return service

    def process(self, name: str, argv: list[str], env: dict[str, str]) -> Service:
        """Any other process (e.g. a baseline Celery worker), with the repo root importable."""
        merged = service_env(env)
        merged["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), merged.get("PYTHONPATH")]))
        service = Service(name, argv, merged, self._log(name))
        self.services.append(service)
        service.start()
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            with contextlib.suppress(Exception):
                service.stop(timeout=10)
        self.services.clear()


@contextlib.contextmanager
def stack(args: argparse.Namespace, *, name: str, extra_env: dict[str, str] | None = None) -> Iterator[Stack]:
    """Start a private Redis and database; yield the Stack; stop every process and clean up afterwards."""
    workdir = Path(tempfile.mkdtemp(prefix=f"longrun-bench-{name}-"))
    server = RedisServer().start()
    running = None
    try:
        with database(args.database_url, workdir) as url:
            running = Stack(workdir, server, url, dict(extra_env or {}))
            try:
                yield running
            finally:
                running.stop()
    finally:
        server.stop()
        if getattr(args, "keep", False):
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        if running is None:
            say(f"logs were in {workdir}")


def tail(service: Service, chars: int = 3000) -> str:
    return service.logs()[-chars:]


if __name__ == "__main__":
    print("bench/_common.py holds helpers for the benchmarks; it is not a benchmark itself.")
