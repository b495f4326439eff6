"""Celery's worker consumer, with its buffered task events sent at most every `EVENT_FLUSH_SECONDS`.

Celery buffers task events (`task-received`, `task-started`, `task-succeeded`, ...) and sends what is buffered as
one `task.multi` message, but schedules that send for the event loop's next turn, and each turn handles about one
message: so under load every task still costs three publishes of one event each, in the consumer's single
thread, which also takes every message off the queue and hands it to a pool process. Measured in the fan-out
benchmark, sending events was a quarter of that thread's CPU while it was the bottleneck. Waiting a few
milliseconds lets one publish carry the events of many tasks (Celery still sends at once when its buffer of 24
is full), and Flower shows them that much later.
"""

from __future__ import annotations

from typing import Any

from celery.worker.consumer import Consumer as CeleryConsumer

EVENT_FLUSH_SECONDS = 0.05


class Consumer(CeleryConsumer):  # type: ignore[misc]  # celery is untyped
    """`worker_consumer` of every Longrun worker."""

    _flush_armed = False

    def on_send_event_buffered(self) -> None:
        if self.hub is None or self._flush_armed:
            return
        self._flush_armed = True
        self.hub.call_later(EVENT_FLUSH_SECONDS, self._send_buffered_events)

    def _send_buffered_events(self) -> None:
        self._flush_armed = False
        self._flush_events()

    def stop(self) -> Any:
        # What waits for the timer goes out before the consumer's steps (the event dispatcher among them) stop.
        self._send_buffered_events()
        return super().stop()
