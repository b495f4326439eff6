"""API keys of the caller's tenant: create (the key is shown once), list, get, rotate with a grace period, revoke.

Every route needs a key with the `admin` scope, and an admin manages only its own tenant's keys: another
tenant's key is a 404, as if it did not exist. Keys for another tenant (and the very first admin key) are made
with the server-side command, `python -m longrun_gateway keys create`.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlmodel import col, select

from longrun_common.apikeys import (
    DEFAULT_GRACE_SECONDS,
    ID_LENGTH,
    MAX_GRACE_SECONDS,
    MAX_LIFETIME_SECONDS,
    ApiKeyStore,
    KeyConflict,
    KeyNotFound,
    public_view,
)
from longrun_common.models import ApiKey

from ..deps import TEXT_PATTERN, AdminDep, GatewayDep, SessionDep, json_body
from ..errors import ApiError, not_found
from ..pagination import DEFAULT_LIMIT, MAX_LIMIT, page

router = APIRouter(prefix="/v1/admin/keys", tags=["api keys"])

_KEY_ID = re.compile(rf"[a-z0-9]{{{ID_LENGTH}}}")
ScopeName = Literal["jobs", "admin"]


# --- bodies and views (the views document the responses; handlers build plain dicts) -----------------------


def _default_scopes() -> list[ScopeName]:
    return ["jobs"]


class CreateKey(BaseModel):
    """`POST /v1/admin/keys`: a key for the caller's tenant."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=128, pattern=TEXT_PATTERN, description="for people: what uses it")
    scopes: list[ScopeName] = Field(default_factory=_default_scopes, min_length=1, max_length=2)
    expires_in: int | None = Field(None, ge=1, le=MAX_LIFETIME_SECONDS, description="seconds; null = never")


class RotateKey(BaseModel):
    """`POST /v1/admin/keys/{id}/rotate`: how long the old key keeps working, and the new key's lifetime."""

    model_config = ConfigDict(extra="forbid", strict=True)

    grace_seconds: int = Field(DEFAULT_GRACE_SECONDS, ge=0, le=MAX_GRACE_SECONDS)
    expires_in: int | None = Field(
        None, ge=1, le=MAX_LIFETIME_SECONDS, description="seconds; default: the old key's lifetime"
    )


class KeyView(BaseModel):
    """A key as listed: never the key, never its hash."""

    id: str
    tenant: str
    name: str
    scopes: list[str]
    prefix: str = Field(description="the key's first characters, `lr_<id>_`, to recognise it by")
    status: Literal["active", "rotated", "expired", "revoked"]
    created_at: datetime
    created_by: str | None
    last_used_at: datetime | None = Field(description="updated at most once a minute")
    expires_at: datetime | None
    revoked_at: datetime | None
    replaced_by: str | None
    grace_until: datetime | None


class CreatedKey(KeyView):
    """A new key: the only response that carries `key`."""

    key: str = Field(description="the API key; shown this once, store it now")


class RotatedKey(CreatedKey):
    """The successor key, and the key it replaces (valid until its `grace_until`)."""

    replaces: KeyView


class KeyPage(BaseModel):
    items: list[KeyView]
    next_cursor: str | None


class ErrorInfo(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorEnvelope(BaseModel):
    """Every error: `{"error": {"code", "message", "details"}}`."""

    error: ErrorInfo


_DESCRIPTIONS = {
    401: "missing, malformed, unknown, expired or revoked API key",
    403: "the API key lacks the `admin` scope",
    404: "no such key in the caller's tenant",
    409: "the key's state forbids this (already rotated, revoked or expired)",
    413: "body too large",
    422: "invalid input; `details` names each field",
    503: "the database is unavailable",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorEnvelope, "description": _DESCRIPTIONS[code]} for code in codes}


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"content": {"application/json": {"schema": model.model_json_schema()}}}}


CreateKeyDep = Annotated[CreateKey, Depends(json_body(CreateKey))]
RotateKeyDep = Annotated[RotateKey, Depends(json_body(RotateKey, allow_empty=True))]


