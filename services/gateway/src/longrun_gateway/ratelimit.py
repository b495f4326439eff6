"""Per-tenant submission rate limit (`LONGRUN_TENANT_RATE_LIMIT` submissions per second, or the tenant's own
`rate=` in `LONGRUN_TENANT_LIMITS`; 0 = unlimited).

A token bucket holding one second's worth of submissions (at least one), kept in Redis so every gateway
replica shares it: GCRA, one key per tenant holding the bucket's "theoretical arrival time", checked and
advanced by one Lua script on Redis's own clock (replicas' clocks never matter). The key expires once the
bucket is full again. If Redis is down the limit is not enforced (fail open): jobs are still accepted into
SQL, as a submit always is while Redis is down.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Mapping
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
    """`await limiter.check(tenant)`: None when the submission may go ahead, else seconds until it may.

    `rate` is every tenant's limit, `overrides` the tenants with their own (LONGRUN_TENANT_LIMITS `rate=`).
    """

    def __init__(self, client: AsyncRedis, keys: Keys, rate: float, overrides: Mapping[str, float] | None = None
                 ) -> None:
        self.rate = rate
        self.overrides = dict(overrides or {})
        self._keys = keys
        limited = rate > 0 or any(value > 0 for value in self.overrides.values())
        self._script = client.register_script(_GCRA) if limited else None

    def key(self, tenant: str) -> str:
        return f"{self._keys.prefix}:rate:submit:{tenant}"

    def rate_of(self, tenant: str) -> float:
        return self.overrides.get(tenant, self.rate)

    async def check(self, tenant: str) -> float | None:
        rate = self.rate_of(tenant)
        if self._script is None or rate <= 0:
            return None
        wait = await self._script(keys=[self.key(tenant)], args=_gcra_args(rate))
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
        limit = self.rate_of(tenant)
        rate = f"{limit:g} job submission{'' if limit == 1 else 's'} per second"
        raise ApiError(
            429,
            f"tenant {tenant!r} is over its limit of {rate}; retry in {wait:.2f}s",
            details={"limit": limit, "retry_after": round(wait, 3)},
            headers={"Retry-After": str(max(1, math.ceil(wait)))},
        )


@functools.cache
def _gcra_args(rate: float) -> list[str]:
    """The script's arguments for a rate: seconds per submission, and a burst of one second's worth."""
    interval = 1.0 / rate
    return [repr(interval), repr(interval * (max(1.0, rate) - 1.0))]
