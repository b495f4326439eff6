"""The reader side: a job's snapshot from its hash, and its events from its stream by seq."""

from __future__ import annotations

import json
from typing import Any

import redis
import redis.asyncio as aioredis

from .keys import Keys

_JSON_FIELDS = ("progress", "error", "result")
_FLOAT_FIELDS = ("ts", "updated_at", "next_retry_at", "created_at", "started_at", "finished_at")
_INT_FIELDS = ("seq", "attempt", "max_attempts", "priority")


def decode_snapshot(raw: dict[Any, Any]) -> dict[str, Any] | None:
    """Turn a job hash (bytes or str) into typed values; None when the job has no hash."""
    if not raw:
        return None
    fields = {_text(k): _text(v) for k, v in raw.items()}
    snap: dict[str, Any] = dict(fields)
    for name in _JSON_FIELDS:
        if name in fields:
            snap[name] = json.loads(fields[name])
    for name in _FLOAT_FIELDS:
        if fields.get(name):
            snap[name] = float(fields[name])
    for name in _INT_FIELDS:
        if fields.get(name):
            snap[name] = int(fields[name])
    snap.pop("event", None)
    return snap


def decode_entries(entries: list[tuple[Any, dict[Any, Any]]]) -> list[dict[str, Any]]:
    """Stream entries → event dicts, in seq order."""
    return [json.loads(_text(fields[b"e"] if b"e" in fields else fields["e"])) for _, fields in entries]


def stream_range(after_seq: int) -> str:
    """The XRANGE start that returns events with seq > after_seq (entry ids are `{seq}-0`)."""
    return f"{after_seq + 1}-0"


class Reader:
    """Reads snapshots and replays events for one key prefix."""

    def __init__(self, keys: Keys):
        self.keys = keys

    def snapshot(self, client: redis.Redis[bytes], job_id: str) -> dict[str, Any] | None:
        return decode_snapshot(client.hgetall(self.keys.job(job_id)))

    def events_after(
        self, client: redis.Redis[bytes], job_id: str, after_seq: int, count: int | None = None
    ) -> list[dict[str, Any]]:
        entries = client.xrange(self.keys.stream(job_id), min=stream_range(after_seq), count=count)
        return decode_entries(entries)

    async def asnapshot(self, client: aioredis.Redis[bytes], job_id: str) -> dict[str, Any] | None:
        return decode_snapshot(await client.hgetall(self.keys.job(job_id)))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
