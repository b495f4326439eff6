"""The one error shape, `{"error": {"code", "message", "details"}}`, and the handlers that produce it."""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import kombu.exceptions
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.routing import Match

from .contract import allow_header

log = logging.getLogger(__name__)

CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "rate_limited",
    499: "client_closed_request",
    500: "internal_error",
    503: "unavailable",
}

# Exceptions that mean a dependency is down (not that the request was bad).
REDIS_DOWN: tuple[type[Exception], ...] = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.BusyLoadingError,
    kombu.exceptions.OperationalError,
)
DATABASE_DOWN: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


class ApiError(StarletteHTTPException):
    """An error the client can act on; rendered as the standard envelope."""

    def __init__(
        self,
        status_code: int,
        message: str,
        *,
        code: str | None = None,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(status_code, message, dict(headers) if headers else None)
        self.code = code or CODES.get(status_code, "error")
        self.message = message
        self.details = details


class ErrorJSONResponse(JSONResponse):
    """ASCII-escaped JSON: an error may echo client input, and that must never break the error itself."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(
    status_code: int, code: str, message: str, details: Any = None, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The envelope every error uses."""
    body = {"error": {"code": code, "message": message, "details": details}}
    return ErrorJSONResponse(body, status_code=status_code, headers=dict(headers) if headers else None)


def not_found(kind: str, ident: str) -> ApiError:
    """404 for a missing resource; a foreign tenant's resource gets exactly this too."""
    return ApiError(404, f"{kind} {ident!r} not found", details={"kind": kind, "id": ident})


def invalid(field: str, message: str, *, value: Any = None, **extra: Any) -> ApiError:
    """422 naming the field: `field: message`."""
    detail: dict[str, Any] = {"field": field, "message": message}
    if value is not None:
        detail["value"] = _jsonable(value)
    detail.update(extra)
    return ApiError(422, f"{field}: {message}", details=[detail])


def invalid_many(problems: Sequence[Mapping[str, Any]]) -> ApiError:
    """422 for several field problems; the message lists them all."""
    message = "; ".join(f"{p['field']}: {p['message']}" for p in problems)
    return ApiError(422, message, details=[dict(p) for p in problems])


def field_path(loc: Iterable[Any], *, root: str | None = None) -> str:
    """`("args", "items", 2, "x")` → `args.items[2].x`."""
    text = root or ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text = f"{text}.{part}" if text else str(part)
    return text or "body"


def pydantic_problems(errors: Iterable[Mapping[str, Any]], *, strip_source: bool) -> list[dict[str, Any]]:
    """Pydantic/FastAPI errors → `[{"field", "message", "value"?}]`; drops the `query`/`path`/`body` prefix."""
    problems = []
    for error in errors:
        loc = list(error.get("loc", ()))
        if strip_source and loc and loc[0] in {"query", "path", "body", "header", "cookie"}:
            loc = loc[1:]
        problem: dict[str, Any] = {"field": field_path(loc), "message": str(error.get("msg", "invalid value"))}
        if error.get("type") not in {"missing", "extra_forbidden"} and "input" in error:
            problem["value"] = _jsonable(error["input"])
        problems.append(problem)
    return problems or [{"field": "body", "message": "invalid request"}]


def _jsonable(value: Any) -> Any:
    """A value safe to echo in JSON: short, finite, plain."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if value is None or isinstance(value, int | float | bool):
        return value
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "…"
    return repr(value)[:200]


# --- handlers --------------------------------------------------------------------------------------------


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 405:
        # Starlette's `Allow` names only the first route of the path (POST of /v1/jobs); list them all.
        allow = allow_header(_path_methods(request))
        if request.method == "OPTIONS":
            return Response(status_code=204, headers={"Allow": allow})
        message = f"{request.method} is not allowed here; allowed: {allow}"
        return error_response(405, CODES[405], message, {"allowed": allow.split(", ")}, {"Allow": allow})
    if isinstance(exc, ApiError):
        return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)
    code = CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(exc.status_code, code, message, None, exc.headers)


_PROBED_METHODS = ("GET", "PUT", "POST", "DELETE", "PATCH", "HEAD")


def _path_methods(request: Request) -> set[str]:
    """The methods some route fully matches for this path (asked of the router: included routers nest)."""
    routes = request.app.router.routes
    return {
        method
        for method in _PROBED_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    }


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    error = invalid_many(pydantic_problems(exc.errors(), strip_source=True))
    return error_response(422, error.code, error.message, error.details)


async def _redis_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("redis unavailable: %s", exc)
    return error_response(
        503, "unavailable", "redis is unavailable; retry shortly", {"dependency": "redis"}, {"Retry-After": "1"}
    )


async def _database_down(_: Request, exc: Exception) -> JSONResponse:
    log.warning("database unavailable: %s", exc)
    return error_response(
        503,
        "unavailable",
        "the database is unavailable; retry shortly",
        {"dependency": "database"},
        {"Retry-After": "1"},
    )


async def _data_error(_: Request, exc: Exception) -> JSONResponse:
    # The database refused a value (a safety net: inputs are validated before they get this far).
    log.warning("database rejected a value: %s", exc)
    return error_response(422, "validation_error", "a value in the request cannot be stored or compared", None)


async def _client_gone(request: Request, _: Exception) -> JSONResponse:
    # The client hung up while sending its body: nothing went wrong here and nobody will read an answer.
    # 499 (nginx's "client closed request") keeps it out of the 5xx counts; the server drops the response.
    log.info("client disconnected during %s %s", request.method, request.url.path)
    return error_response(499, "client_closed_request", "the client closed the connection", None)


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # A real bug: log everything, tell the client nothing about internals.
    log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
    return error_response(500, "internal_error", "internal server error", None)


def install_error_handlers(app: FastAPI) -> None:
    """Route every error the gateway can raise to the envelope with the right status."""
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    for redis_exc in REDIS_DOWN:
        app.add_exception_handler(redis_exc, _redis_down)
    for db_exc in DATABASE_DOWN:
        app.add_exception_handler(db_exc, _database_down)
    app.add_exception_handler(sa_exc.DataError, _data_error)
    app.add_exception_handler(ClientDisconnect, _client_gone)
    app.add_exception_handler(Exception, _internal_error)
