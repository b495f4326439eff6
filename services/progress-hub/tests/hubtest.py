"""Helpers for the hub's tests (imported by name: this folder is on sys.path under pytest's prepend mode)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import redis.asyncio as aioredis
import uvicorn
import websockets
from websockets.asyncio.client import ClientConnection

from longrun_common.events import Progress
from longrun_common.httpserver import server_options
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_common.tokens import mint
from longrun_hub.app import create_app
from longrun_hub.wsprotocol import HubWebSocketProtocol
from tests.support.processes import Service, free_port, python_module, service_env

T = TypeVar("T")


@contextmanager
def private_hub(redis_url: str, log_dir: Path, name: str) -> Iterator[Service]:
    """A `python -m longrun_hub` of the caller's own (own prefix and port): its gauges count only its sockets."""
    prefix, port = f"h{uuid.uuid4().hex[:9]}", free_port()
    env = service_env({"LONGRUN_REDIS_URL": redis_url, "LONGRUN_KEY_PREFIX": prefix, "LONGRUN_HUB_PORT": str(port)})
    service = Service(name, python_module("longrun_hub"), env, log_dir / "hub.log", port).start()
    try:
        yield service
    finally:
        service.stop()


@asynccontextmanager
async def inprocess_hub(settings: Settings, ws: Any = HubWebSocketProtocol) -> AsyncIterator[tuple[str, Any]]:
    """The hub app under uvicorn in this process (so a test can reach into it), on a free port."""
    app = create_app(settings)
    config = uvicorn.Config(app, host="127.0.0.1", port=free_port(), lifespan="on", log_level="warning",
                            **{**server_options(settings), "ws": ws})
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    await until(lambda: server.started)
    try:
        yield f"http://127.0.0.1:{config.port}", app
    finally:
        server.should_exit = True
        await task


class Jobs:
    """Creates jobs and publishes their events with the real Publisher, as the gateway and worker do."""

    def __init__(self, client: aioredis.Redis, settings: Settings) -> None:
        self.client = client
        self.settings = settings
        self.keys = Keys(settings.key_prefix)
        self.publisher = Publisher(self.keys, stream_maxlen=settings.stream_maxlen)

    async def create(self, tenant: str = "dev", job_id: str | None = None) -> str:
        job_id = job_id or str(uuid.uuid4())
        fields = {"tenant": tenant, "task": "demo.steps", "queue": "default", "priority": "0",
                  "max_attempts": "3", "created_at": "1700000000.0"}
        await self.publisher.apublish(self.client, EventSpec(job_id, "status", JobStatus.QUEUED, 1, fields=fields))
        return job_id

    async def start(self, job_id: str) -> int:
        return (await self.publisher.apublish(self.client, EventSpec(job_id, "status", JobStatus.RUNNING, 1))).seq

    async def progress(self, job_id: str, current: int, total: int = 100, message: str | None = None) -> int:
        progress = Progress(current=current, total=total, percent=100.0 * current / total, message=message)
        spec = EventSpec(job_id, "progress", JobStatus.RUNNING, 1, progress=progress)
        return (await self.publisher.apublish(self.client, spec)).seq

    async def finish(self, job_id: str, status: JobStatus = JobStatus.SUCCEEDED) -> int:
        spec = EventSpec(job_id, "status", status, 1, progress=Progress(percent=100.0), result={"ok": True})
        return (await self.publisher.apublish(self.client, spec)).seq

    def token(self, job_id: str | None, tenant: str = "dev", ttl: int = 300) -> str:
        return mint(self.settings.token_secret, tenant, job_id, ttl)[0]


@dataclass
class SharedHub:
    """The session's shared hub process and a Jobs helper on its key prefix."""

    url: str
    jobs: Jobs
    service: Service


def ws_url(base: str, path: str, **params: Any) -> str:
    query = "&".join(f"{k}={v}" for k, v in params.items() if v is not None)
    return base.replace("http://", "ws://") + path + (f"?{query}" if query else "")


@dataclass
class Received:
    """Frames a client got and how its socket closed."""

    frames: list[dict[str, Any]] = field(default_factory=list)
    code: int | None = None
    reason: str = ""

    @property
    def seqs(self) -> list[int]:
        return [f["seq"] for f in self.frames if f.get("type") in ("progress", "status")]

    def of(self, job_id: str) -> list[dict[str, Any]]:
        return [f for f in self.frames if f.get("job_id") == job_id]


async def read_until_closed(ws: ClientConnection, received: Received | None = None,
                            within: float = 20.0) -> Received:
    """Read every frame until the server closes (or fail after `within` seconds)."""
    received = received or Received()
    async with asyncio.timeout(within):
        try:
            async for message in ws:
                received.frames.append(json.loads(message))
        except websockets.ConnectionClosed:
            pass
    if ws.close_code is None:
        await ws.wait_closed()
    received.code = ws.close_code
    received.reason = ws.close_reason or ""
    return received


async def close_of(url: str, send: str | bytes | None = None, within: float = 10.0) -> tuple[int | None, str]:
    """Connect, optionally send one frame, and return the server's close code and reason."""
    async with websockets.connect(url) as ws:
        if send is not None:
            await ws.send(send)
        received = await read_until_closed(ws, within=within)
    return received.code, received.reason


def assert_gap_free(seqs: list[int], first: int, last: int) -> None:
    """Exactly first..last, in order, no gaps, no duplicates."""
    if seqs != list(range(first, last + 1)):
        missing = sorted(set(range(first, last + 1)) - set(seqs))
        repeated = sorted({s for s in seqs if seqs.count(s) > 1})
        raise AssertionError(f"expected {first}..{last}: missing {missing[:20]}, repeated {repeated[:20]}, "
                             f"in order: {seqs == sorted(seqs)}")


async def numsub(jobs: Jobs, job_id: str) -> int:
    """How many connections (hub processes) subscribe to the job's channel."""
    return int((await jobs.client.pubsub_numsub(jobs.keys.channel(job_id)))[0][1])


async def eventually(probe: Callable[[], Awaitable[T]], expected: T, within: float = 5.0) -> None:
    """Poll `probe` until it returns `expected`."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        value = await probe()
        if value == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"expected {expected!r}, still {value!r} after {within}s")
        await asyncio.sleep(0.05)


async def until(predicate: Callable[[], bool], within: float = 10.0) -> None:
    """Wait until `predicate()` holds."""
    async with asyncio.timeout(within):
        while True:
            if predicate():
                return
            await asyncio.sleep(0.01)
