"""`Client` (blocking) and `AsyncClient`: the same operations (see `ops`), with retries on 429/503 and on
connection failures. Both are context managers; both take `url` and `api_key` or read them from the
environment / profile (see `config`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import ExitStack
from typing import Any, Concatenate, ParamSpec, TypeVar

import httpx

import longrun_client.ops as ops

from .config import Config
from .errors import ConnectionFailed, from_response
from .follow import follow
from .models import DeadLetter, Event, Job, Page
from .ops import Call
from .retry import RetryPolicy
from .threads import iterate_in_thread

P = ParamSpec("P")
T = TypeVar("T")

USER_AGENT = "longrun-client/0.1"
LONG_POLL_SECONDS = 25.0  # per request; the gateway caps `wait` itself


class _Base:
    def __init__(self, url: str | None = None, api_key: str | None = None, *, profile: str | None = None,
                 timeout: float = 30.0, retry: RetryPolicy | None = None, reconnect_window: float = 10.0,
                 hub_url: str | None = None) -> None:
        self.config = Config.resolve(url, api_key, profile)
        # The hub as this client reaches it, when that differs from what the gateway advertises (a tunnel).
        self.hub_url = hub_url.rstrip("/") if hub_url else None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.reconnect_window = reconnect_window

    def _headers(self) -> dict[str, str]:
        headers = {"User-Agent": USER_AGENT}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def _build(self, http: httpx.Client | httpx.AsyncClient, call: Call[Any], stack: ExitStack) -> httpx.Request:
        files = None
        if call.file is not None:
            files = {"file": (call.file.name, stack.enter_context(call.file.open("rb")))}
        timeout = httpx.Timeout(call.timeout or self.timeout)
        return http.build_request(call.method, call.path, params=call.params, json=call.json,
                                  headers=call.headers, files=files, timeout=timeout)

    def _retry_delay(self, call: Call[Any], attempt: int, outcome: httpx.Response | httpx.TransportError) -> float:
        """How long to wait before sending `call` again after this failed attempt; raises when it was the last
        (the sync and async `send` share this, and differ only in how they send and sleep)."""
        if isinstance(outcome, httpx.TransportError):
            delay = self.retry.delay_after_error(outcome, call.idempotent, attempt)
            if delay is None:
                raise ConnectionFailed(f"{call.method} {self.config.url}{call.path}: {outcome!r}") from outcome
            return delay
        delay = self.retry.delay_after(outcome, attempt)
        if delay is None:
            raise from_response(outcome)
        return delay

    def _kwargs(self) -> dict[str, Any]:
        """What a twin client needs to act as this one (the blocking `follow()` runs an async twin)."""
        return {"url": self.config.url, "api_key": self.config.api_key, "timeout": self.timeout,
                "retry": self.retry, "reconnect_window": self.reconnect_window, "hub_url": self.hub_url}


def _sync(op: Callable[P, Call[T]]) -> Callable[Concatenate[Client, P], T]:
    def method(self: Client, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return self.send(op(*args, **kwargs))

    method.__doc__, method.__name__ = op.__doc__, op.__name__
    return method


def _async(op: Callable[P, Call[T]]) -> Callable[Concatenate[AsyncClient, P], Coroutine[Any, Any, T]]:
    async def method(self: AsyncClient, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self.send(op(*args, **kwargs))

    method.__doc__, method.__name__ = op.__doc__, op.__name__
    return method


class Client(_Base):
    """The blocking client: `with Client() as lr: job = lr.submit("demo.steps", {"steps": 10})`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, **options: Any) -> None:
        super().__init__(url, api_key, **options)
        self.http = httpx.Client(base_url=self.config.url, headers=self._headers())

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call[T]) -> T:
        """Send a call, retrying 429/503 and connection failures; the answer parsed, or an `ApiError`."""
        attempt = 0
        while True:  # until an answer, or `_retry_delay` raises
            with ExitStack() as stack:
                try:
                    outcome: httpx.Response | httpx.TransportError = self.http.send(self._build(self.http, call, stack))
                except httpx.TransportError as exc:
                    outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return call.parse(outcome)
            time.sleep(self._retry_delay(call, attempt, outcome))
            attempt += 1

    submit = _sync(ops.submit)
    get = _sync(ops.get)
    list_jobs = _sync(ops.list_jobs)
    cancel = _sync(ops.cancel)
    children = _sync(ops.children)
    stream_token = _sync(ops.stream_token)
    submit_workflow = _sync(ops.submit_workflow)
    tasks = _sync(ops.tasks)
    upload = _sync(ops.upload)
    file_info = _sync(ops.file_info)
    dead_letters = _sync(ops.dead_letters)
    dead_letter = _sync(ops.dead_letter)
    requeue = _sync(ops.requeue)
    requeue_dead_letters = _sync(ops.requeue_many)
    delete_dead_letter = _sync(ops.delete_dead_letter)
    delete_dead_letters = _sync(ops.delete_dead_letters)
    create_key = _sync(ops.create_key)
    list_keys = _sync(ops.list_keys)
    get_key = _sync(ops.get_key)
    rotate_key = _sync(ops.rotate_key)
    revoke_key = _sync(ops.revoke_key)

    def iter_jobs(self, *, status: str | None = None, task: str | None = None, page_size: int = 100) -> Iterator[Job]:
        """Every matching job, newest first, following `next_cursor` page by page."""
        yield from _pages(lambda cursor: self.list_jobs(status=status, task=task, limit=page_size, cursor=cursor))

    def iter_dead_letters(self, *, task: str | None = None, error_type: str | None = None,
                          page_size: int = 100) -> Iterator[DeadLetter]:
        yield from _pages(lambda c: self.dead_letters(task=task, error_type=error_type, limit=page_size, cursor=c))

    def wait(self, job_id: str, timeout: float | None = None) -> Job:
        """Block until the job ends (long-poll); `TimeoutError` after `timeout` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        job = self.get(job_id)
        while not job.done:
            job = self.get(job_id, wait=_wait_slice(deadline), after_seq=job.seq)
        return job

    def follow(self, job_id: str, *, since: int | None = None,
               transports: tuple[str, ...] = ("ws", "sse", "poll")) -> Iterator[Event]:
        """The job's events until it ends: WebSocket, resuming from the last seq after any disconnect; SSE if
        WebSockets do not get through; long-poll if neither stream answers. No gap, no duplicate."""
        twin = self._kwargs()

        async def events() -> AsyncIterator[Event]:
            async with AsyncClient(**twin) as client:
                async for event in client.follow(job_id, since=since, transports=transports):
                    yield event

        return iterate_in_thread(events)


class AsyncClient(_Base):
    """The asyncio client: `async with AsyncClient() as lr: async for ev in lr.follow(job.id): ...`."""

    def __init__(self, url: str | None = None, api_key: str | None = None, **options: Any) -> None:
        super().__init__(url, api_key, **options)
        self.http = httpx.AsyncClient(base_url=self.config.url, headers=self._headers())

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.http.aclose()

    async def send(self, call: Call[T]) -> T:
        """As `Client.send`, without blocking the event loop."""
        attempt = 0
        while True:
            with ExitStack() as stack:
                try:
                    outcome: httpx.Response | httpx.TransportError = await self.http.send(
                        self._build(self.http, call, stack))
                except httpx.TransportError as exc:
                    outcome = exc
            if isinstance(outcome, httpx.Response) and outcome.is_success:
                return call.parse(outcome)
            await asyncio.sleep(self._retry_delay(call, attempt, outcome))
            attempt += 1

    submit = _async(ops.submit)
    get = _async(ops.get)
    list_jobs = _async(ops.list_jobs)
    cancel = _async(ops.cancel)
    children = _async(ops.children)
    stream_token = _async(ops.stream_token)
    submit_workflow = _async(ops.submit_workflow)
    tasks = _async(ops.tasks)
    upload = _async(ops.upload)
    file_info = _async(ops.file_info)
    dead_letters = _async(ops.dead_letters)
    dead_letter = _async(ops.dead_letter)
    requeue = _async(ops.requeue)
    requeue_dead_letters = _async(ops.requeue_many)
    delete_dead_letter = _async(ops.delete_dead_letter)
    delete_dead_letters = _async(ops.delete_dead_letters)
    create_key = _async(ops.create_key)
    list_keys = _async(ops.list_keys)
    get_key = _async(ops.get_key)
    rotate_key = _async(ops.rotate_key)
    revoke_key = _async(ops.revoke_key)

    async def iter_jobs(self, *, status: str | None = None, task: str | None = None,
                        page_size: int = 100) -> AsyncIterator[Job]:
        cursor: str | None = None
        while True:
            page = await self.list_jobs(status=status, task=task, limit=page_size, cursor=cursor)
            for job in page.items:
                yield job
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def wait(self, job_id: str, timeout: float | None = None) -> Job:  # noqa: ASYNC109 (as Client.wait)
        deadline = None if timeout is None else time.monotonic() + timeout
        job = await self.get(job_id)
        while not job.done:
            job = await self.get(job_id, wait=_wait_slice(deadline), after_seq=job.seq)
        return job

    def follow(self, job_id: str, *, since: int | None = None,
               transports: tuple[str, ...] = ("ws", "sse", "poll")) -> AsyncIterator[Event]:
        return follow(self, job_id, since=since, transports=transports)


def _pages(fetch: Callable[[str | None], Page[T]]) -> Iterator[T]:
    cursor: str | None = None
    while True:
        page = fetch(cursor)
        yield from page.items
        if not page.next_cursor:
            return
        cursor = page.next_cursor


def _wait_slice(deadline: float | None) -> float:
    if deadline is None:
        return LONG_POLL_SECONDS
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("the job did not finish in time")
    return max(1.0, min(LONG_POLL_SECONDS, left))
