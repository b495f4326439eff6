"""Settings for every Longrun process, read from `LONGRUN_*` environment variables."""

from __future__ import annotations

import re
from functools import cached_property
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .strength import weakness
from .tenantlimits import TENANT_NAME, TenantLimit, parse_tenant_limits

DEV_API_KEYS = "dev:dev-key"
DEV_TOKEN_SECRET = "longrun-dev-token-secret-change-me-in-production"
# Queue names become Redis keys, Celery queue names and SQL values (the chart's KEDA query quotes them).
QUEUE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


class Settings(BaseSettings):
    """One name per setting, as the README's Configuration section lists them; extras are Longrun-internal tuning."""

    model_config = SettingsConfigDict(env_prefix="LONGRUN_", extra="ignore")

    env: Literal["development", "production"] = "development"
    redis_url: str = "redis://127.0.0.1:6379/0"
    # The Celery broker (its queues) may be a Redis of its own, sized and failed over apart from the event bus.
    broker_url: str = Field("", description="Redis for the Celery broker; empty = LONGRUN_REDIS_URL")
    database_url: str = "sqlite:///./var/longrun.db"
    api_keys: str = ""
    token_secret: str = ""
    gateway_port: int = 8000
    hub_port: int = 8001
    hub_public_url: str = "http://127.0.0.1:8001"
    storage_dir: str = "./var/files"

    # Internal tuning (documented in the README; safe defaults).
    key_prefix: str = Field("longrun", description="prefix of every Redis key and Celery queue Longrun owns")
    stream_maxlen: int = Field(1000, ge=10, description="events kept per job stream for replay")
    event_ttl_seconds: int = Field(7 * 24 * 3600, ge=60, description="how long a finished job's events live")
    progress_interval: float = Field(0.05, ge=0, le=10, description="reporter coalescing interval, seconds")
    sql_progress_interval: float = Field(1.0, ge=0, description="how often progress reaches SQL, seconds")
    token_ttl_seconds: int = Field(3600, ge=10, le=7 * 24 * 3600)
    max_body_bytes: int = Field(1024 * 1024, ge=1024, description="largest JSON request body")
    max_upload_bytes: int = Field(512 * 1024 * 1024, ge=1024, description="largest uploaded file")
    long_poll_max_seconds: float = Field(60.0, gt=0)
    lease_seconds: float = Field(10.0, gt=0, description="a running job's lease; renewed by reports")
    visibility_timeout: int = Field(24 * 3600 + 600, description="above the longest allowed job")
    # Recycling guards against leaks in task code, but a new pool process costs ~0.1 s of the worker's CPU plus its
    # own start (connections, caches): every 200 tasks that was a sixth of a fan-out's worker CPU. 1,000 is the
    # value Celery's own guides and the tutorial this project started from use.
    worker_max_tasks_per_child: int = Field(1000, ge=1, description="a worker pool process is replaced after this "
                                                                     "many tasks")
    default_queue: str = "default"
    # Routing: the queues that exist and that some worker set consumes; a job for any other queue is refused
    # at submit (422), so a queue served by workers this configuration does not start is listed here too.
    queues: str = Field("default,high,low", description="the queues that exist (tasks declare one; jobs may name "
                        "another); comma-separated")
    worker_queues: str = Field("", description="the queues this worker consumes (a subset of queues); empty = all")
    bind_host: str = Field("127.0.0.1", description="address the gateway and hub listen on")
    header_timeout_seconds: float = Field(
        10.0, gt=0, description="gateway and hub: a client's request headers must arrive within this (else 408)"
    )
    idempotency_ttl_seconds: int = Field(24 * 3600, ge=60, description="how long an Idempotency-Key holds")
    cancel_grace_seconds: float = Field(10.0, ge=0, description="after this a running job is cancelled by force")
    drain_seconds: float = Field(20.0, ge=0, description="on SIGTERM, running jobs get this long to finish")
    tenant_rate_limit: float = Field(0.0, ge=0, description="submissions per second per tenant, 0 = unlimited")
    # Fairness between tenants (longrun_common.fairness): jobs wait in per-tenant lists and are moved onto the
    # Celery queue round robin, a few at a time, so one tenant's backlog never delays another's jobs.
    fair_window: int = Field(
        2, ge=0, le=10_000, description="jobs kept ready on each Celery queue by the fair scheduler; 0 = plain FIFO"
    )
    tenant_concurrency: int = Field(0, ge=0, description="running jobs at once per tenant, 0 = unlimited")
    tenant_limits: str = Field(
        "", description="per-tenant overrides, e.g. `acme:concurrency=5:rate=20,beta:concurrency=2`"
    )
    # API keys in SQL (longrun_common.apikeys): the hash key, and how long a gateway trusts what it read.
    api_key_pepper: str = Field("", description="keys the stored API-key hashes; empty = derived from token_secret")
    api_key_cache_seconds: float = Field(
        5.0, ge=0, le=300, description="a gateway re-reads a SQL key this often: the delay before a revocation bites"
    )
    maintenance: bool = Field(True, description="run the reaper and reconciler in this gateway / worker")
    migrate_on_start: bool = Field(
        True, description="gateway and worker migrate the database at start; false: they wait for the schema"
    )
    reaper_interval: float = Field(1.0, gt=0, description="how often the reaper looks for expired leases")
    worker_metrics_port: int = Field(0, ge=0, le=65535, description="worker /metrics port; 0 = not served")
    # Progress hub (longrun_hub): per-client backpressure, keepalive, lifetime and Redis reconnects.
    hub_queue_size: int = Field(64, ge=1, description="frames queued for one client before progress is coalesced")
    hub_queue_limit: int = Field(1024, ge=2, description="frames queued for one client before it is closed (1013)")
    hub_send_timeout: float = Field(10.0, gt=0, description="a client that accepts nothing this long is closed (1013)")
    hub_ping_interval: float = Field(20.0, ge=0, description="WebSocket ping / SSE comment interval; 0 = off")
    hub_ping_timeout: float = Field(20.0, gt=0, description="a WebSocket that does not answer a ping is dropped")
    hub_max_connection_seconds: float = Field(
        3600.0, ge=0, description="connection lifetime (±10% jitter) before a reconnect hint; 0 = unlimited"
    )
    hub_shutdown_grace: float = Field(5.0, ge=0, description="on SIGTERM, clients get this long to leave")
    hub_max_subscriptions: int = Field(1000, ge=1, description="jobs one multiplexed socket may watch at once")
    hub_subscribe_timeout: float = Field(5.0, gt=0, description="wait for Redis to confirm a subscription")
    hub_redis_backoff_min: float = Field(0.05, gt=0, description="first pub/sub reconnect delay, seconds")
    hub_redis_backoff_max: float = Field(2.0, gt=0, description="cap of the pub/sub reconnect delay, seconds")
    hub_redis_health_interval: float = Field(5.0, gt=0, description="PING on the pub/sub connection this often")
    hub_redis_pool_size: int = Field(64, ge=2, description="Redis connections for snapshot and replay reads")

    @field_validator("hub_public_url")
    @classmethod
    def _strip_slash(cls, value: str) -> str:
        return value.rstrip("/")

    @model_validator(mode="after")
    def _dev_defaults(self) -> Settings:
        if self.env == "production":
            self._check_production_secrets()
        else:
            self.api_keys = self.api_keys or DEV_API_KEYS
            self.token_secret = self.token_secret or DEV_TOKEN_SECRET
        _ = self.tenant_by_key  # parse now so a malformed value fails at start-up, not on first request
        return self

    @model_validator(mode="after")
    def _queues_valid(self) -> Settings:
        """Malformed or inconsistent queue lists fail at start-up, naming the setting to fix."""
        _ = self.consumed_queues
        return self

    @model_validator(mode="after")
    def _tenant_limits_valid(self) -> Settings:
        overrides = self.tenant_overrides  # parse now: a typo stops the process at start with its entry named
        limited = self.tenant_concurrency > 0 or any(limit.concurrency for limit in overrides.values())
        if limited and self.fair_window == 0:
            raise ValueError("LONGRUN_TENANT_CONCURRENCY and concurrency= in LONGRUN_TENANT_LIMITS need the fair "
                             "scheduler: set LONGRUN_FAIR_WINDOW above 0")
        return self

    @model_validator(mode="after")
    def _api_key_pepper_strength(self) -> Settings:
        # Empty means "derived from the token secret", which production already requires to be strong.
        if self.api_key_pepper and len(self.api_key_pepper) < 32:
            raise ValueError("LONGRUN_API_KEY_PEPPER must be at least 32 characters (or unset)")
        return self

    def _check_production_secrets(self) -> None:
        """Every key and the token secret must be a real, strong secret; errors name the entry, never the value."""
        # Empty LONGRUN_API_KEYS is fine: production keys live hashed in SQL (`python -m longrun_gateway keys`).
        if self.api_keys == DEV_API_KEYS:
            raise ValueError("LONGRUN_API_KEYS must not be the development value when LONGRUN_ENV=production")
        if not self.token_secret or self.token_secret == DEV_TOKEN_SECRET:
            raise ValueError("LONGRUN_TOKEN_SECRET must be set to a real secret when LONGRUN_ENV=production")
        for key, tenant in self.tenant_by_key.items():
            problem = weakness(key)
            if problem:
                raise ValueError(
                    f"LONGRUN_API_KEYS: the key of tenant {tenant!r} {problem} (LONGRUN_ENV=production; "
                    f"generate one with `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
                )
        problem = weakness(self.token_secret)
        if problem:
            raise ValueError(f"LONGRUN_TOKEN_SECRET {problem} (LONGRUN_ENV=production)")
        if self.token_secret in self.tenant_by_key:
            raise ValueError("LONGRUN_TOKEN_SECRET must not also be an API key (LONGRUN_ENV=production)")
        problem = weakness(self.api_key_pepper) if self.api_key_pepper else None
        if problem:
            raise ValueError(f"LONGRUN_API_KEY_PEPPER {problem} (LONGRUN_ENV=production)")

    @cached_property
    def tenant_by_key(self) -> dict[str, str]:
        """API key → tenant, parsed from `tenant:key[,tenant:key…]`."""
        result: dict[str, str] = {}
        for item in filter(None, (part.strip() for part in self.api_keys.split(","))):
            tenant, sep, key = (part.strip() for part in item.partition(":"))
            if not sep or not tenant or not key:
                raise ValueError(f"LONGRUN_API_KEYS entry {item!r} is not of the form tenant:key")
            if not TENANT_NAME.fullmatch(tenant):
                raise ValueError(f"LONGRUN_API_KEYS tenant {tenant!r}: use 1-64 letters, digits, '_', '-' or '.'")
            result[key] = tenant
        return result

    @property
    def queue_names(self) -> tuple[str, ...]:
        """LONGRUN_QUEUES as a tuple, in the given order, each name checked."""
        return _queue_list("LONGRUN_QUEUES", self.queues) or _fail("LONGRUN_QUEUES must name at least one queue")

    @property
    def consumed_queues(self) -> tuple[str, ...]:
        """The queues a worker started with these settings consumes: LONGRUN_WORKER_QUEUES, else every queue."""
        chosen = _queue_list("LONGRUN_WORKER_QUEUES", self.worker_queues)
        unknown = [name for name in chosen if name not in self.queue_names]
        if unknown:
            raise ValueError(f"LONGRUN_WORKER_QUEUES names {', '.join(map(repr, unknown))}, not in LONGRUN_QUEUES "
                             f"({', '.join(self.queue_names)})")
        return chosen or self.queue_names

    @property
    def tenant_overrides(self) -> dict[str, TenantLimit]:
        """tenant → its limits from LONGRUN_TENANT_LIMITS (longrun_common.tenantlimits); parsed on each use (a few
        times per process), so a `model_copy(update=…)` never sees a stale value."""
        return parse_tenant_limits(self.tenant_limits)

    def tenant_concurrency_limits(self) -> dict[str, int]:
        """tenant → running jobs at once, for tenants whose limit is not the default."""
        return {t: lim.concurrency for t, lim in self.tenant_overrides.items() if lim.concurrency is not None}

    def tenant_rates(self) -> dict[str, float]:
        """tenant → submissions per second, for tenants whose rate is not the default."""
        return {t: lim.rate for t, lim in self.tenant_overrides.items() if lim.rate is not None}

    @property
    def celery_broker_url(self) -> str:
        """The broker's Redis: LONGRUN_BROKER_URL, or the event bus's when unset."""
        return self.broker_url or self.redis_url

    @property
    def sqlalchemy_url(self) -> str:
        """The database URL with the psycopg3 driver spelled out for PostgreSQL."""
        url = self.database_url
        for plain in ("postgresql://", "postgres://"):
            if url.startswith(plain):
                return "postgresql+psycopg://" + url[len(plain) :]
        return url


def _queue_list(setting: str, value: str) -> tuple[str, ...]:
    """Comma-separated queue names, blanks and repeats dropped; ValueError naming the setting on a bad name."""
    names = list(dict.fromkeys(filter(None, (part.strip() for part in value.split(",")))))
    for name in names:
        if not QUEUE_NAME.fullmatch(name):
            raise ValueError(f"{setting}: queue {name!r}: use 1-64 letters, digits, '_', '-' or '.'")
    return tuple(names)


def _fail(message: str) -> tuple[str, ...]:
    raise ValueError(message)
