"""Shared helpers of the progress-hub benchmarks (bench/hub_*.py); not a benchmark itself.

What is here:
- `HubRig`: a private redis-server plus the processes a hub benchmark starts (the real hub, the baselines),
  all on 127.0.0.1 and free ports, all stopped at the end;
- the two baseline servers, run as real processes with `python bench/_hub_common.py serve-poll|serve-bare`:
  * `serve-poll`: the tutorial's polling design, a Starlette WebSocket handler per client that reads the job's
    hash (one HGETALL) every second and sends it, served by uvicorn;
  * `serve-bare`: a minimal `websockets.serve` broadcast loop: one Redis pub/sub connection (PSUBSCRIBE on the
    jobs' live channels) and `broadcast()` of every message to the sockets connected for that job;
- job set-up and publishing through the real `longrun_common.publisher.Publisher` (the only writer of events),
- `RawClient`: a minimal asyncio WebSocket client protocol (handshake, frame parsing, pong, close) for the
  benchmarks that hold thousands of sockets or count frames as fast as possible, where a full client library
  in the client processes would be the bottleneck;
- RSS of a process, RLIMIT_NOFILE, percentiles and tables (re-exported from bench/_common.py).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import gc
import logging
import os
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from _common import REPO, ms, num, percentile, print_table, ratio, say  # noqa: F401  (re-exported)

from longrun_common.events import Progress
from longrun_common.keys import Keys
from longrun_common.publisher import EventSpec, Publisher
from longrun_common.settings import Settings
from longrun_common.states import JobStatus
from longrun_common.tokens import mint
from tests.support.processes import Service, free_port, python_module, service_env
from tests.support.servers import RedisServer

KEY_PREFIX = "hubbench"
TENANT = "dev"
TOKEN_SECRET = "hub-bench-token-secret-0123456789abcdef"
HERE = Path(__file__).resolve()


# --- process limits and memory ---------------------------------------------------------------------------------

def raise_nofile(wanted: int = 1 << 20) -> int:
    """Raise this process's soft RLIMIT_NOFILE as far as the hard limit allows; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(wanted, hard) if hard != resource.RLIM_INFINITY else wanted
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kb(pid: int) -> int:
    """VmRSS of a process in KiB (from /proc/PID/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


# --- the rig ---------------------------------------------------------------------------------------------------

@dataclass
class HubRig:
    """A private Redis and the server processes of one benchmark run."""

    workdir: Path
    redis: RedisServer
    services: list[Service] = field(default_factory=list)

    @property
    def env(self) -> dict[str, str]:
        return {
            "LONGRUN_REDIS_URL": self.redis.url,
            "LONGRUN_DATABASE_URL": f"sqlite:///{self.workdir / 'unused.db'}",
            "LONGRUN_KEY_PREFIX": KEY_PREFIX,
            "LONGRUN_TOKEN_SECRET": TOKEN_SECRET,
            "LONGRUN_API_KEYS": "dev:dev-key",
        }

    @property
    def settings(self) -> Settings:
        return Settings(redis_url=self.redis.url, key_prefix=KEY_PREFIX, token_secret=TOKEN_SECRET)

    @property
    def keys(self) -> Keys:
        return Keys(KEY_PREFIX)

    def _log(self, name: str) -> Path:
        index = sum(1 for s in self.services if s.name == name)
        return self.workdir / f"{name}-{index}.log"

    def hub(self, extra_env: dict[str, str] | None = None) -> Service:
        """The real hub: `python -m longrun_hub` (uvicorn) on a free port, ready on /readyz."""
        port = free_port()
        env = service_env({**self.env, "LONGRUN_HUB_PORT": str(port), **(extra_env or {})})
        service = Service("hub", python_module("longrun_hub"), env, self._log("hub"), port)
        self.services.append(service)
        service.start(ready_path="/readyz", timeout=60)
        _wait_ready(service, "/readyz")
        return service

    def traced_hub(self, snapshot_dir: Path) -> Service:
        """The hub's own `main()` under tracemalloc (`serve-hub-traced`): SIGUSR1 writes a snapshot file.
        Only to attribute memory: tracing itself costs memory and time."""
        port = free_port()
        argv = [sys.executable, str(HERE), "serve-hub-traced", "--port", str(port), "--redis-url", self.redis.url,
                "--snapshot-dir", str(snapshot_dir)]
        env = service_env({**self.env, "LONGRUN_HUB_PORT": str(port)})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        service = Service("hub-traced", argv, env, self._log("hub-traced"), port)
        self.services.append(service)
        service.start(ready_path="/readyz", timeout=90)
        _wait_ready(service, "/readyz")
        return service

    def baseline(self, kind: str, *extra: str) -> Service:
        """A baseline server (`serve-poll` or `serve-bare`) from this file, as its own process."""
        port = free_port()
        argv = [sys.executable, str(HERE), kind, "--port", str(port), "--redis-url", self.redis.url,
                "--prefix", KEY_PREFIX, *extra]
        env = service_env({})
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        service = Service(kind, argv, env, self._log(kind), port)
        self.services.append(service)
        service.start(ready_path="/healthz", timeout=60)
        return service

    def stop(self, service: Service) -> None:
        with contextlib.suppress(Exception):
            service.stop(timeout=10)
        if service in self.services:
            self.services.remove(service)

    def stop_all(self) -> None:
        for service in reversed(list(self.services)):
            self.stop(service)


def _wait_ready(service: Service, path: str, timeout: float = 30.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(service.url + path, timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"{service.name} not ready:\n{service.logs()[-3000:]}")


@contextlib.contextmanager
def rig(name: str, keep: bool = False) -> Iterator[HubRig]:
    """A private redis-server on a free port; every process started through the rig is stopped at the end."""
    workdir = Path(tempfile.mkdtemp(prefix=f"longrun-bench-{name}-"))
    server = RedisServer().start()
    running = HubRig(workdir, server)
    try:
        yield running
    finally:
        running.stop_all()
        server.stop()
        if keep:
            say(f"work directory kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
            shutil.rmtree(server.workdir, ignore_errors=True)


def hub_lag(url: str, transport: str = "ws") -> str:
    """The hub's own view of delivery lag (`longrun_hub_delivery_lag_seconds`: its send time - the event's ts):
    the buckets holding p50 and p99, and the share sent within 10 ms."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=5).text
    except httpx.HTTPError as exc:
        return f"n/a ({exc})"
    buckets: list[tuple[float, float]] = []
    for line in text.splitlines():
        if line.startswith("longrun_hub_delivery_lag_seconds_bucket") and f'transport="{transport}"' in line:
            le = line.split('le="', 1)[1].split('"', 1)[0]
            buckets.append((float("inf") if le == "+Inf" else float(le), float(line.rsplit(" ", 1)[1])))
    buckets.sort()
    total = buckets[-1][1] if buckets else 0.0
    if not total:
        return "n/a (no live deliveries counted)"

    def bucket_of(q: float) -> str:
        low = 0.0
        for le, count in buckets:
            if count >= q * total:
                return f"{low * 1000:g}-{le * 1000:g} ms"
            low = le
        return "?"

    within = next((count for le, count in buckets if le >= 0.01), total)
    return (f"p50 in {bucket_of(0.5)}, p99 in {bucket_of(0.99)}, {100 * within / total:.2f}% sent within 10 ms "
            f"({int(total)} live deliveries)")


