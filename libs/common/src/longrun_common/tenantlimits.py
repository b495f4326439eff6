"""Per-tenant limits: `LONGRUN_TENANT_LIMITS`, parsed once at start so a typo stops the process with a clear error.

Form: `tenant:name=value[:name=value…][,tenant:…]`, e.g. `acme:concurrency=5:rate=20,beta:concurrency=2`.
`concurrency` is how many of the tenant's jobs may run at once (0 = unlimited), `rate` its submissions per
second (0 = unlimited). An entry overrides only the limits it names; the others stay the global defaults
(`LONGRUN_TENANT_CONCURRENCY`, `LONGRUN_TENANT_RATE_LIMIT`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

TENANT_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
SETTING = "LONGRUN_TENANT_LIMITS"


@dataclass(frozen=True)
class TenantLimit:
    """One tenant's overrides; None = the global default applies."""

    concurrency: int | None = None
    rate: float | None = None


def parse_tenant_limits(text: str) -> dict[str, TenantLimit]:
    """tenant → its overrides; ValueError naming the bad entry and what to write instead."""
    result: dict[str, TenantLimit] = {}
    for entry in filter(None, (part.strip() for part in text.split(","))):
        tenant, *pairs = (part.strip() for part in entry.split(":"))
        if not TENANT_NAME.fullmatch(tenant):
            raise ValueError(f"{SETTING} entry {entry!r}: tenant {tenant!r} must be 1-64 letters, digits, "
                             "'_', '-' or '.'")
        if tenant in result:
            raise ValueError(f"{SETTING}: tenant {tenant!r} is listed twice")
        if not pairs:
            raise ValueError(f"{SETTING} entry {entry!r} names no limit; write e.g. {tenant}:concurrency=5:rate=20")
        values: dict[str, str] = {}
        for pair in pairs:
            name, sep, value = (p.strip() for p in pair.partition("="))
            if not sep or name not in ("concurrency", "rate") or not value:
                raise ValueError(f"{SETTING} entry {entry!r}: {pair!r} is not concurrency=N or rate=N")
            values[name] = value
        result[tenant] = TenantLimit(
            concurrency=_count(entry, values["concurrency"]) if "concurrency" in values else None,
            rate=_rate(entry, values["rate"]) if "rate" in values else None,
        )
    return result


def _count(entry: str, value: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{SETTING} entry {entry!r}: concurrency={value} must be a whole number ≥ 0")
    return int(value)


def _rate(entry: str, value: str) -> float:
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not math.isfinite(rate) or rate < 0:
        raise ValueError(f"{SETTING} entry {entry!r}: rate={value} must be a number ≥ 0 (submissions per second)")
    return rate
