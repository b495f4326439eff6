"""Fair scheduling between tenants: per-tenant pending lists in the broker's Redis, moved onto the Celery queue by
an atomic round-robin dispatcher (Lua), a few messages at a time.

Why: Celery's queue is one FIFO list, so a tenant that submits 10,000 jobs makes every other tenant wait for all
of them. Here a job first waits in its tenant's pending set (per queue, ordered by priority then arrival); the
dispatcher keeps only `window` messages on the kombu queue and refills it by taking one job from each tenant with
work in turn. Another tenant's new job therefore waits for at most `window` messages plus the jobs already
running, not for the backlog. The same dispatcher enforces per-tenant concurrency: a tenant with `limit` jobs
dispatched and not yet ended is skipped until one ends.

The dispatcher runs on submit, when a worker starts or finishes a task, and on each maintenance tick (a backstop).
Every Redis structure here is a cache of SQL: after a Redis wipe the reconciler re-sends every queued job from
SQL through `dispatch.send_job`, which refills the pending sets; a job dispatched twice is run once (the worker's
attempt fencing). Keys (all under `{prefix}:fair:`):

- `{queue}:ring`               list of tenants with pending jobs on the queue (the round-robin order)
- `{queue}:pending:{tenant}`   sorted set of job ids; score = (9 - priority) * 1e12 + arrival counter
- `{queue}:sending`            jobs taken by a dispatcher but not yet published to kombu (short TTL)
- `spec`                       hash job id → its entry: the ready message (`{list}\n{message}`, which the dispatcher
                               LPUSHes itself) or, where messages go through `send_task`, the Spec's JSON
- `inflight` / `running`       hash job id → tenant / hash tenant → count: dispatched and not yet ended (kept only
                               while some tenant has a concurrency limit)
- `queues`, `seq`              set of queues that ever held jobs / the arrival counter
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.client import Pipeline

from .keys import Keys

# The reason a held job shows as `queued_reason` (the job view); "delayed" is set from SQL (run_at).
FAIR_SHARE = "fair_share"
CONCURRENCY_LIMIT = "tenant_concurrency_limit"
DELAYED = "delayed"
SENDING_TTL_MS = 10_000  # a dispatcher that died between taking jobs and publishing them stops counting after this

# Shared by the scripts below. ARGV[1] `{prefix}:fair:`, ARGV[2] the queue's name, ARGV[3] kombu's list for
# priority 0, ARGV[4] kombu's priority separator, ARGV[5] window, ARGV[6] default concurrency (0 = unlimited),
# ARGV[7] n, then n pairs tenant, limit; the script's own arguments follow.
_COMMON = """
local shared, queue, base, sep = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local q = shared .. queue .. ':'
local window, default = tonumber(ARGV[5]), tonumber(ARGV[6])
local limits, n = {}, tonumber(ARGV[7])
for i = 0, n - 1 do limits[ARGV[8 + 2 * i]] = tonumber(ARGV[9 + 2 * i]) end
local limited = default > 0  -- without any limit, nothing counts what runs (see Scheduler.limited)
for _, limit in pairs(limits) do limited = limited or limit > 0 end
local rest = 8 + 2 * n
local ring, sending = q .. 'ring', q .. 'sending'
local inflight, running, specs = shared .. 'inflight', shared .. 'running', shared .. 'spec'

local function at_limit(tenant)
  local limit = limits[tenant] or default
  return limit > 0 and tonumber(redis.call('HGET', running, tenant) or '0') >= limit
end

local function release(job)
  local tenant = redis.call('HGET', inflight, job)
  if tenant then
    redis.call('HDEL', inflight, job)
    if redis.call('HINCRBY', running, tenant, -1) <= 0 then redis.call('HDEL', running, tenant) end
  end
end

