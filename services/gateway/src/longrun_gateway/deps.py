"""Dependency aliases: the one place handlers get clients, the tenant and request bodies from.

Dependencies that do no blocking I/O are `async def`: FastAPI runs a plain `def` dependency in the threadpool,
and a hop per dependency costs more than the work. Blocking work (SQL, the sync Redis client) stays in `def`
handlers and dependencies, which run in the threadpool.
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Generic, TypeVar, cast

from fastapi import Depends, Header, Request
from pydantic import BaseModel, ValidationError
from sqlmodel import Session

from longrun_common.apikeys import Scope
from longrun_common.jobs import JobStore
from longrun_common.settings import Settings

from .auth import Principal, require
from .errors import field_path, invalid, invalid_many, pydantic_problems
from .state import Gateway

M = TypeVar("M", bound=BaseModel)

MAX_JSON_DEPTH = 64


async def get_gateway(request: Request) -> Gateway:
    return cast(Gateway, request.state.gateway)


GatewayDep = Annotated[Gateway, Depends(get_gateway)]


async def get_settings(gateway: GatewayDep) -> Settings:
    return gateway.settings


def get_session(gateway: GatewayDep) -> Iterator[Session]:
    with Session(gateway.engine) as session:
        yield session


async def get_store(gateway: GatewayDep) -> JobStore:
    return gateway.store


SettingsDep = Annotated[Settings, Depends(get_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
StoreDep = Annotated[JobStore, Depends(get_store)]


async def get_principal(request: Request, gateway: GatewayDep) -> Principal:
    """The caller behind `Authorization: Bearer <key>` (a bootstrap or SQL key), or 401."""
    return await gateway.auth.authenticate(request.headers.get("authorization", ""))


async def get_tenant(request: Request, gateway: GatewayDep) -> str:
    """The tenant of the request's API key, which must carry the `jobs` scope (401 / 403)."""
    return require(await get_principal(request, gateway), Scope.JOBS).tenant


async def get_admin(request: Request, gateway: GatewayDep) -> Principal:
    """The caller of a key-management route: a key with the `admin` scope (401 / 403)."""
    return require(await get_principal(request, gateway), Scope.ADMIN)


TenantDep = Annotated[str, Depends(get_tenant)]
AdminDep = Annotated[Principal, Depends(get_admin)]


KeyHeader = Annotated[str | None, Header(alias="Idempotency-Key")]
HiddenKeyHeader = Annotated[str | None, Header(alias="Idempotency-Key", include_in_schema=False)]


@dataclass(frozen=True)
class Submission(Generic[M]):
    """What a submit route needs, resolved by one dependency (see `submission`)."""

    gateway: Gateway
    tenant: str
    body: M
    idempotency_key: str | None


def submission(model: type[M], *, document_key: bool = True) -> Callable[..., Awaitable[Submission[M]]]:
    """The one dependency of a submit route: `resolve_submission` with the body parsed as `model`.

    The checks of TenantDep and json_body, in one dependency: FastAPI's per-request cost grows with each
    dependency it resolves. (`POST /v1/jobs`, the hottest request, calls `resolve_submission` itself.)
    """
    parse = json_body(model)

    # Two spellings of one dependency: FastAPI reads the header's declaration from a module-level annotation.
    if document_key:

        async def resolve(request: Request, idempotency_key: KeyHeader = None) -> Submission[M]:
            return await resolve_submission(request, parse, idempotency_key)

        return resolve

    async def resolve_hidden(request: Request, idempotency_key: HiddenKeyHeader = None) -> Submission[M]:
        return await resolve_submission(request, parse, idempotency_key)

    return resolve_hidden


async def resolve_submission(
    request: Request, parse: Callable[[Request], Awaitable[M]], idempotency_key: str | None
) -> Submission[M]:
    """Auth (401/403), then the tenant's rate limit (`LONGRUN_TENANT_RATE_LIMIT`, 429), then the body (422)."""
    gateway = cast(Gateway, request.state.gateway)
    principal = await gateway.auth.authenticate(request.headers.get("authorization", ""))
    tenant = require(principal, Scope.JOBS).tenant
    await gateway.limiter.enforce(tenant)
    return Submission(gateway, tenant, await parse(request), idempotency_key)


# Free text in query strings (filters): no control characters, which no database column holds.
TEXT_PATTERN = r"^[^\x00-\x1f\x7f]*$"


def json_body(model: type[M], *, allow_empty: bool = False) -> Callable[[Request], Awaitable[M]]:
    """A dependency that parses the body as `model`, with 422s that name the field.

    Declared after TenantDep in a handler, so an unauthenticated request gets 401 before any body error.
    """

    async def parse(request: Request) -> M:
        raw = await request.body()  # the body-limit middleware raises 413 while this streams in
        if not raw.strip():
            if allow_empty:
                return model()
            raise invalid("body", "a JSON object is required")
        data = parse_json(raw)
        if not isinstance(data, dict):
            raise invalid("body", f"must be a JSON object, got {type(data).__name__}")
        try:
            return model.model_validate(data, strict=True)
        except ValidationError as exc:
            raise invalid_many(pydantic_problems(exc.errors(), strip_source=False)) from None

    return parse


def parse_json(raw: bytes) -> Any:
    """Strict JSON: UTF-8, finite numbers, storable strings, nesting at most MAX_JSON_DEPTH."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite_float)
    except UnicodeDecodeError:
        raise invalid("body", "must be UTF-8 encoded JSON") from None
    except json.JSONDecodeError as exc:
        raise invalid("body", f"invalid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except ValueError as exc:
        raise invalid("body", f"invalid JSON: {exc}") from None
    except RecursionError:
        raise invalid("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels") from None
    _check_tree(data)
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400 parses to inf, which neither JSON nor the database can hold
        raise ValueError(f"number {text[:50]} is out of range")
    return value


def _check_tree(value: Any) -> None:
    """Depth and string checks, iteratively (no recursion on hostile input); problems name their path."""
    stack: list[tuple[Any, tuple[str | int, ...]]] = [(value, ())]
    while stack:
        item, path = stack.pop()
        if isinstance(item, str):
            _check_text(item, path)
        elif isinstance(item, dict | list):
            if len(path) >= MAX_JSON_DEPTH:
                raise invalid("body", f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(item, dict):
                for key, child in item.items():
                    _check_text(key, (*path, key))
                    stack.append((child, (*path, key)))
            else:
                stack.extend((child, (*path, index)) for index, child in enumerate(item))


def _check_text(text: str, path: tuple[str | int, ...]) -> None:
    # A lone surrogate cannot be encoded as UTF-8 and PostgreSQL cannot store NUL: refuse both up front.
    if "\x00" in text:
        raise invalid(field_path(path), "text must not contain NUL (\\u0000) characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        printable = [p.encode("utf-8", "backslashreplace").decode() if isinstance(p, str) else p for p in path]
        raise invalid(field_path(printable), "text contains an unpaired surrogate (invalid Unicode)") from None
