"""Per-tenant submission rate limit (`LONGRUN_TENANT_RATE_LIMIT` submissions per second; 0 = unlimited).

A token bucket holding one second's worth of submissions (at least one), kept in Redis so every gateway
replica shares it: GCRA, one key per tenant holding the bucket's "theoretical arrival time", checked and
advanced by one Lua script on Redis's own clock (replicas' clocks never matter). The key expires once the
bucket is full again. If Redis is down the limit is not enforced (fail open): jobs are still accepted into
SQL, as a submit always is while Redis is down.
"""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import redis

from longrun_common.keys import Keys

from .errors import ApiError

if TYPE_CHECKING:
    from longrun_common.redis_clients import AsyncRedis

log = logging.getLogger(__name__)

# KEYS[1] the tenant's bucket; ARGV[1] seconds per submission; ARGV[2] burst tolerance in seconds.
# Returns 0 when allowed, else the seconds to wait (as a string: Lua numbers reach Redis as integers).
_GCRA = """
local time = redis.call('TIME')
local now = tonumber(time[1]) + tonumber(time[2]) / 1000000
local interval = tonumber(ARGV[1])
local tolerance = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
if tat < now then tat = now end
local wait = tat - tolerance - now
if wait > 0 then return string.format('%.6f', wait) end
tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.6f', tat), 'PX', math.ceil((tat - now) * 1000) + 1)
return 0
"""


class SubmitLimiter:
    """`await limiter.check(tenant)`: None when the submission may go ahead, else seconds until it may."""

    def __init__(self, client: AsyncRedis, keys: Keys, rate: float) -> None:
        self.rate = rate
        self._keys = keys
        self._script = client.register_script(_GCRA) if rate > 0 else None
        if rate > 0:
            self._interval = 1.0 / rate
            self._tolerance = self._interval * (max(1.0, rate) - 1.0)  # a burst of one second's worth

    def key(self, tenant: str) -> str:
        return f"{self._keys.prefix}:rate:submit:{tenant}"

    async def check(self, tenant: str) -> float | None:
        if self._script is None:
            return None
        wait = await self._script(keys=[self.key(tenant)], args=[repr(self._interval), repr(self._tolerance)])
        seconds = float(wait.decode() if isinstance(wait, bytes) else wait)
        return seconds if seconds > 0 else None

    async def enforce(self, tenant: str) -> None:
        """429 with Retry-After when the tenant is over its rate; never fails for want of Redis."""
        try:
            wait = await self.check(tenant)
        except (redis.RedisError, OSError) as exc:
            log.warning("submission rate limit not enforced (redis unavailable): %s", exc)
            return
        if wait is None:
            return
        rate = f"{self.rate:g} job submission{'' if self.rate == 1 else 's'} per second"
        raise ApiError(
            429,
            f"tenant {tenant!r} is over its limit of {rate}; retry in {wait:.2f}s",
            details={"limit": self.rate, "retry_after": round(wait, 3)},
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )
