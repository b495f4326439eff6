"""Publishing Celery task messages straight onto the broker's Redis list: one LPUSH per message.

`celery.send_task` costs its caller more than the rest of a submit's Redis work together: routing, the
task-message builder, a producer from the pool, publish signals, kombu's retry wrapper, and (in kombu's Redis
transport) a new Redis client object for every publish. A Longrun job message is always the same shape (a task
name, `{job_id, attempt}`, a queue, a priority, time limits), so this module builds exactly the message
`send_task` would store (`TaskMessages.build`; tests/test_broker_messages.py compares the two field by field) and
LPUSHes it on a long-lived client. `TaskMessages.publish` sends many in one pipelined round trip.

Used only where it is the same thing: a plain `redis://` broker, no `task-sent` events, no tracing (the Celery
instrumentation adds its context to the headers in a publish signal), no countdown. Anything else goes through
`send_task` (see `dispatch.send_job`).
"""

from __future__ import annotations

import base64
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from weakref import WeakKeyDictionary

import kombu.exceptions
import redis
from celery import Celery
from redis.client import Pipeline

from .redis_clients import SyncRedis, sync_redis

# kombu keeps each priority level but the first in its own list, named with this separator (kombu's default).
PRIORITY_SEPARATOR = "\x06\x16"
_SCHEMES = ("redis://", "rediss://", "unix://")
_DELIVERY_PERSISTENT = 2

_senders: WeakKeyDictionary[Celery, TaskMessages | None] = WeakKeyDictionary()
_lock = threading.Lock()
_origin: list[str] = []  # this process's `origin` header, once computed (os.getpid is a system call)
os.register_at_fork(after_in_child=_origin.clear)


@dataclass(frozen=True)
class Message:
    """One task message: where it goes, as what id, at which kombu priority (0 first), with which limits."""

    task: str
    task_id: str
    queue: str
    priority: int
    kwargs: dict[str, Any]
    soft_time_limit: float | None = None
    time_limit: float | None = None


class TaskMessages:
    """Builds and LPUSHes Celery task messages (protocol 2, as kombu's Redis transport stores them)."""

    def __init__(self, client: SyncRedis, key_prefix: str, reply_to: str, priority_steps: Sequence[int]) -> None:
        self.client = client
        self.key_prefix = key_prefix
        self.reply_to = reply_to
        self.steps = sorted(priority_steps)

    @classmethod
    def of(cls, celery: Celery) -> TaskMessages | None:
        """The app's sender (built once per app), or None when `send_task` must be used for this broker."""
        with _lock:
            if celery in _senders:
                return _senders[celery]
            url = str(celery.conf.broker_url or "")
            options = celery.conf.broker_transport_options or {}
            sender = None
            if url.startswith(_SCHEMES) and options.get("queue_order_strategy", "priority") == "priority":
                steps = options.get("priority_steps") or [0, 3, 6, 9]
                # The reply_to Celery stamps on messages a thread sends (its "oid"); no result is ever awaited.
                sender = cls(sync_redis(url), str(options.get("global_keyprefix", "")), celery.thread_oid, steps)
            _senders[celery] = sender
            return sender

    def close(self) -> None:
        self.client.close()

    # --- building ------------------------------------------------------------------------------------------

    def key(self, queue: str, priority: int) -> str:
        """The Redis list a message of this kombu priority waits in (kombu's `_q_for_pri`)."""
        level = max((s for s in self.steps if s <= priority), default=self.steps[0])
        name = f"{queue}{PRIORITY_SEPARATOR}{level}" if level else queue
        return f"{self.key_prefix}{name}"

    def origin(self) -> str:
        """Celery's `anon_nodename()`: `gen<pid>@<host>`, for the process sending now (a fork gets its own)."""
        if not _origin:
            _origin.append(f"gen{os.getpid()}@{socket.gethostname()}")
        return _origin[0]

    def build(self, message: Message) -> bytes:
        """The JSON kombu's Redis transport would LPUSH for `send_task(task, kwargs=…, task_id=…, …)`."""
        body = json.dumps([[], message.kwargs, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
        headers: dict[str, Any] = {
            "lang": "py", "task": message.task, "id": message.task_id, "shadow": None, "eta": None,
            "expires": None, "group": None, "group_index": None, "retries": 0,
            "timelimit": [message.time_limit, message.soft_time_limit], "root_id": message.task_id,
            "parent_id": None, "argsrepr": "()", "kwargsrepr": repr(message.kwargs), "origin": self.origin(),
            "ignore_result": None, "replaced_task_nesting": 0, "stamped_headers": None, "stamps": {},
        }
        envelope = {
            "body": base64.b64encode(body.encode()).decode(),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": headers,
            "properties": {
                "correlation_id": message.task_id,
                "reply_to": self.reply_to,
                "delivery_mode": _DELIVERY_PERSISTENT,
                "delivery_info": {"exchange": "", "routing_key": message.queue},
                "priority": message.priority,
                "body_encoding": "base64",
                "delivery_tag": str(uuid.uuid4()),
            },
        }
        return json.dumps(envelope).encode()

    # --- sending -------------------------------------------------------------------------------------------

    def publish(self, messages: Sequence[Message], *, then: Callable[[Pipeline[bytes]], Any] | None = None) -> None:
        """LPUSH every message, in order, in one round trip; `then` adds its own commands for this Redis to the same
        round trip. A Redis failure raises kombu's OperationalError, as `send_task` does, so callers handle one
        error type whichever path sent."""
        if not messages:
            return
        try:
            if len(messages) == 1 and then is None:
                only = messages[0]
                self.client.lpush(self.key(only.queue, only.priority), self.build(only))
                return
            pipe = self.client.pipeline(transaction=False)
            for message in messages:
                pipe.lpush(self.key(message.queue, message.priority), self.build(message))
            if then is not None:
                then(pipe)
            pipe.execute()
        except redis.RedisError as exc:
            raise kombu.exceptions.OperationalError(str(exc)) from exc
