"""Run an async iterator on an event loop in a helper thread and consume it as a plain iterator (how the
blocking client's `follow()` reuses the asyncio transports)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from typing import TypeVar

T = TypeVar("T")

_END = object()


def iterate_in_thread(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    items: queue.Queue[object] = queue.Queue()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="longrun-follow", daemon=True)

    async def pump() -> None:
        try:
            async for item in make():
                items.put(item)
        except BaseException as exc:  # handed to the consumer, which re-raises it in its own thread
            items.put(exc)
            return
        items.put(_END)

    def consume() -> Iterator[T]:
        thread.start()
        future = asyncio.run_coroutine_threadsafe(pump(), loop)
        try:
            while True:
                try:
                    item = items.get(timeout=0.5)  # a timeout keeps Ctrl-C responsive in the main thread
                except queue.Empty:
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item  # type: ignore[misc]
        finally:
            future.cancel()  # the consumer stopped early (break, Ctrl-C): close the stream's sockets
            concurrent.futures.wait([future], timeout=5)
            loop.call_soon_threadsafe(loop.stop)
            thread.join(5)
            if not thread.is_alive():
                loop.close()

    return consume()
