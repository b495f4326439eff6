"""uvicorn's sans-I/O WebSocket protocol, lighter per idle socket.

The same protocol (`uvicorn.protocols.websockets.websockets_sansio_impl`, through longrun_common's
`AnsweringWebSocketsProtocol`, which answers a handshake websockets refused), with three changes that only
concern memory held by each open socket:

- the receive queue is `Inbox` (a list created on demand) instead of an `asyncio.Queue` (three deques, ~2 KB);
- the "writable" flag is `Gate` (waiters created on demand) instead of an `asyncio.Event` (a deque, ~0.7 KB);
- the handshake request and response are dropped once the socket is accepted (uvicorn keeps them for the
  connection's lifetime but only uses them during the handshake).

It also offers `send_text_now`: what `send({"type": "websocket.send", "text": …})` does when it would not wait,
done synchronously, so the hub can write a frame to an idle socket without waking its sender coroutine.

Anything this does not recognise (another uvicorn version) is left as uvicorn made it: the socket still works,
but costs uvicorn's memory. `lean` says whether all three changes took; the hub counts each accepted socket by
it (`longrun_hub_websockets_accepted_total{protocol}`) and warns once, and a test fails on anything but "lean".
"""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.exceptions import InvalidState
from websockets.protocol import State

from longrun_common.httpserver import AnsweringWebSocketsProtocol


class Inbox:
    """What uvicorn uses of `asyncio.Queue` (put_nowait, get, empty, qsize), without the idle cost."""

    __slots__ = ("_getters", "_items")

    def __init__(self) -> None:
        self._items: list[Any] | None = None
        self._getters: list[asyncio.Future[None]] | None = None

    def empty(self) -> bool:
        return not self._items

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = [item]
        else:
            self._items.append(item)
        self._wake_one()

    def _wake_one(self) -> None:
        getters = self._getters
        while getters:
            getter = getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not getters:
            self._getters = None

    async def get(self) -> Any:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = [getter]
            else:
                self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                if self._getters is not None and getter in self._getters:
                    self._getters.remove(getter)
                    if not self._getters:
                        self._getters = None
                if self._items:  # it was woken but is leaving: pass the item on (as asyncio.Queue does)
                    self._wake_one()
                raise
        items = self._items
        item = items.pop(0)
        if not items:
            self._items = None
        elif self._getters:
            self._wake_one()
        return item


class Gate:
    """What uvicorn uses of `asyncio.Event` (set, clear, is_set, wait), without the idle cost."""

    __slots__ = ("_open", "_waiters")

    def __init__(self) -> None:
        self._open = False
        self._waiters: list[asyncio.Future[bool]] | None = None

    def is_set(self) -> bool:
        return self._open

    def set(self) -> None:
        if self._open:
            return
        self._open = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(True)

    def clear(self) -> None:
        self._open = False

    async def wait(self) -> bool:
        if self._open:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = [waiter]
        else:
            self._waiters.append(waiter)
        try:
            await waiter
            return True
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
                if not self._waiters:
                    self._waiters = None


class HubWebSocketProtocol(AnsweringWebSocketsProtocol):
    """`ws="websockets-sansio"` with a smaller footprint per socket (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        state = vars(self)
        queue = state.get("queue")
        if type(queue) is asyncio.Queue and queue.empty():
            state["queue"] = Inbox()
        writable = state.get("writable")
        if type(writable) is asyncio.Event:
            gate = Gate()
            if writable.is_set():
                gate.set()
            state["writable"] = gate

    @property
    def lean(self) -> bool:
        """All three changes are in place (true once the socket is accepted; see the module docstring)."""
        state = vars(self)
        return (type(state.get("queue")) is Inbox and type(state.get("writable")) is Gate
                and "request" not in state and "response" not in state)

    def start_keepalive(self) -> None:
        """uvicorn calls this once, right after writing the accepted handshake's response."""
        super().start_keepalive()
        state = vars(self)
        state.pop("request", None)  # only used during the handshake
        state.pop("response", None)

    def send_text_now(self, text: str) -> bool:
        """Write a text frame now if the open socket takes it without waiting (as `send` would, minus the
        await); False (nothing written) whenever `send` would wait, fail or do anything else."""
        if (self.disconnected or not self.handshake_complete or self.close_sent or self.initial_response is not None
                or not self.writable.is_set() or self.conn.state is not State.OPEN or self.transport.is_closing()):
            return False
        try:
            self.conn.send_text(text.encode())
        except InvalidState:
            return False
        self.transport.write(b"".join(self.conn.data_to_send()))
        return True