def service_tail(service: Service, chars: int = 2000) -> str:
    return service.logs()[-chars:]


# --- jobs and publishing ---------------------------------------------------------------------------------------

def new_job_ids(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


def token_for(job_id: str | None, ttl: int = 3600) -> str:
    return mint(TOKEN_SECRET, TENANT, job_id, ttl)[0]


def make_publisher() -> Publisher:
    return Publisher(Keys(KEY_PREFIX), stream_maxlen=1000, event_ttl_seconds=3600)


def announce_jobs(redis_url: str, job_ids: list[str]) -> dict[str, int]:
    """Publish `queued` (with the hash's creation fields, as JobStore.announce does) and `running` for each job.
    Returns the seq of the last event of each job."""
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    seqs = {}
    created = repr(time.time())
    fields = {"tenant": TENANT, "task": "bench.hub", "queue": "default", "priority": "0", "max_attempts": "1",
              "created_at": created}
    for job_id in job_ids:
        publisher.publish(client, EventSpec(job_id, "status", JobStatus.QUEUED, 1, fields=fields))
        seqs[job_id] = publisher.publish(
            client, EventSpec(job_id, "status", JobStatus.RUNNING, 1, fields={"started_at": created})
        ).seq
    client.close()
    return seqs


def progress_spec(job_id: str, i: int, total: int) -> EventSpec:
    """One progress event as a worker's reporter publishes it (ts stamped by the Publisher at publish time)."""
    progress = Progress(current=i, total=total, percent=round(100.0 * i / total, 2), stage="bench",
                        message=f"step {i}/{total}")
    return EventSpec(job_id, "progress", JobStatus.RUNNING, 1, progress=progress)


def finish_jobs(redis_url: str, job_ids: list[str]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    for job_id in job_ids:
        publisher.publish(client, EventSpec(job_id, "status", JobStatus.SUCCEEDED, 1, result={"ok": True},
                                            progress=Progress(percent=100.0)))
    client.close()


def paced_publisher(redis_url: str, job_ids: list[str], rate_per_job: float, events_per_job: int,
                    start_at: float, out: Any) -> None:
    """Child process: publish `events_per_job` progress events to every job, `rate_per_job` events/s each,
    interleaved evenly over the jobs (total rate = jobs x rate), starting at wall time `start_at`.
    Puts {job_id: [(seq, ts), ...]} and the pacing error on `out`."""
    import redis

    client = redis.Redis.from_url(redis_url)
    publisher = make_publisher()
    total_rate = rate_per_job * len(job_ids)
    sent: dict[str, list[tuple[int, float]]] = {j: [] for j in job_ids}
    late = []
    count = events_per_job * len(job_ids)
    while time.time() < start_at:
        time.sleep(0.001)
    began = time.time()
    for n in range(count):
        target = began + n / total_rate
        pause = target - time.time()
        if pause > 0:
            time.sleep(pause)
        late.append(time.time() - target)
        job_id = job_ids[n % len(job_ids)]
        ts = time.time()
        spec = replace(progress_spec(job_id, n // len(job_ids) + 1, events_per_job), ts=ts)
        seq = publisher.publish(client, spec).seq
        sent[job_id].append((seq, ts))
    client.close()
    out.put({"sent": sent, "began": began, "seconds": time.time() - began, "late_p99": percentile(late, 99)})


# --- a minimal WebSocket client protocol -----------------------------------------------------------------------

class RawClient(asyncio.Protocol):
    """One client socket: HTTP upgrade, then unmasked server frames parsed by hand. Answers pings, echoes the
    close. `on_text(client, payload, recv_time)` is called for every text frame (with one `time.time()` per
    read, shared by the frames that arrived together)."""

    __slots__ = ("buf", "close_code", "closed", "handshake", "key", "on_text", "opened", "tag", "transport")

    def __init__(self, path: str, host: str, on_text: Callable[[RawClient, bytes, float], None], tag: Any = None):
        self.key = base64.b64encode(os.urandom(16)).decode()
        self.handshake = (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                          f"Sec-WebSocket-Key: {self.key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode()
        self.on_text = on_text
        self.tag = tag
        self.buf = b""
        self.transport: asyncio.Transport | None = None
        self.opened: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.closed: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.close_code = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  (uvloop's transports are not asyncio.Transport)
        transport.write(self.handshake)

    def data_received(self, data: bytes) -> None:
        buf = self.buf + data if self.buf else data
        if not self.opened.done():
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                self.buf = buf
                return
            status = buf[:end].split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                self.opened.set_result(False)
                self.transport.close()  # type: ignore[union-attr]
                return
            self.opened.set_result(True)
            buf = buf[end + 4:]
        now = time.time()
        pos, size = 0, len(buf)
        while size - pos >= 2:
            b0, b1 = buf[pos], buf[pos + 1]
            length = b1 & 0x7F
            head = 2
            if length == 126:
                if size - pos < 4:
                    break
                length = struct.unpack_from("!H", buf, pos + 2)[0]
                head = 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = struct.unpack_from("!Q", buf, pos + 2)[0]
                head = 10
            if size - pos < head + length:
                break
            payload = buf[pos + head:pos + head + length]
            pos += head + length
            opcode = b0 & 0x0F
            if opcode == 1:
                self.on_text(self, payload, now)
            elif opcode == 9:
                self._send(0xA, payload)
            elif opcode == 8:
                self.close_code = struct.unpack_from("!H", payload)[0] if len(payload) >= 2 else 1005
                self._send(0x8, payload[:2])
                self.transport.close()  # type: ignore[union-attr]
        self.buf = buf[pos:] if pos < size else b""

    def _send(self, opcode: int, payload: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.transport.write(bytes([0x80 | opcode, 0x80 | len(payload)]) + mask + masked)

    def close(self, code: int = 1000) -> None:
        self._send(0x8, struct.pack("!H", code))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.opened.done():
            self.opened.set_result(False)
        if not self.closed.done():
            self.closed.set_result(self.close_code)


async def open_raw(host: str, port: int, path: str, on_text: Callable[[RawClient, bytes, float], None],
                   tag: Any = None, wait: float = 30.0) -> RawClient | None:
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(wait):
            _transport, proto = await loop.create_connection(
                lambda: RawClient(path, f"{host}:{port}", on_text, tag), host, port)
            if await proto.opened:
                return proto
    except (OSError, TimeoutError):
        return None
    return None


def seq_of(payload: bytes) -> int:
    """The seq of a forwarded event frame (`{"seq":N,…`, as the publisher writes it), else -1."""
    if payload.startswith(b'{"seq":'):
        end = payload.find(b",", 7)
        return int(payload[7:end])
    return -1


@dataclass
class RawPlan:
    """What one raw client process opens: (path, job index, seq the client starts from) per socket."""

    host: str
    port: int
    sockets: list[tuple[str, int, int]]
    process_index: int = 0
    jobs: int = 1
    wait_first_frame: bool = True  # Longrun sends a snapshot first; the bare loop sends nothing until an event
    concurrency: int = 100


def raw_client_process(plan: RawPlan, acked: Any, frames: Any, ready: Any, stop: Any, out: Any) -> None:
    """Child process: open every socket of `plan` with RawClient and count what arrives until `stop` is set.

    `acked[process_index * jobs + job]` (shared int64, may be None) is the sum over this process's sockets of the
    seq each has reached minus where it started: a publisher compares it with what it published (flow control).
    `frames[process_index]` (shared, may be None) is the number of event frames received, updated every 20 ms.
    Puts a dict of counts on `out` at the end (connected, close codes, gaps, duplicates, coalesced frames)."""
    raise_nofile()
    use_uvloop()
    gc.disable()  # short-lived; a collection pause would show up as latency or stall the counting
    asyncio.run(_raw_clients(plan, acked, frames, ready, stop, out))


async def _raw_clients(plan: RawPlan, acked: Any, frames: Any, ready: Any, stop: Any, out: Any) -> None:
    base = plan.process_index * plan.jobs
    stats: Counter[str] = Counter()
    count = 0
    lasts: dict[RawClient, int] = {}

    def on_text(client: RawClient, payload: bytes, now: float) -> None:
        nonlocal count
        seq = seq_of(payload)
        if seq < 0:
            stats["hub frames (snapshot etc.)"] += 1
            if not client.tag[1].done():
                client.tag[1].set_result(None)
            return
        count += 1
        last = lasts[client]
        if seq <= last:
            stats["duplicate or out-of-order frames"] += 1
            return
        if seq != last + 1:
            if b'"coalesced"' in payload:
                stats["coalesced frames"] += 1
            else:
                stats["gaps"] += 1
        lasts[client] = seq
        if acked is not None:
            acked[base + client.tag[0]] += seq - last

    gate = asyncio.Semaphore(plan.concurrency)
    loop = asyncio.get_running_loop()

    async def one(path: str, job: int, start: int) -> RawClient | None:
        first: asyncio.Future[None] = loop.create_future()
        async with gate:
            client = await open_raw(plan.host, plan.port, path, on_text, (job, first), wait=120)
            if client is None:
                return None
            lasts[client] = start
            if plan.wait_first_frame:
                try:
                    async with asyncio.timeout(60):
                        await first
                except TimeoutError:
                    stats["no first frame"] += 1
        return client

    opened = await asyncio.gather(*(one(*s) for s in plan.sockets))
    clients = [c for c in opened if c is not None]
    stats["connected"] = len(clients)
    stats["failed to connect"] = len(opened) - len(clients)
    ready.put(len(clients))

    async def flush() -> None:
        while True:
            if frames is not None:
                frames[plan.process_index] = count
            await asyncio.sleep(0.02)

    flusher = asyncio.create_task(flush())
    while not await loop.run_in_executor(None, stop.wait, 0.25):
        pass
    flusher.cancel()
    if frames is not None:
        frames[plan.process_index] = count
    closed_by_server = Counter(c.closed.result() for c in clients if c.closed.done())
    for client in clients:
        if not client.closed.done():
            client.close()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(*(c.closed for c in clients), return_exceptions=True)
    for client in clients:
        if client.transport is not None:
            client.transport.abort()
    for code, n in closed_by_server.items():
        stats[f"closed by server before the end (code {code})"] += n
    stats["event frames"] = count
    out.put(dict(stats))


def use_uvloop() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


# --- baseline servers ------------------------------------------------------------------------------------------

def serve_poll(args: argparse.Namespace) -> None:
    """The tutorial's polling design: per client, every second HGETALL the job's hash and send it as JSON."""
    import redis.asyncio as aioredis
    import uvicorn
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route, WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    log = logging.getLogger("serve-poll")

    # A blocking pool (like the hub's): redis-py's default pool raises MaxConnectionsError past its limit, which
    # would drop pollers under 1,000 concurrent reads instead of making them wait.
    pool = aioredis.BlockingConnectionPool.from_url(args.redis_url, max_connections=64, timeout=30,
                                                    decode_responses=True)
    client = aioredis.Redis(connection_pool=pool)
    keys = Keys(args.prefix)

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def job_socket(websocket: WebSocket) -> None:
        job_id = websocket.path_params["job_id"]
        await websocket.accept()
        try:
            while True:
                state = await client.hgetall(keys.job(job_id))
                await websocket.send_json(state)
                await asyncio.sleep(args.interval)
        except (WebSocketDisconnect, OSError):  # the client left (uvicorn's ClientDisconnected is an OSError)
            return
        except Exception:
            log.exception("poll handler of job %s failed", job_id)
            raise

    app = Starlette(routes=[Route("/healthz", healthz), WebSocketRoute("/ws/jobs/{job_id}", job_socket)])
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, backlog=4096)


def serve_bare(args: argparse.Namespace) -> None:
    """A bare `websockets` broadcast loop: one pub/sub connection, `broadcast()` each message to the job's sockets."""
    import redis.asyncio as aioredis
    from websockets.asyncio.server import ServerConnection, broadcast, serve
    from websockets.http11 import Request, Response

    keys = Keys(args.prefix)
    prefix_len = len(keys.channel(""))
    watchers: dict[str, set[ServerConnection]] = {}

    async def handler(ws: ServerConnection) -> None:
        job_id = ws.request.path.rsplit("/", 1)[-1] if ws.request is not None else ""
        peers = watchers.setdefault(job_id, set())
        peers.add(ws)
        try:
            await ws.wait_closed()
        finally:
            peers.discard(ws)
            if not peers:
                watchers.pop(job_id, None)

    def health(connection: ServerConnection, request: Request) -> Response | None:
        if request.path == "/healthz":
            return connection.respond(200, "OK\n")
        return None

    async def listen() -> None:
        client = aioredis.Redis.from_url(args.redis_url)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        await pubsub.psubscribe(keys.channel("*"))
        while True:
            message = await pubsub.get_message(timeout=None)
            if message is None or message.get("type") != "pmessage":
                continue
            peers = watchers.get(message["channel"][prefix_len:].decode())
            if peers:
                broadcast(peers, message["data"].decode())

    async def main() -> None:
        async with serve(handler, "127.0.0.1", args.port, process_request=health, compression=None,
                         backlog=4096, ping_interval=20, ping_timeout=20):
            await listen()

    use_uvloop()
    asyncio.run(main())


def serve_hub_traced(args: argparse.Namespace) -> None:
    """`python -m longrun_hub`'s own main(), with tracemalloc on; SIGUSR1 dumps a snapshot to --snapshot-dir."""
    import gc
    import tracemalloc

    tracemalloc.start(args.frames)
    count = 0

    def dump(*_: Any) -> None:
        nonlocal count
        gc.collect()
        count += 1
        tracemalloc.take_snapshot().dump(str(Path(args.snapshot_dir) / f"snap-{count}.tracemalloc"))

    signal.signal(signal.SIGUSR1, dump)
    from longrun_hub.__main__ import main

    main()


def traced_allocations(before: Path, after: Path, per: int, top: int = 15, group: str = "lineno") -> list[str]:
    """The allocation sites that grew most between two tracemalloc snapshots, in bytes per `per` connections."""
    import tracemalloc

    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    stats = new.compare_to(old, group)
    total = sum(s.size_diff for s in stats)
    lines = [f"  traced Python heap growth: {total / 1024 / 1024:.1f} MiB = "
             f"{total / max(1, per):,.0f} B per connection"]
    for stat in stats[:top]:
        frame = stat.traceback[0]
        name = frame.filename
        for marker in ("site-packages/", "/src/", "/lib/python3"):
            if marker in name:
                name = name.split(marker, 1)[1]
                break
        lines.append(f"    {stat.size_diff / max(1, per):8,.0f} B/conn  "
                     f"{stat.count_diff / max(1, per):6.2f} blocks/conn  {name}:{frame.lineno}")
    by_package: Counter[str] = Counter()
    for stat in stats:
        name = stat.traceback[0].filename
        for marker in ("site-packages/", "/src/"):
            if marker in name:
                name = name.split(marker, 1)[1].split("/", 1)[0]
                break
        else:
            name = "stdlib " + Path(name).name if "/lib/python3" in name else name
        by_package[name] += stat.size_diff
    lines.append("  by package / stdlib module:")
    lines += [f"    {size / max(1, per):8,.0f} B/conn  {name}" for name, size in by_package.most_common(12)]
    return lines


def _serve_main() -> None:
    ap = argparse.ArgumentParser(description="baseline servers of the hub benchmarks")
    ap.add_argument("kind", choices=["serve-poll", "serve-bare", "serve-hub-traced"])
    ap.add_argument("--snapshot-dir", default=".", help="serve-hub-traced: where SIGUSR1 writes snapshots")
    ap.add_argument("--frames", type=int, default=1, help="serve-hub-traced: traceback depth")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--redis-url", required=True)
    ap.add_argument("--prefix", default=KEY_PREFIX)
    ap.add_argument("--interval", type=float, default=1.0, help="serve-poll: seconds between two reads")
    args = ap.parse_args()
    raise_nofile()
    if args.kind == "serve-hub-traced":
        serve_hub_traced(args)
        return
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if args.kind == "serve-poll":
        serve_poll(args)
    else:
        serve_bare(args)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("serve-"):
        _serve_main()
    else:
        print("bench/_hub_common.py holds helpers for the hub benchmarks; it is not a benchmark itself.")
