"""kombu's Redis broker channel with one defect worked around, so that a worker survives any number of Redis
outages (issue 7, defect 6).

When Celery loses the broker it calls `Connection.collect()`, which releases the transport
(`transport.client = None`), and then closes channels of that connection again: the default channel in
`Connection.close()` (added by celery/celery#10242, the fix of celery/celery#9705, in Celery 5.7) and each
bootstep's channel (the remote-control one) in `blueprint.restart()`. A channel whose first close was cut short
by the outage (a connection error raised before it marked itself closed, e.g. while reading the BRPOP in
flight; kombu ignores connection errors there) then runs its close in full: it has already dropped its pool,
restoring its unacknowledged messages needs a new one, and building that reads `transport.client.hostname` ->
`AttributeError: 'NoneType' object has no attribute 'hostname'` (the failure of celery/kombu#582, reached by
another path). That is not a connection error, so Celery reports "Unrecoverable error" and the worker process
ends. It takes an outage that finds a job running (its message unacknowledged) while the consumer waits in
BRPOP for the next one, and that is seen first on the pub/sub socket: the default channel's first close then
fails reading the BRPOP reply. tests/test_redis_outages.py brings that state about; without this workaround
its worker died at the first outage in each of three runs. An acknowledgement on a channel closed this way
reads the released client too.

The workaround: a channel remembers the connection parameters it was built with, so a channel that outlives
its transport's client can still reach Redis to restore or acknowledge its messages (or fail with an ordinary
`ConnectionError`, which every kombu and Celery close path ignores and retries). `install()` makes kombu's
`redis://` transport use it: the transport keeps its name, so broker URLs, logs and Flower's broker view are
unchanged (a custom `broker_transport` class would show up in all three). Checked against kombu 5.7.0; remove
once kombu's close path no longer reads the released client.
"""

from __future__ import annotations

import logging
from typing import Any

from kombu.transport import redis as kombu_redis
from redis.exceptions import ConnectionError as RedisConnectionError

log = logging.getLogger(__name__)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, usable after its transport let go of the connection's settings."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._longrun_connparams: dict[bool, dict[str, Any]] = {}
        self._longrun_reused = False
        super().__init__(*args, **kwargs)  # type: ignore[no-untyped-call]  # kombu is untyped

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        transport = self.connection
        if transport is not None and transport.client is not None:
            params: dict[str, Any] = super()._connparams(asynchronous=asynchronous)  # type: ignore[no-untyped-call]
            self._longrun_connparams[asynchronous] = params
            return dict(params)
        remembered = self._longrun_connparams.get(asynchronous)
        if not self._longrun_reused:
            self._longrun_reused = True
            log.info("broker channel used after its connection was released (Redis outage); reconnecting it "
                     "with its own settings to restore or acknowledge its messages")
        if remembered is None:
            # This kind of pool was never needed (every delivery builds the synchronous one, so no message of
            # this channel is waiting for it). A connection error is what kombu and Celery expect from a
            # broker that is gone: they ignore it on close and reconnect.
            raise RedisConnectionError("the broker connection of this channel was released")
        return dict(remembered)


def install() -> None:
    """Use `Channel` for every `redis://` broker connection of this process (idempotent)."""
    kombu_redis.Transport.Channel = Channel
