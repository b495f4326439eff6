"""Private Redis and PostgreSQL servers for tests, started from binaries on the machine.

Order, as STYLE.md asks: an explicit URL from the environment; a private server from binaries on a free
port; testcontainers when a Docker engine answers; otherwise fail loudly (never skip, never mock).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")


@dataclass
class RedisServer:
    """A private redis-server that a test may stop, start and flush without disturbing anyone."""

    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    workdir: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="longrun-redis-"))

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH (set LONGRUN_TEST_REDIS_URL or install redis)")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.workdir, "--maxclients", "20000", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        client.close()
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()


@contextlib.contextmanager
def redis_url_for_tests() -> Iterator[str]:
    """A Redis URL the test session owns (or was told to use)."""
    explicit = os.environ.get("LONGRUN_TEST_REDIS_URL")
    if explicit:
        yield explicit
        return
    if shutil.which("redis-server"):
        server = RedisServer().start()
        try:
            yield server.url
        finally:
            server.stop()
        return
    with container_url("redis") as url:
        yield url


def _pg_answers(url: str) -> bool:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=2):
            return True
    except psycopg.Error:
        return False


@contextlib.contextmanager
def postgres_url_for_tests() -> Iterator[str]:
    """A PostgreSQL database the test session owns: created fresh, dropped after."""
    explicit = os.environ.get("LONGRUN_TEST_DATABASE_URL")
    if explicit:
        yield explicit
        return
    server_url = "postgresql://postgres@127.0.0.1:5432/postgres"
    private: subprocess.Popen[bytes] | None = None
    if not _pg_answers(server_url):
        private, server_url = _start_private_postgres()
    if private is None and not _pg_answers(server_url):
        with container_url("postgres") as url:
            yield url
        return
    import psycopg

    name = f"longrun_test_{os.getpid()}_{int(time.time())}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield server_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with contextlib.suppress(Exception), psycopg.connect(server_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if private is not None:
            private.terminate()
            private.wait(15)


def _start_private_postgres() -> tuple[subprocess.Popen[bytes], str]:
    initdb, postgres = shutil.which("initdb"), shutil.which("postgres")
    if not (initdb and postgres):
        raise RuntimeError("no PostgreSQL answers and initdb/postgres are not on PATH")
    datadir = tempfile.mkdtemp(prefix="longrun-pg-")
    port = free_port()
    # PostgreSQL refuses to run as root; run it as the `postgres` user when we are root.
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if prefix:
        shutil.chown(datadir, "postgres")
    subprocess.run([*prefix, initdb, "-D", datadir, "-U", "postgres", "--auth=trust"], check=True,
                   stdout=subprocess.DEVNULL)
    process = subprocess.Popen([*prefix, postgres, "-D", datadir, "-p", str(port), "-k", datadir,
                                "-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for_port(port, 30)
    return process, f"postgresql://postgres@127.0.0.1:{port}/postgres"


# The images the testcontainers path runs; `make rehearse` points them at images built here from Debian's
# packages (localhost/longrun-redis:7, localhost/longrun-postgres:15), since no registry may be reachable.
CONTAINER_IMAGES = {"redis": ("LONGRUN_TEST_REDIS_IMAGE", "redis:7"),
                    "postgres": ("LONGRUN_TEST_POSTGRES_IMAGE", "postgres:16")}


@contextlib.contextmanager
def container_url(kind: str) -> Iterator[str]:
    """testcontainers: a Redis or PostgreSQL container on the Docker engine of DOCKER_HOST (or Podman's
    Docker-compatible service); its URL. The fallback where no URL is configured and no binary exists."""
    variable, default = CONTAINER_IMAGES[kind]
    image = os.environ.get(variable) or default
    try:
        if kind == "redis":
            from testcontainers.community.redis import RedisContainer

            with RedisContainer(image) as container:
                yield f"redis://{container.get_container_host_ip()}:{container.get_exposed_port(6379)}/0"
        else:
            from testcontainers.community.postgres import PostgresContainer

            with PostgresContainer(image, driver=None) as container:
                yield container.get_connection_url()
    except Exception as exc:  # no engine: fail loudly, as STYLE.md asks
        raise RuntimeError(f"no {kind} for tests: none configured, no binary, no Docker engine ({exc})") from exc


def repo_root() -> Path:
    return Path(__file__).resolve().parents[2]
