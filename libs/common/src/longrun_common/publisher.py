"""The progress publisher: one atomic Redis operation per event.

One Lua script fences stale attempts, bumps `seq`, updates the snapshot hash, XADDs the event to the job's
stream under entry id `{seq}-0` (so replay is a plain XRANGE by seq), PUBLISHes it, and renews or drops the
job's lease. Because it is one script, a reader can never see a seq in the hash that is missing from the
stream, and two writers can never hand out the same seq.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis
from opentelemetry.trace import SpanKind

from . import rollup, telemetry
from .events import JobError, Progress, dumps, now
from .keys import Keys
from .states import JobStatus

# Return codes besides a seq (>= 1).
FENCED = -1  # an older attempt, or the same attempt after the job already ended
LEASE_KEEP = -1.0  # leave the lease as it is
LEASE_DROP = 0.0  # remove the lease (job no longer running)

# SQL's `seq` trails Redis by the progress events of one `sql_progress_interval`. When Redis has lost a job
# and the first publisher after the loss only knows SQL's seq, the job's seq jumps ahead by this much, so a
# seq a client has already seen is never reused (a gap makes clients take a fresh snapshot).
SEQ_GAP_AFTER_LOSS = 10_000


def sql_floor(seq: int) -> int:
    """The seq floor for a publisher that only knows SQL's seq (0 for a job that never published: seq 1)."""
    return seq + SEQ_GAP_AFTER_LOSS if seq else 0


_SCRIPT = """
local prefix, maxlen = ARGV[11], ARGV[3]
""" + rollup.LUA + """
local attempt = tonumber(ARGV[1])
local cur_attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
local cur_status = redis.call('HGET', KEYS[1], 'status')
local terminal = cur_status == 'succeeded' or cur_status == 'failed' or cur_status == 'cancelled'
if attempt < cur_attempt or (attempt == cur_attempt and terminal and ARGV[7] ~= '1') then
  return {-1, 0, 0}
end
if redis.call('HEXISTS', KEYS[1], 'seq') == 0 then
  -- A lost hash (Redis restarted or flushed) continues after the last seq the caller knows, never from 1.
  redis.call('HSET', KEYS[1], 'seq', ARGV[8])
end
local seq = redis.call('HINCRBY', KEYS[1], 'seq', 1)
local event = '{"seq":' .. seq .. ',' .. string.sub(ARGV[2], 2)
redis.call('HSET', KEYS[1], 'attempt', attempt, 'event', event, unpack(ARGV, 14))
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], seq .. '-0', 'e', event)
redis.call('PUBLISH', KEYS[3], event)
local lease = tonumber(ARGV[5])
if lease == 0 then
  redis.call('ZREM', KEYS[4], ARGV[6])
elseif lease > 0 then
  redis.call('ZADD', KEYS[4], lease, ARGV[6])
end
local ttl = tonumber(ARGV[4])
if ttl > 0 then
  redis.call('EXPIRE', KEYS[1], ttl)
  redis.call('EXPIRE', KEYS[2], ttl)
else
  redis.call('PERSIST', KEYS[1])
  redis.call('PERSIST', KEYS[2])
end
-- A workflow step: fold this event into its parents' progress (see rollup.py).
rollup(ARGV[6], ARGV[9], ARGV[10], ARGV[12], tonumber(ARGV[13]))
local cancel = redis.call('HGET', KEYS[1], 'cancel') == '1' and 1 or 0
local drain = redis.call('HGET', KEYS[1], 'drain') == tostring(attempt) and 1 or 0
return {seq, cancel, drain}
"""

# Renew a lease only while the attempt is current and the job still runs; report cancel / drain requests.
# A missing hash means Redis lost its data: keep the lease (the attempt is not known to be stale).
_HEARTBEAT = """
local status = redis.call('HGET', KEYS[1], 'status')
if status then
  local cur_attempt = tonumber(redis.call('HGET', KEYS[1], 'attempt') or '0')
  if tonumber(ARGV[1]) < cur_attempt or status ~= 'running' then
    return -1
  end
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
if redis.call('HGET', KEYS[1], 'cancel') == '1' then return 1 end
if redis.call('HGET', KEYS[1], 'drain') == ARGV[1] then return 2 end
return 0
"""

