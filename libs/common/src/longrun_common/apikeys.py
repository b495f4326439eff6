"""API keys in SQL: the key format, its keyed hash, and create / get / list / rotate / revoke.

A key reads `lr_<id>_<secret>`. The `id` (12 lowercase letters and digits) is public: it names the row, so
checking a key costs one primary-key read and one HMAC, never a scan. The `secret` is 43 base62 characters
(about 256 random bits). The row stores HMAC-SHA256(pepper, key) and never the key: a copy of the database alone
cannot confirm a guess. A slow hash (bcrypt, scrypt) protects low-entropy passwords; a 256-bit random secret
needs none, and a slow hash would give anyone who knows a key's public id a way to spend the gateway's CPU.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol, cast

from sqlalchemy import CursorResult, Engine, update
from sqlmodel import Session, col, select

from .models import ApiKey, utcnow
from .settings import Settings
from .tenantlimits import TENANT_NAME
from .views import iso

PREFIX = "lr"
ID_LENGTH = 12
SECRET_LENGTH = 43
_ID_ALPHABET = string.ascii_lowercase + string.digits
_SECRET_ALPHABET = string.ascii_letters + string.digits
_KEY = re.compile(rf"{PREFIX}_([a-z0-9]{{{ID_LENGTH}}})_[A-Za-z0-9]{{{SECRET_LENGTH}}}")
_NAME = re.compile(r"[^\x00-\x1f\x7f]{1,128}")

DEFAULT_GRACE_SECONDS = 24 * 3600
MAX_GRACE_SECONDS = 30 * 24 * 3600
MAX_LIFETIME_SECONDS = 10 * 365 * 24 * 3600
# Domain separation: the pepper derived from the token secret is never the token secret itself.
_PEPPER_LABEL = b"longrun api key pepper v1"


class Scope(StrEnum):
    """What a key may do: `jobs` is every /v1 route but key management; `admin` is /v1/admin/keys."""

    JOBS = "jobs"
    ADMIN = "admin"


DEFAULT_SCOPES: tuple[Scope, ...] = (Scope.JOBS,)


class KeyStatus(StrEnum):
    """A key's state at a moment; only `active` and `rotated` (inside its grace period) authenticate."""

    ACTIVE = "active"
    ROTATED = "rotated"
    EXPIRED = "expired"
    REVOKED = "revoked"


class KeyNotFound(LookupError):
    """No such key (or another tenant's, which looks the same)."""


class KeyConflict(ValueError):
    """The key is in a state that forbids the operation (rotating a revoked key, say)."""


class _Lifetime(Protocol):
    @property
    def expires_at(self) -> datetime | None: ...
    @property
    def revoked_at(self) -> datetime | None: ...
    @property
    def grace_until(self) -> datetime | None: ...
    @property
    def replaced_by(self) -> str | None: ...


# --- format and hash ---------------------------------------------------------------------------------------


def new_key() -> tuple[str, str]:
    """A fresh `(id, key)`."""
    key_id = "".join(secrets.choice(_ID_ALPHABET) for _ in range(ID_LENGTH))
    secret = "".join(secrets.choice(_SECRET_ALPHABET) for _ in range(SECRET_LENGTH))
    return key_id, f"{PREFIX}_{key_id}_{secret}"


