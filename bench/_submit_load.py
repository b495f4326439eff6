"""The submit benchmark's load generator: HTTP/1.1 over raw asyncio streams, with pre-built request bytes.

Why not httpx: on this 2-CPU machine the load generator shares the cores with the gateway it measures, and
httpx's AsyncClient spent more CPU per request than the gateway's own floor (`GET /healthz`), so an open-loop
phase at 200 req/s measured the client's saturation as the gateway's. Here a request is one `write` of bytes built
once, and a response is its head (read up to the blank line) plus `Content-Length` bytes of body: the only HTTP
the gateway speaks to this client (keep-alive, no chunking). The client's own CPU per request is measured and
reported next to the gateway's, so a reader can tell which side was the limit.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from _common import ms, num, percentile, ratio


@dataclass
class Run:
    """One measured phase: how many requests, how long, their latencies and any failures."""

    name: str
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = float("nan")  # the gateway process's CPU time during the phase
    client_cpu_seconds: float = float("nan")  # the load generator's (this process's) CPU time during the phase

    @property
    def ok(self) -> int:
        return len(self.latencies)

    @property
    def per_second(self) -> float:
        return self.ok / self.seconds if self.seconds else float("nan")

    def row(self, baseline: Run | None = None) -> list[str]:
        lat = self.latencies
        return [self.name, num(self.ok), num(sum(self.errors.values())), num(self.per_second),
                ms(percentile(lat, 50)), ms(percentile(lat, 99)), ms(max(lat) if lat else float("nan")),
                _per_request(self.cpu_seconds, self.ok), _per_request(self.client_cpu_seconds, self.ok),
                ratio(self.per_second, baseline.per_second) if baseline else ""]


HEADER = ["phase", "ok", "errors", "req/s", "p50", "p99", "max", "CPU/req", "client CPU/req", "vs raw"]


def _per_request(cpu: float, ok: int) -> str:
    return "" if not ok or cpu != cpu else f"{cpu / ok * 1000:.2f} ms"


def cpu_per(run: Run) -> float:
    """Gateway CPU seconds per successful request (nan when unmeasured)."""
    return run.cpu_seconds / run.ok if run.ok else float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measured(pid: int, body: Callable[[], Run]) -> Run:
    """Run a phase, recording the gateway's CPU time and this process's own (the load generator's)."""
    before, client_before = cpu_seconds(pid), time.process_time()
    run = body()
    run.cpu_seconds = cpu_seconds(pid) - before
    run.client_cpu_seconds = time.process_time() - client_before
    return run


# --- HTTP/1.1 on asyncio streams ------------------------------------------------------------------------------

class HttpError(Exception):
    """The server closed the connection or answered something this client does not read."""


def request_bytes(method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
    """One complete HTTP/1.1 request (keep-alive), built once and written as is for every request."""
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


class Connection:
    """One keep-alive connection: a request is written, its response read in full before the next."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        """(status, body) of the response to `request`."""
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError) as exc:
            raise HttpError("connection closed before a response") from exc
        status = int(head[9:12])
        lowered = head.lower()
        at = lowered.find(b"\r\ncontent-length:")
        if at < 0:
            raise HttpError(f"HTTP {status} without Content-Length")
        end = lowered.find(b"\r\n", at + 2)
        length = int(lowered[at + 17:end])
        return status, await self.reader.readexactly(length) if length else b""

    def close(self) -> None:
        self.writer.close()


class Pool:
    """Up to `size` keep-alive connections to one server; a request waits for a free one."""

    def __init__(self, url: str, size: int) -> None:
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.size = size
        self.opened = 0
        self.idle: asyncio.Queue[Connection] = asyncio.Queue()

    async def exchange(self, request: bytes) -> tuple[int, bytes]:
        if self.idle.empty() and self.opened < self.size:
            self.opened += 1
            try:
                connection = Connection(*await asyncio.open_connection(self.host, self.port))
            except OSError:
                self.opened -= 1
                raise
        else:
            connection = await self.idle.get()
        try:
            result = await connection.exchange(request)
        except BaseException:
            connection.close()  # its state is unknown: never reused
            self.opened -= 1
            raise
        self.idle.put_nowait(connection)
        return result

    def close(self) -> None:
        while not self.idle.empty():
            self.idle.get_nowait().close()


async def send(pool: Pool, request: bytes, expect: int, run: Run, began: float) -> None:
    """One request; its latency (from `began`) goes to `run` when the status is `expect`, else an error."""
    try:
        status, _ = await pool.exchange(request)
    except (OSError, HttpError, asyncio.IncompleteReadError) as exc:
        run.errors[type(exc).__name__] += 1
        return
    if status != expect:
        run.errors[f"HTTP {status}"] += 1
        return
    run.latencies.append(time.perf_counter() - began)


async def closed_loop(url: str, request: bytes, expect: int, clients: int, seconds: float, max_requests: int,
                      name: str) -> Run:
    """`clients` loops, each sending its next request as soon as the last one is answered."""
    run = Run(name)
    budget = [max_requests]
    pool = Pool(url, clients)
    start = time.perf_counter()
    deadline = start + seconds

    async def loop() -> None:
        while budget[0] > 0 and (began := time.perf_counter()) < deadline:
            budget[0] -= 1
            await send(pool, request, expect, run, began)

    try:
        await asyncio.gather(*(loop() for _ in range(clients)))
    finally:
        pool.close()
    run.seconds = time.perf_counter() - start
    return run


async def open_loop(url: str, request: bytes, expect: int, rate: float, seconds: float, connections: int,
                    name: str) -> Run:
    """Request i is sent at t0 + i/rate whatever happened before; latency counts from that scheduled time."""
    run = Run(name)
    pool = Pool(url, connections)
    loop = asyncio.get_running_loop()
    pending = []
    start = time.perf_counter()
    try:
        for i in range(int(rate * seconds)):
            due = start + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            pending.append(loop.create_task(send(pool, request, expect, run, due)))
        await asyncio.gather(*pending)
    finally:
        pool.close()
    run.seconds = time.perf_counter() - start
    return run