HEARTBEAT_FENCED, HEARTBEAT_OK, HEARTBEAT_CANCEL, HEARTBEAT_DRAIN = -1, 0, 1, 2


@dataclass(frozen=True)
class Published:
    """What one publish did: the event's seq (or FENCED), and whether a cancel or a drain was requested."""

    seq: int
    cancel_requested: bool
    drain_requested: bool = False
    queued_reason: str | None = None  # a submit's: why the fair scheduler holds the job (JobStore.dispatch)

    @property
    def fenced(self) -> bool:
        return self.seq == FENCED


@dataclass(frozen=True)
class EventSpec:
    """Everything one event changes; turned into the script's arguments by `_script_args`."""

    job_id: str
    type: str
    status: JobStatus
    attempt: int
    progress: Progress | None = None
    error: JobError | None = None
    result: Any = None
    next_retry_at: float | None = None
    fields: dict[str, str] | None = None
    lease_until: float = LEASE_KEEP
    allow_after_terminal: bool = False
    ts: float | None = None
    seq_floor: int = 0  # the last seq the caller knows of; a lost hash continues after it


class Publisher:
    """Publishes job events for one key prefix. Works with a sync or an asyncio Redis client."""

    def __init__(self, keys: Keys, *, stream_maxlen: int = 1000, event_ttl_seconds: int = 7 * 24 * 3600):
        self.keys = keys
        self.stream_maxlen = stream_maxlen
        self.event_ttl_seconds = event_ttl_seconds
        # Scripts are registered once (SHA computed once) and called with whichever client is passed.
        self._sync: dict[str, Any] = {}
        self._async: dict[str, Any] = {}

    def _script(self, client: redis.Redis[bytes], source: str) -> Any:
        if source not in self._sync:
            self._sync[source] = client.register_script(source)
        return self._sync[source]

    def _ascript(self, client: aioredis.Redis[bytes], source: str) -> Any:
        if source not in self._async:
            self._async[source] = client.register_script(source)
        return self._async[source]

    def _script_args(self, spec: EventSpec, traceparent: str | None = None) -> tuple[list[str], list[Any]]:
        ts = spec.ts if spec.ts is not None else now()
        progress = spec.progress or Progress()
        body: dict[str, Any] = {
            "type": spec.type,
            "job_id": spec.job_id,
            "ts": ts,
            "status": spec.status.value,
            "progress": progress.model_dump(mode="json", exclude_none=True),
            "attempt": spec.attempt,
        }
        if traceparent:  # the publishing span: the hub's delivery spans link to it
            body["traceparent"] = traceparent
        fields: dict[str, str] = {
            "status": spec.status.value,
            "ts": repr(ts),
            "updated_at": repr(ts),
            "progress": dumps(body["progress"]),
        }
        # The snapshot always states error and result, so a value from an earlier attempt never lingers.
        fields["error"] = fields["result"] = "null"
        if spec.error is not None:
            body["error"] = spec.error.model_dump(mode="json", exclude_none=True, exclude={"traceback"})
            fields["error"] = dumps(body["error"])
        if spec.result is not None:
            body["result"] = spec.result
            fields["result"] = dumps(spec.result)
        if spec.next_retry_at is not None:
            body["next_retry_at"] = spec.next_retry_at
            fields["next_retry_at"] = repr(spec.next_retry_at)
        fields.update(spec.fields or {})
        ttl = self.event_ttl_seconds if spec.status.terminal else 0
        keys = [
            self.keys.job(spec.job_id),
            self.keys.stream(spec.job_id),
            self.keys.channel(spec.job_id),
            self.keys.leases(),
        ]
        args: list[Any] = [
            spec.attempt,
            dumps(body),
            self.stream_maxlen,
            ttl,
            spec.lease_until,
            spec.job_id,
            "1" if spec.allow_after_terminal else "0",
            spec.seq_floor,
            _fraction(spec),
            "" if progress.total is None else repr(float(progress.total)),
            self.keys.prefix,
            spec.status.value,
            repr(ts),
        ]
        for name, value in fields.items():
            args.extend((name, value))
        return keys, args

    def publish(self, client: redis.Redis[bytes], spec: EventSpec) -> Published:
        """Publish one event atomically (sync client)."""
        if not telemetry.enabled():
            keys, args = self._script_args(spec)
            seq, cancel, drain = self._script(client, _SCRIPT)(keys=keys, args=args, client=client)
            return Published(int(seq), bool(cancel), bool(drain))
        with telemetry.span(f"publish {spec.type}", SpanKind.PRODUCER, _attributes(spec)) as current:
            keys, args = self._script_args(spec, telemetry.traceparent())
            seq, cancel, drain = self._script(client, _SCRIPT)(keys=keys, args=args, client=client)
            current.set_attribute("longrun.seq", int(seq))
            return Published(int(seq), bool(cancel), bool(drain))

    def publish_many(self, client: redis.Redis[bytes], specs: Sequence[EventSpec]) -> list[Published]:
        """Publish many events, in order, each atomically, in one pipelined round trip (a batch submit)."""
        if telemetry.enabled():  # one span per event, as `publish` makes
            return [self.publish(client, spec) for spec in specs]
        script = self._script(client, _SCRIPT)
        calls = [self._script_args(spec) for spec in specs]
        try:
            replies = _evalsha_pipelined(client, script.sha, calls)
        except redis.exceptions.NoScriptError:  # Redis lost its scripts (a restart): none ran; load, run again
            script.sha = client.script_load(script.script)  # type: ignore[no-untyped-call]  # types-redis
            replies = _evalsha_pipelined(client, script.sha, calls)
        return [Published(int(seq), bool(cancel), bool(drain)) for seq, cancel, drain in replies]

    async def apublish(self, client: aioredis.Redis[bytes], spec: EventSpec) -> Published:
        """Publish one event atomically (asyncio client)."""
        with telemetry.span(f"publish {spec.type}", SpanKind.PRODUCER, _attributes(spec)):
            keys, args = self._script_args(spec, telemetry.traceparent())
            seq, cancel, drain = await self._ascript(client, _SCRIPT)(keys=keys, args=args, client=client)
            return Published(int(seq), bool(cancel), bool(drain))

    def heartbeat(self, client: redis.Redis[bytes], job_id: str, attempt: int, lease_until: float) -> int:
        """Renew a running attempt's lease; returns one of the HEARTBEAT_* codes."""
        script = self._script(client, _HEARTBEAT)
        keys = [self.keys.job(job_id), self.keys.leases()]
        return int(script(keys=keys, args=[attempt, lease_until, job_id], client=client))