def key_id_of(key: str) -> str | None:
    """The id of a well-formed key, or None (anything else is not a SQL key)."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def display_prefix(key_id: str) -> str:
    """What a listing shows so that a person can tell keys apart: `lr_<id>_…`."""
    return f"{PREFIX}_{key_id}_"


def pepper(settings: Settings) -> bytes:
    """The HMAC key: `LONGRUN_API_KEY_PEPPER`, else one derived from `LONGRUN_TOKEN_SECRET`."""
    if settings.api_key_pepper:
        return settings.api_key_pepper.encode()
    return hmac.new(settings.token_secret.encode(), _PEPPER_LABEL, hashlib.sha256).digest()


def digest(key_pepper: bytes, key: str) -> str:
    """The stored form of a key: hex HMAC-SHA256 over the whole key (id included, so rows cannot be swapped)."""
    return hmac.new(key_pepper, key.encode(), hashlib.sha256).hexdigest()


def matches(key_pepper: bytes, key: str, stored: str) -> bool:
    """Whether `key` hashes to `stored`, compared in constant time."""
    return hmac.compare_digest(digest(key_pepper, key).encode(), stored.encode())


def aware(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; they were written as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def status(key: _Lifetime, now: datetime | None = None) -> KeyStatus:
    """Whether `key` works at `now`: revoked and expired win over a rotation's grace period."""
    now = now or utcnow()
    if key.revoked_at is not None:
        return KeyStatus.REVOKED
    expires_at = aware(key.expires_at)
    if expires_at is not None and now >= expires_at:
        return KeyStatus.EXPIRED
    if key.replaced_by is not None:
        grace_until = aware(key.grace_until)
        return KeyStatus.ROTATED if grace_until is not None and now < grace_until else KeyStatus.EXPIRED
    return KeyStatus.ACTIVE


def public_view(row: ApiKey) -> dict[str, Any]:
    """A key as the API and the command show it: never the key, never its hash."""
    return {
        "id": row.id,
        "tenant": row.tenant,
        "name": row.name,
        "scopes": list(row.scopes),
        "prefix": display_prefix(row.id),
        "status": status(row).value,
        "created_at": iso(row.created_at),
        "created_by": row.created_by,
        "last_used_at": iso(row.last_used_at),
        "expires_at": iso(row.expires_at),
        "revoked_at": iso(row.revoked_at),
        "replaced_by": row.replaced_by,
        "grace_until": iso(row.grace_until),
    }


# --- validation (the API validates first; the command line relies on these) --------------------------------


def check_tenant(tenant: str) -> str:
    if not TENANT_NAME.fullmatch(tenant):
        raise ValueError(f"tenant {tenant!r}: use 1-64 letters, digits, '_', '-' or '.'")
    return tenant


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise ValueError("name: 1-128 characters, no control characters")
    return name


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """Known scopes, deduplicated, in a stable order; at least one."""
    wanted = set(scopes)
    unknown = sorted(wanted - {scope.value for scope in Scope})
    if unknown:
        raise ValueError(f"scopes: unknown {unknown}; allowed {[scope.value for scope in Scope]}")
    if not wanted:
        raise ValueError("scopes: at least one of " + ", ".join(scope.value for scope in Scope))
    return [scope.value for scope in Scope if scope.value in wanted]


def _check_seconds(field: str, value: float | None, low: float, high: float) -> timedelta | None:
    if value is None:
        return None
    if not low <= value <= high:
        raise ValueError(f"{field}: must be between {low:g} and {high:g} seconds, got {value:g}")
    return timedelta(seconds=value)


# --- the store -----------------------------------------------------------------------------------------------


