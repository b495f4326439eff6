"""`follow()`: a job's events until it ends, across disconnects, hub restarts and blocked WebSockets.

Transports, in order of preference:
- WebSocket `ws_url?token=…&since=N` — resumes after the last seq this client delivered;
- SSE `sse_url` with `Last-Event-ID: N` — when WebSockets do not get through (a proxy answers the upgrade
  with an HTTP status), or keep failing for `reconnect_window` seconds;
- long-poll `GET /v1/jobs/{id}?wait=&after_seq=N` on the gateway — when the hub cannot be reached at all.
  It yields snapshots (the job at each newer seq: intermediate events may be merged), and every
  `reconnect_window` seconds the stream transports are tried again.

A lost connection is retried with capped, jittered backoff. Every event is delivered once, in seq order: a
cursor drops anything at or below the last delivered seq, so a replay after a reconnect never repeats one.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any, Protocol
from urllib.parse import urlencode

import httpx
import websockets
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake, InvalidStatus

from .errors import ApiError, LongrunError, Unauthorized, from_close, from_response
from .models import Event, Job
from .retry import RetryPolicy


class AsyncClient(Protocol):
    """What following needs of `client.AsyncClient` (a protocol, so the two modules do not import each other)."""

    http: httpx.AsyncClient
    hub_url: str | None
    reconnect_window: float
    retry: RetryPolicy

    async def get(self, job_id: str, *, wait: float | None = None, after_seq: int | None = None) -> Job: ...

TRANSPORTS = ("ws", "sse", "poll")
POLL_WAIT = 20.0
OPEN_TIMEOUT = 5.0


class _Lost(Exception):
    """The connection failed or dropped: retry it (with backoff)."""


class _Unsupported(Exception):
    """This transport does not get through at all (e.g. a proxy refuses WebSocket upgrades): use the next."""


class _Cursor:
    """The last delivered seq; turns frames into events once each, and knows when the job has ended."""

    def __init__(self, since: int | None) -> None:
        self.seq = since
        self.done = False

    def accept(self, frame: dict[str, Any], transport: str) -> Event | None:
        kind = frame.get("type")
        if kind == "end":  # a resume whose `since` is already the terminal event
            self.done = True
            return None
        if kind == "error":
            raise from_close(int(frame.get("code", 4500)), str(frame.get("message", "")))
        if kind not in ("snapshot", "progress", "status") or not isinstance(frame.get("seq"), int):
            return None
        return self.take(Event.from_frame(frame, transport))

    def take(self, event: Event) -> Event | None:
        if self.seq is not None and event.seq <= self.seq:
            return None  # already delivered (a replay overlapping what we saw)
        self.seq = event.seq
        self.done = event.done
        return event


async def follow(client: AsyncClient, job_id: str, *, since: int | None = None,
                 transports: tuple[str, ...] = TRANSPORTS) -> AsyncIterator[Event]:
    unknown = set(transports) - set(TRANSPORTS)
    if unknown or not transports:
        raise ValueError(f"transports must be taken from {TRANSPORTS}, not {transports}")
    cursor = _Cursor(since)
    job = _rebased(await client.get(job_id), client.hub_url)
    if since is None and job.done:  # nothing will stream: the job as it ended
        event = cursor.take(Event.from_job(job, "poll"))
        if event is not None:
            yield event
        return
    usable = list(transports)
    index, attempt = 0, 0
    failing_since: float | None = None  # when the current transport started failing
    fell_back_at: float | None = None  # when we last moved to a worse transport
    probing_from: int | None = None  # trying the best transport again, from this fallback
    window = client.reconnect_window
    while not cursor.done:
        kind = usable[index]
        try:
            async for event in _session(client, kind, job, cursor):
                attempt, failing_since, probing_from = 0, None, None
                yield event
            if fell_back_at is not None and index > 0 and time.monotonic() - fell_back_at >= window:
                probing_from, index = index, 0  # see whether the better transports work again
        except _Unsupported:
            if index + 1 >= len(usable):
                raise LongrunError(f"no transport could follow job {job_id}") from None
            usable.pop(index)  # never try it again for this job
            if probing_from is not None:
                index, probing_from = probing_from - 1, None
            fell_back_at = time.monotonic()
        except (_Lost, Unauthorized) as exc:
            if isinstance(exc, Unauthorized) or kind != "poll":
                job = await _fresh_stream(client, job)
            now = time.monotonic()
            if probing_from is not None:  # still down: back to the fallback at once, without waiting
                index, probing_from, fell_back_at = probing_from, None, now
                continue
            failing_since = failing_since or now
            if now - failing_since >= window and index + 1 < len(usable):
                index, attempt, failing_since, fell_back_at = index + 1, 0, None, now
                continue
            await asyncio.sleep(client.retry.backoff(attempt))
            attempt += 1


async def _fresh_stream(client: AsyncClient, job: Job) -> Job:
    """A new stream token (the old one may have expired); the old one if the gateway cannot answer now."""
    try:
        return _rebased(await client.get(job.id), client.hub_url)
    except (LongrunError, httpx.HTTPError):
        return job


def _rebased(job: Job, hub_url: str | None) -> Job:
    """The job's stream links on `hub_url` instead of the hub the gateway advertises."""
    if hub_url is None or job.stream is None:
        return job
    ws_base = "ws" + hub_url.removeprefix("http")  # http → ws, https → wss
    job.stream.ws_url = f"{ws_base}/v1/ws/jobs/{job.id}"
    job.stream.sse_url = f"{hub_url}/v1/jobs/{job.id}/events"
    return job


