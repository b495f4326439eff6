"""Who is calling: the `Authorization: Bearer` key, from `LONGRUN_API_KEYS` (bootstrap) or from SQL.

A SQL key is read once per `LONGRUN_API_KEY_CACHE_SECONDS` per process and then checked from memory (one HMAC
and a constant-time compare), so a submit pays no database read for it. The price is the delay: a key revoked
or rotated out elsewhere keeps working here until the entry is re-read — at most that many seconds on every
replica. The replica that revokes a key forgets it at once.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from longrun_common.apikeys import ApiKeyStore, KeyStatus, Scope, aware, key_id_of, matches, status
from longrun_common.models import ApiKey, utcnow
from longrun_common.settings import Settings

from .errors import ApiError

log = logging.getLogger(__name__)

# `last_used_at` is a hint, not an audit log: at most one write per key per interval (per process).
LAST_USED_INTERVAL = timedelta(seconds=60)
# Bound the memory a flood of made-up key ids can take; entries are cheap to re-read.
MAX_CACHED_KEYS = 10_000
BOOTSTRAP_SCOPES = frozenset({Scope.JOBS.value})


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its tenant, its key's id (None for a bootstrap key) and scopes."""

    tenant: str
    key_id: str | None
    scopes: frozenset[str]


@dataclass(frozen=True)
class _Entry:
    """What this process knows about one key id (`row` None: no such key) and when it read it."""

    row: _KeyRow | None
    read_at: float


@dataclass(frozen=True)
class _KeyRow:
    """A detached copy of the columns that decide authentication."""

    tenant: str
    scopes: frozenset[str]
    secret_hash: str
    expires_at: datetime | None
    revoked_at: datetime | None
    grace_until: datetime | None
    replaced_by: str | None

    @classmethod
    def of(cls, row: ApiKey) -> _KeyRow:
        return cls(
            tenant=row.tenant,
            scopes=frozenset(row.scopes),
            secret_hash=row.secret_hash,
            expires_at=aware(row.expires_at),
            revoked_at=aware(row.revoked_at),
            grace_until=aware(row.grace_until),
            replaced_by=row.replaced_by,
        )


_REFUSED = {
    KeyStatus.REVOKED: "API key revoked",
    KeyStatus.EXPIRED: "API key expired",
}


class Authenticator:
    """Turns an Authorization header into a Principal, or raises 401."""

    def __init__(self, settings: Settings, engine: Engine, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = ApiKeyStore.for_settings(engine, settings)
        self._bootstrap = [(key.encode(), tenant) for key, tenant in settings.tenant_by_key.items()]
        self._ttl = settings.api_key_cache_seconds
        self._clock = clock
        self._cache: dict[str, _Entry] = {}
        self._forgets = 0  # bumped by forget(): a read that raced with it is used once, not cached

    async def authenticate(self, header: str) -> Principal:
        """The caller of a request with this `Authorization` header value."""
        scheme, _, key = header.partition(" ")
        key = key.strip()
        if not header:
            raise unauthorized("missing Authorization header; send `Authorization: Bearer <api key>`")
        if scheme.lower() != "bearer" or not key:
            raise unauthorized("malformed Authorization header; expected `Bearer <api key>`")
        principal = self._bootstrap_key(key)
        if principal is not None:
            return principal
        key_id = key_id_of(key)
        if key_id is None:
            raise unauthorized("invalid API key")
        entry = self._cache.get(key_id)
        if entry is None or self._clock() - entry.read_at >= self._ttl:
            forgets = self._forgets
            entry = await run_in_threadpool(self._read, key_id, key)
            if forgets == self._forgets:
                self._remember(key_id, entry)
        row = entry.row
        if row is None or not matches(self.store.pepper, key, row.secret_hash):
            raise unauthorized("invalid API key")
        state = status(row)
        if state not in (KeyStatus.ACTIVE, KeyStatus.ROTATED):
            if state is KeyStatus.EXPIRED and row.replaced_by is not None:
                raise unauthorized("API key rotated and its grace period has ended; use its replacement")
            raise unauthorized(_REFUSED.get(state, "invalid API key"))
        return Principal(row.tenant, key_id, row.scopes)

    def forget(self, key_id: str) -> None:
        """Drop a cached key (after this process changed it), so the change applies here at once."""
        self._forgets += 1
        self._cache.pop(key_id, None)

    def _bootstrap_key(self, key: str) -> Principal | None:
        tenant = None
        presented = key.encode()
        # Compare against every key in constant time so response timing does not reveal near-misses.
        for candidate, owner in self._bootstrap:
            if hmac.compare_digest(candidate, presented):
                tenant = owner
        return Principal(tenant, None, BOOTSTRAP_SCOPES) if tenant is not None else None

    def _read(self, key_id: str, key: str) -> _Entry:
        """Read a key's row (in the threadpool); record its use when the presented key is really it."""
        row = self.store.lookup(key_id)
        read_at = self._clock()
        if row is None:
            return _Entry(None, read_at)
        now = utcnow()
        last_used = aware(row.last_used_at)
        usable = status(row, now) in (KeyStatus.ACTIVE, KeyStatus.ROTATED)
        stale = last_used is None or now - last_used >= LAST_USED_INTERVAL
        if usable and stale and matches(self.store.pepper, key, row.secret_hash):
            self.store.touch(key_id, now)
        return _Entry(_KeyRow.of(row), read_at)

    def _remember(self, key_id: str, entry: _Entry) -> None:
        if len(self._cache) >= MAX_CACHED_KEYS:
            now = self._clock()
            # In place: forget() may run in a threadpool thread and must not pop from a replaced dict.
            for stale in [k for k, e in list(self._cache.items()) if now - e.read_at >= self._ttl]:
                self._cache.pop(stale, None)
            if len(self._cache) >= MAX_CACHED_KEYS:
                self._cache.clear()
        self._cache[key_id] = entry


def unauthorized(message: str) -> ApiError:
    """401 with the challenge header."""
    return ApiError(401, message, headers={"WWW-Authenticate": 'Bearer realm="longrun"'})


def require(principal: Principal, scope: Scope) -> Principal:
    """403 unless the key carries `scope`."""
    if scope.value not in principal.scopes:
        raise ApiError(
            403,
            f"this API key lacks the {scope.value!r} scope",
            details={"required_scope": scope.value, "key_scopes": sorted(principal.scopes)},
        )
    return principal