-- Take up to (window - what kombu already holds) jobs, one tenant at a time, skipping tenants at their limit.
local function dispatch()
  local depth = tonumber(redis.call('GET', sending) or '0') + redis.call('LLEN', base)
  for level = 1, 9 do depth = depth + redis.call('LLEN', base .. sep .. level) end
  local out, room = {}, window - depth
  local tenants, skipped = redis.call('LLEN', ring), 0
  while room > 0 and tenants > 0 and skipped < tenants do
    local tenant = redis.call('RPOPLPUSH', ring, ring)
    local pending = q .. 'pending:' .. tenant
    if at_limit(tenant) then
      skipped = skipped + 1
    else
      local popped = redis.call('ZPOPMIN', pending)
      if popped[1] then
        local entry = redis.call('HGET', specs, popped[1])
        redis.call('HDEL', specs, popped[1])
        if entry then
          if limited and redis.call('HSET', inflight, popped[1], tenant) == 1 then
            redis.call('HINCRBY', running, tenant, 1)
          end
          local cut = string.find(entry, '\\n', 1, true)
          if cut then  -- a ready message: onto kombu's list now, no round trip back to the caller
            redis.call('LPUSH', string.sub(entry, 1, cut - 1), string.sub(entry, cut + 1))
          else
            out[#out + 1] = entry
          end
          room = room - 1
        end
        skipped = 0
      end
      if redis.call('EXISTS', pending) == 0 then
        redis.call('LREM', ring, 1, tenant)
        tenants = tenants - 1
      end
    end
  end
  if #out > 0 then
    redis.call('INCRBY', sending, #out)
    redis.call('PEXPIRE', sending, SENDING_TTL_MS)
  end
  return out
end
""".replace("SENDING_TTL_MS", str(SENDING_TTL_MS))

# Own arguments: for each job of the queue, its id, tenant, priority (0-9) and entry. Every job joins its tenant's
# pending set, then the dispatcher runs once. Returns {reason or '' per job, in order, then every message to publish
# now}: a job's reason is why it is held ('' when it was dispatched at once). One call for a whole batch of submits:
# a round trip per job would cost more than the scheduling itself.
_ENQUEUE = _COMMON + """
redis.call('SADD', shared .. 'queues', queue)
local seq = shared .. 'seq'
for at = rest, #ARGV, 4 do
  local job, tenant, priority, entry = ARGV[at], ARGV[at + 1], tonumber(ARGV[at + 2]), ARGV[at + 3]
  local pending = q .. 'pending:' .. tenant
  local score = string.format('%.0f', (9 - priority) * 1e12 + redis.call('INCR', seq))
  redis.call('HSET', specs, job, entry)
  redis.call('ZADD', pending, 'NX', score, job)
  if not redis.call('LPOS', ring, tenant) then redis.call('RPUSH', ring, tenant) end
end
local out = dispatch()
local reasons = {}
for at = rest, #ARGV, 4 do
  local reason = ''
  if redis.call('ZSCORE', q .. 'pending:' .. ARGV[at + 1], ARGV[at]) then
    reason = at_limit(ARGV[at + 1]) and 'tenant_concurrency_limit' or 'fair_share'
  end
  reasons[#reasons + 1] = reason
end
for _, spec in ipairs(out) do reasons[#reasons + 1] = spec end
return reasons
"""

# Own arguments: job ids whose attempt ended (may be none). Returns the messages to publish now.
_RELEASE_AND_DISPATCH = _COMMON + """
for i = rest, #ARGV do release(ARGV[i]) end
return dispatch()
"""

# Own arguments: pairs of job id, tenant of running jobs (re-counted after Redis lost the counts).
_ADOPT = _COMMON + """
for i = rest, #ARGV, 2 do
  if redis.call('HSET', inflight, ARGV[i], ARGV[i + 1]) == 1 then redis.call('HINCRBY', running, ARGV[i + 1], 1) end
end
return 0
"""


@dataclass(frozen=True)
class Spec:
    """What publishing a held job's message needs (the job row stays in SQL)."""

    id: str
    tenant: str
    task: str
    queue: str
    attempt: int
    priority: int
    soft_time_limit: float | None = None
    time_limit: float | None = None

    def dumps(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def loads(cls, raw: bytes | str) -> Spec:
        return cls(**json.loads(raw))


def ready_entry(list_key: str, message: bytes) -> bytes:
    """A held job's entry that is its message, ready to LPUSH onto kombu's `list_key` (JSON holds no raw newline)."""
    return list_key.encode() + b"\n" + message


@dataclass
class Scheduler:
    """The fair dispatcher for one key prefix, on the broker's Redis."""

    client: redis.Redis[bytes]
    keys: Keys
    window: int
    concurrency: int = 0
    overrides: Mapping[str, int] = field(default_factory=dict)
    priority_separator: str = "\x06\x16"

    def __post_init__(self) -> None:
        self.shared = f"{self.keys.prefix}:fair:"
        self._enqueue = self.client.register_script(_ENQUEUE)
        self._release = self.client.register_script(_RELEASE_AND_DISPATCH)
        self._adopt = self.client.register_script(_ADOPT)
        self._limits: list[Any] = [self.concurrency, len(self.overrides)]
        for tenant, limit in self.overrides.items():
            self._limits += [tenant, limit]

    def _args(self, queue: str, *own: Any) -> list[Any]:
        base = f"{self.keys.prefix}:celery:{self.keys.queue(queue)}"
        return [self.shared, queue, base, self.priority_separator, self.window, *self._limits, *own]

    @property
    def limited(self) -> bool:
        """Whether any tenant has a concurrency limit. Without one the dispatcher counts nothing in flight, so a
        task's end has nothing to release (workers skip that call; the next take refills the queue) and the
        maintenance recount has nothing to repair."""
        return self.concurrency > 0 or any(limit > 0 for limit in self.overrides.values())

    def limit(self, tenant: str) -> int:
        """The tenant's concurrency limit (0 = unlimited)."""
        return self.overrides.get(tenant, self.concurrency)

    def enqueue(self, specs: Sequence[Spec], entries: Sequence[str | bytes] | None = None,
                ) -> tuple[list[str | None], list[Spec]]:
        """Hold the jobs (all of one queue) in their tenants' pending sets and dispatch what may go now, in one
        script call: (why each job is held, or None when it went to the queue; the Specs whose messages the caller
        publishes). `entries`: what is held for each job, `ready_entry` or (the default) the Spec's JSON; the
        dispatcher pushes a ready message itself, in the same call that releases it."""
        queue = specs[0].queue
        own: list[Any] = []
        for index, spec in enumerate(specs):
            assert spec.queue == queue, "one queue per call: the dispatcher runs per queue"
            own += [spec.id, spec.tenant, spec.priority, entries[index] if entries else spec.dumps()]
        raw = self._enqueue(args=self._args(queue, *own))
        reasons = [(item.decode() if isinstance(item, bytes) else str(item)) or None for item in raw[:len(specs)]]
        return reasons, [Spec.loads(item) for item in raw[len(specs):]]

    def dispatch(self, queue: str, ended: Iterable[str] = ()) -> list[Spec]:
        """Release the jobs whose attempt `ended`, then take what may go now from the queue's pending sets: ready
        messages go onto the queue in the same call; the Specs returned are the caller's to publish."""
        return [Spec.loads(item) for item in self._release(args=self._args(queue, *ended))]

    def published(self, queue: str, count: int, pipe: Pipeline[bytes] | None = None) -> None:
        """`count` taken jobs are on kombu's list now (they count there, no longer as being sent); with `pipe` (a
        pipeline on this Redis), as part of the round trip that put them there."""
        if count:
            (pipe or self.client).decrby(f"{self.shared}{queue}:sending", count)

    def queues(self) -> list[str]:
        """Every queue that has held jobs (the maintenance backstop dispatches each)."""
        return sorted(name.decode() for name in self.client.smembers(f"{self.shared}queues"))

    def held(self, queue: str) -> int:
        """Jobs waiting in the queue's pending sets."""
        tenants = self.client.lrange(f"{self.shared}{queue}:ring", 0, -1)
        if not tenants:
            return 0
        pipe = self.client.pipeline(transaction=False)
        for tenant in tenants:
            pipe.zcard(f"{self.shared}{queue}:pending:{tenant.decode()}")
        return sum(int(n) for n in pipe.execute())

    def inflight(self) -> dict[str, str]:
        """Job id → tenant of every job dispatched and not yet ended."""
        raw = self.client.hgetall(f"{self.shared}inflight")
        return {k.decode(): v.decode() for k, v in raw.items()}

    def running(self) -> dict[str, int]:
        """Tenant → jobs dispatched and not yet ended."""
        raw = self.client.hgetall(f"{self.shared}running")
        return {k.decode(): int(v) for k, v in raw.items()}

    def adopt(self, jobs: Mapping[str, str]) -> None:
        """Count running jobs (id → tenant) the counts lost (a Redis wipe); counted ones are left alone."""
        pairs = [item for pair in jobs.items() for item in pair]
        if pairs:
            self._adopt(args=self._args("-", *pairs))