@dataclass
class ApiKeyStore:
    """Create, read, rotate and revoke keys; `tenant=None` means any tenant (the server-side command only)."""

    engine: Engine
    pepper: bytes

    @classmethod
    def for_settings(cls, engine: Engine, settings: Settings) -> ApiKeyStore:
        return cls(engine, pepper(settings))

    def create(
        self,
        tenant: str,
        name: str,
        scopes: Iterable[str] = DEFAULT_SCOPES,
        *,
        expires_in: float | None = None,
        created_by: str | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key: the row and the key itself (shown once; only its hash is kept)."""
        lifetime = _check_seconds("expires_in", expires_in, 1, MAX_LIFETIME_SECONDS)
        row, key = self._new_row(check_tenant(tenant), check_name(name), check_scopes(scopes), lifetime, created_by)
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(row)
            session.commit()
        return row, key

    def get(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """One key; another tenant's key is not found."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(ApiKey, key_id)
        if row is None or (tenant is not None and row.tenant != tenant):
            raise KeyNotFound(key_id)
        return row

    def list_keys(self, tenant: str | None = None) -> Sequence[ApiKey]:
        """Every key (of one tenant), newest first."""
        statement = select(ApiKey)
        if tenant is not None:
            statement = statement.where(col(ApiKey.tenant) == tenant)
        statement = statement.order_by(col(ApiKey.created_at).desc(), col(ApiKey.id).desc())
        with Session(self.engine, expire_on_commit=False) as session:
            return session.exec(statement).all()

    def rotate(
        self,
        key_id: str,
        tenant: str | None = None,
        *,
        grace_seconds: float = DEFAULT_GRACE_SECONDS,
        expires_in: float | None = None,
        created_by: str | None = None,
    ) -> tuple[ApiKey, ApiKey, str]:
        """A successor with the same tenant, name and scopes; the old key works for `grace_seconds` more.

        Without `expires_in`, the successor gets the old key's lifetime (none if it had none). Returns the old
        row, the new row and the new key.
        """
        grace = _check_seconds("grace_seconds", grace_seconds, 0, MAX_GRACE_SECONDS) or timedelta(0)
        lifetime = _check_seconds("expires_in", expires_in, 1, MAX_LIFETIME_SECONDS)
        old = self.get(key_id, tenant)
        state = status(old)
        if state is not KeyStatus.ACTIVE:
            hint = f"; rotate its replacement {old.replaced_by}" if old.replaced_by else "; create a new key"
            raise KeyConflict(f"key {key_id} is {state.value} and cannot be rotated{hint}")
        old_expiry, old_created = aware(old.expires_at), aware(old.created_at)
        if lifetime is None and old_expiry is not None and old_created is not None:
            lifetime = old_expiry - old_created
        new, key = self._new_row(old.tenant, old.name, old.scopes, lifetime, created_by)
        grace_until = utcnow() + grace
        with Session(self.engine, expire_on_commit=False) as session:
            # One conditional UPDATE decides a race between two rotations (or a rotation and a revocation).
            claimed = cast(CursorResult[Any], session.execute(
                update(ApiKey)
                .where(
                    col(ApiKey.id) == key_id,
                    col(ApiKey.replaced_by).is_(None),
                    col(ApiKey.revoked_at).is_(None),
                )
                .values(replaced_by=new.id, grace_until=grace_until)
            ))
            if claimed.rowcount != 1:
                session.rollback()
                raise KeyConflict(f"key {key_id} was rotated or revoked concurrently")
            session.add(new)
            session.commit()
        old.replaced_by, old.grace_until = new.id, grace_until
        return old, new, key

    def revoke(self, key_id: str, tenant: str | None = None) -> ApiKey:
        """Revoke a key at once (revoking it again changes nothing)."""
        with Session(self.engine, expire_on_commit=False) as session:
            row = session.get(ApiKey, key_id)
            if row is None or (tenant is not None and row.tenant != tenant):
                raise KeyNotFound(key_id)
            if row.revoked_at is None:
                row.revoked_at = utcnow()
                session.add(row)
                session.commit()
            return row

    def lookup(self, key_id: str) -> ApiKey | None:
        """The row of a presented key's id (the gateway checks its hash and status)."""
        with Session(self.engine, expire_on_commit=False) as session:
            return session.get(ApiKey, key_id)

    def touch(self, key_id: str, at: datetime) -> None:
        """Record use; callers throttle this (one write per key per interval, not one per request)."""
        with Session(self.engine) as session:
            session.execute(update(ApiKey).where(col(ApiKey.id) == key_id).values(last_used_at=at))
            session.commit()

    def _new_row(
        self, tenant: str, name: str, scopes: list[str], lifetime: timedelta | None, created_by: str | None
    ) -> tuple[ApiKey, str]:
        key_id, key = new_key()
        now = utcnow()
        row = ApiKey(
            id=key_id,
            tenant=tenant,
            name=name,
            scopes=list(scopes),
            secret_hash=digest(self.pepper, key),
            created_by=created_by,
            created_at=now,
            expires_at=now + lifetime if lifetime is not None else None,
        )
        return row, key