def _session(client: AsyncClient, kind: str, job: Job, cursor: _Cursor) -> AsyncIterator[Event]:
    if kind == "ws":
        return _ws(job, cursor)
    if kind == "sse":
        return _sse(client, job, cursor)
    return _poll(client, job, cursor)


async def _ws(job: Job, cursor: _Cursor) -> AsyncIterator[Event]:
    if job.stream is None:
        raise _Unsupported("the job has no stream links")
    params: dict[str, Any] = {"token": job.stream.token}
    if cursor.seq is not None:
        params["since"] = cursor.seq
    url = f"{job.stream.ws_url}?{urlencode(params)}"
    try:
        ws = await connect(url, open_timeout=OPEN_TIMEOUT, max_size=2**22, compression=None)
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise from_close(4401, "the hub refused the stream token") from None
        if status in (429, 502, 503, 504):
            raise _Lost(f"hub answered {status}") from None
        # Anything else (404, 400, 426 …) is a server or proxy that does not speak WebSocket here: SSE will
        # say in plain HTTP whether the job itself is the problem.
        raise _Unsupported(f"WebSocket upgrade refused with {status}") from None
    except (OSError, TimeoutError, InvalidHandshake) as exc:
        raise _Lost(repr(exc)) from None
    async with ws:
        try:
            async for text in ws:
                frame = json.loads(text)
                if frame.get("type") == "reconnect":
                    return  # the hub is going away: reconnect now, from our own last seq
                event = cursor.accept(frame, "ws")
                if event is not None:
                    yield event
        except websockets.ConnectionClosedError:
            pass
    code = ws.close_code or 1006
    if code == 1000 or cursor.done:
        cursor.done = True
        return
    if 4400 <= code < 4500:
        raise from_close(code, ws.close_reason or "")
    if code in (1012,):
        return
    raise _Lost(f"closed with {code}")


async def _sse(client: AsyncClient, job: Job, cursor: _Cursor) -> AsyncIterator[Event]:
    if job.stream is None or not job.stream.sse_url:
        raise _Unsupported("the job has no SSE link")
    headers = {"Authorization": f"Bearer {job.stream.token}", "Accept": "text/event-stream"}
    if cursor.seq is not None:
        headers["Last-Event-ID"] = str(cursor.seq)
    timeout = httpx.Timeout(OPEN_TIMEOUT, read=None)
    try:
        async with client.http.stream("GET", job.stream.sse_url, headers=headers, timeout=timeout) as response:
            if response.status_code == 204:  # resumed at the terminal event: nothing more will come
                cursor.done = True
                return
            if response.status_code != 200:
                await response.aread()
                if response.status_code in (401, 403, 404, 422):
                    raise from_response(response)
                if response.status_code in (429, 502, 503, 504):
                    raise _Lost(f"SSE answered {response.status_code}")
                raise _Unsupported(f"SSE answered {response.status_code}")
            if not response.headers.get("content-type", "").startswith("text/event-stream"):
                raise _Unsupported("SSE answered something else than an event stream")
            data: list[str] = []
            async for line in response.aiter_lines():
                if line:
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    continue
                if not data:
                    continue
                frame = json.loads("\n".join(data))
                data = []
                if frame.get("type") == "reconnect":
                    return
                event = cursor.accept(frame, "sse")
                if event is not None:
                    yield event
                if cursor.done:
                    return
    except (httpx.TransportError, OSError) as exc:
        raise _Lost(repr(exc)) from None
    if not cursor.done:
        raise _Lost("the event stream ended before the job")


async def _poll(client: AsyncClient, job: Job, cursor: _Cursor) -> AsyncIterator[Event]:
    try:
        current = await client.get(job.id, wait=POLL_WAIT, after_seq=cursor.seq or 0)
    except ApiError as exc:
        if exc.status in (429, 503):
            raise _Lost(str(exc)) from None
        raise
    except LongrunError as exc:
        raise _Lost(str(exc)) from None
    event = cursor.take(Event.from_job(current, "poll"))
    if event is not None:
        yield event
