"""kombu's Redis broker channel with one defect worked around, so that a worker survives any number of Redis
outages (issue 7, defect 6).

When Celery loses the broker it calls `Connection.collect()` and then, since celery/celery#10242 (the fix of
celery/celery#9705, in Celery 5.7), `Connection.close()` as well. `collect()` releases the transport
(`transport.client = None`) but leaves the connection's default channel in place, so `close()` closes that
channel a second time. The first close is often cut short by the outage itself (the pending BRPOP read raises
`ConnectionError` before the channel marks itself closed, and kombu ignores connection errors there); the
second one then runs in full: it has already dropped its pool, restoring the unacknowledged messages needs a
new one, and building it reads `transport.client.hostname` -> `AttributeError: 'NoneType' object has no
attribute 'hostname'` (the same failure as celery/kombu#582, reached by another path). That is not a
connection error, so Celery reports "Unrecoverable error" and the worker process ends. A task that finishes
after the outage hits the same path when it acknowledges its message on the old channel.

The workaround: a channel remembers the connection parameters it was built with, so a channel that outlives
its transport's client can still reach Redis to restore or acknowledge its messages (or fail with an ordinary
`ConnectionError`, which every kombu and Celery close path ignores and retries). `install()` makes kombu's
`redis://` transport use it: the transport keeps its name, so broker URLs, logs and Flower's broker view are
unchanged (a custom `broker_transport` class would show up in all three). Checked against kombu 5.7.0; remove
once kombu's close path no longer reads the released client.
"""

from __future__ import annotations

from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, usable after its transport let go of the connection's settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._longrun_connparams: dict[bool, dict[str, Any]] = {}
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # kombu is untyped

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            self._longrun_connparams[asynchronous] = params
            return dict(params)
        remembered = self._longrun_connparams.get(asynchronous)
        if remembered is None:
            # This kind of pool was never needed (every delivery builds the synchronous one, so no message of
            # this channel is waiting for it). A connection error is what kombu and Celery expect from a
            # broker that is gone: they ignore it on close and reconnect.
            raise RedisConnectionError("the broker connection of this channel was released")
        return dict(remembered)


def install() -> None:
    """Use `Channel` for every `redis://` broker connection of this process (idempotent)."""
    kombu_redis.Transport.Channel = Channel