def _evalsha_pipelined(client: redis.Redis[bytes], sha: str, calls: Sequence[tuple[list[str], list[Any]]]) -> list[Any]:
    """EVALSHA of each call, pipelined in one round trip. Not redis-py's `script(..., client=pipe)`: a pipeline
    holding scripts first asks SCRIPT EXISTS, a second round trip on every execute."""
    pipe = client.pipeline(transaction=False)
    for keys, args in calls:
        pipe.evalsha(sha, len(keys), *keys, *args)
    return list(pipe.execute())


def _fraction(spec: EventSpec) -> str:
    """The job's fraction done for its parent's roll-up ('' when this event does not say)."""
    progress = spec.progress
    if spec.status is JobStatus.SUCCEEDED:
        return "1"
    if progress is not None and progress.percent is not None:
        return repr(min(100.0, max(0.0, progress.percent)) / 100)
    if progress is not None and progress.current is not None and progress.total:
        return repr(min(1.0, max(0.0, progress.current / progress.total)))
    if spec.status is JobStatus.QUEUED:
        return "0"  # a (re)queued job starts from scratch
    return ""


def _attributes(spec: EventSpec) -> dict[str, Any]:
    return {"longrun.job_id": spec.job_id, "longrun.attempt": spec.attempt, "longrun.status": spec.status.value}