def _store(gateway: GatewayDep) -> ApiKeyStore:
    return gateway.auth.store


def _checked_id(key_id: str) -> str:
    # Ids have one shape; anything else cannot exist (404, as for a foreign key), and is never echoed at length.
    if not _KEY_ID.fullmatch(key_id):
        raise not_found("api key", key_id[:64])
    return key_id


# --- routes --------------------------------------------------------------------------------------------------


@router.post(
    "",
    status_code=201,
    response_model=CreatedKey,
    openapi_extra={"requestBody": {"required": True, **_body(CreateKey)["requestBody"]}},
    responses=_errors(401, 403, 413, 422, 503),
)
def create_key(admin: AdminDep, gateway: GatewayDep, body: CreateKeyDep) -> JSONResponse:
    """A new key for the caller's tenant; the response carries the key, which is never shown again."""
    row, key = _store(gateway).create(
        admin.tenant, body.name, body.scopes, expires_in=body.expires_in, created_by=admin.key_id
    )
    location = {"Location": f"{router.prefix}/{row.id}"}
    return JSONResponse({**public_view(row), "key": key}, status_code=201, headers=location)


@router.get("", response_model=KeyPage, responses=_errors(401, 403, 422, 503))
def list_keys(
    admin: AdminDep,
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JSONResponse:
    """The tenant's keys (revoked and expired ones too, with their status), newest first."""
    statement = select(ApiKey).where(col(ApiKey.tenant) == admin.tenant)
    rows, next_cursor = page(session, statement, col(ApiKey.created_at), col(ApiKey.id), limit, cursor)
    return JSONResponse({"items": [public_view(row) for row in rows], "next_cursor": next_cursor})


# 422 is listed on the `{key_id}` routes only because FastAPI would otherwise document its own 422 shape there.
@router.get("/{key_id}", response_model=KeyView, responses=_errors(401, 403, 404, 422, 503))
def get_key(key_id: str, admin: AdminDep, gateway: GatewayDep) -> JSONResponse:
    """One of the tenant's keys."""
    try:
        return JSONResponse(public_view(_store(gateway).get(_checked_id(key_id), admin.tenant)))
    except KeyNotFound:
        raise not_found("api key", key_id) from None


@router.post(
    "/{key_id}/rotate",
    status_code=201,
    response_model=RotatedKey,
    openapi_extra=_body(RotateKey),
    responses=_errors(401, 403, 404, 409, 413, 422, 503),
)
def rotate_key(key_id: str, admin: AdminDep, gateway: GatewayDep, body: RotateKeyDep) -> JSONResponse:
    """A successor key (same name and scopes); the old one keeps working for `grace_seconds` (default 24 h)."""
    try:
        old, new, key = _store(gateway).rotate(
            _checked_id(key_id),
            admin.tenant,
            grace_seconds=body.grace_seconds,
            expires_in=body.expires_in,
            created_by=admin.key_id,
        )
    except KeyNotFound:
        raise not_found("api key", key_id) from None
    except KeyConflict as exc:
        raise ApiError(409, str(exc), details={"id": key_id}) from None
    gateway.auth.forget(old.id)
    return JSONResponse(
        {**public_view(new), "key": key, "replaces": public_view(old)},
        status_code=201,
        headers={"Location": f"{router.prefix}/{new.id}"},
    )


@router.post("/{key_id}/revoke", response_model=KeyView, responses=_errors(401, 403, 404, 422, 503))
def revoke_key(key_id: str, admin: AdminDep, gateway: GatewayDep) -> JSONResponse:
    """Revoke a key now (here at once; on other gateway replicas within `LONGRUN_API_KEY_CACHE_SECONDS`)."""
    try:
        row = _store(gateway).revoke(_checked_id(key_id), admin.tenant)
    except KeyNotFound:
        raise not_found("api key", key_id) from None
    gateway.auth.forget(row.id)
    return JSONResponse(public_view(row))
