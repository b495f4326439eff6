"""`RawClient`: a minimal asyncio WebSocket client protocol (handshake, frame parsing, pong, close) for the hub
benchmarks that hold thousands of sockets or count frames as fast as possible, where a full client library in the
client processes would be the bottleneck; and the client processes built on it."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import gc
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from _hub_rig import raise_nofile, use_uvloop


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
