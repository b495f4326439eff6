"""The submit lane: group commit. Submits wait in one queue; a lane thread takes every submit waiting at that moment
and handles them together (one SQL transaction, a constant number of Redis round trips), then answers each.

Why: a submit's own transaction and Redis round trips cost more CPU than its share of a group's, and under load
submits arrive faster than one at a time can be committed. There is no artificial delay: a thread takes what is
waiting when it comes free, so at low load a group is one submit (its latency as before) and under load groups
grow by themselves to what arrived during the previous group's work.

Why threads of its own, few of them (not the shared pool of 40): dozens of runnable threads take the GIL from the
event loop, so even answered requests wait to be written out; and SQLite has one write lock, whose busy handler
backs a waiting writer off in sleeps of up to 100 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

In = TypeVar("In")
Out = TypeVar("Out")

# Lane threads per gateway process. A second thread lets one group's Redis phase overlap the next group's commit;
# bench/submit_throughput.py, 2 vs 1 thread (load average ~4): p99 at 200 req/s 10 vs 30 ms on SQLite and 17 vs
# 45 ms on PostgreSQL, 16 clients 802 vs 615 and 674 vs 327 req/s, at the same CPU per job.
LANE_THREADS = 2
# The most submits one group takes: a bound on one transaction's size and on the latency of its first request.
MAX_GROUP = 200

# A handler answers each item of a group in order: its result, or the exception that request must raise.
Handler = Callable[[Sequence[In]], Sequence["Out | BaseException"]]


@dataclass
class _Call(Generic[In, Out]):
    item: In
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[Out]
    context: contextvars.Context


class GroupLane(Generic[In, Out]):
    """`threads` lane threads handing every waiting item to `handler` at once (at most `max_group`)."""

    def __init__(self, handler: Handler[In, Out], threads: int = LANE_THREADS, max_group: int = MAX_GROUP) -> None:
        self._handler = handler
        self._max_group = max_group
        self._queue: queue.SimpleQueue[_Call[In, Out] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._serve, name=f"submit-{n}", daemon=True)
                         for n in range(threads)]
        self._lock = threading.Lock()
        self._started = False

    async def run(self, item: In) -> Out:
        """`item`'s result from the handler, or its exception raised here."""
        if not self._started:
            self._start()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Out] = loop.create_future()
        self._queue.put(_Call(item, loop, future, contextvars.copy_context()))
        return await future

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                for thread in self._threads:
                    thread.start()
                self._started = True

    def _serve(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            group = [first]
            closing = False
            while len(group) < self._max_group:
                try:
                    call = self._queue.get_nowait()
                except queue.Empty:
                    break
                if call is None:
                    closing = True
                    break
                group.append(call)
            self._handle(group)
            if closing:
                return

    def _handle(self, group: list[_Call[In, Out]]) -> None:
        # In the first request's context: a tracing span started by the handler (the group's commit) is a child
        # of that request.
        try:
            outcomes = group[0].context.run(self._handler, [call.item for call in group])
        except Exception as exc:  # the handler failed as a whole: every request of the group fails with it
            outcomes = [exc] * len(group)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Call[In, Out], Out | BaseException]]] = {}
        for call, outcome in zip(group, outcomes, strict=True):
            by_loop.setdefault(call.loop, []).append((call, outcome))
        for loop, answers in by_loop.items():  # one wake-up of the event loop per group
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits for these answers any more
                loop.call_soon_threadsafe(_answer, answers)

    def close(self) -> None:
        """Let the submits under way and those already queued finish (their rows are committed or not, never
        half-published), then stop the threads."""
        if not self._started:
            return
        for _ in self._threads:
            self._queue.put(None)
        for thread in self._threads:
            thread.join()


def _answer(answers: list[tuple[_Call[In, Out], Out | BaseException]]) -> None:
    for call, outcome in answers:
        if call.future.done():  # the request was cancelled (its client went away)
            continue
        if isinstance(outcome, BaseException):
            call.future.set_exception(outcome)
        else:
            call.future.set_result(outcome)
