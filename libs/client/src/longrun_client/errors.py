"""Exceptions: every refusal of the API becomes an `ApiError` carrying its status, code, message and details."""

from __future__ import annotations

from typing import Any

import httpx


class LongrunError(Exception):
    """Base of every error this SDK raises."""


class ApiError(LongrunError):
    """The API answered with an error: `{"error": {"code", "message", "details"}}` and an HTTP status."""

    status: int = 0

    def __init__(self, status: int, code: str, message: str, details: Any = None,
                 retry_after: float | None = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.details = details
        self.retry_after = retry_after


class Unauthorized(ApiError):
    """401: no key, a bad key, an expired or revoked key (or a stream token that is no longer valid)."""


class Forbidden(ApiError):
    """403: the key lacks the route's scope."""


class NotFound(ApiError):
    """404: unknown resource, or another tenant's."""


class Conflict(ApiError):
    """409: e.g. an idempotency key reused with another body, or a job that cannot be requeued."""


class PayloadTooLarge(ApiError):
    """413: the body (or the uploaded file) is too large."""


class InvalidInput(ApiError):
    """422: the message names the field to fix."""


class RateLimited(ApiError):
    """429: slow down; `retry_after` says for how long."""


class Unavailable(ApiError):
    """503: a dependency of the server (Redis, the database, the task catalog) is down; retry later."""


class ConnectionFailed(LongrunError):
    """The server could not be reached (after the retries)."""


_BY_STATUS: dict[int, type[ApiError]] = {
    401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: PayloadTooLarge, 422: InvalidInput,
    429: RateLimited, 503: Unavailable,
}


def retry_after(response: httpx.Response) -> float | None:
    """`Retry-After` in seconds (the delta form; an HTTP date is treated as absent)."""
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def from_response(response: httpx.Response) -> ApiError:
    """The exception for an error response, whatever its body (a proxy's HTML page still gives a clear error)."""
    code, message, details = f"http_{response.status_code}", response.reason_phrase or "error", None
    try:
        body = response.json()
    except ValueError:
        text = response.text.strip()
        if text:
            message = text[:300]
    else:
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = str(error.get("code", code))
            message = str(error.get("message", message))
            details = error.get("details")
    cls = _BY_STATUS.get(response.status_code, ApiError)
    return cls(response.status_code, code, message, details, retry_after(response))


def from_close(code: int, reason: str) -> ApiError:
    """The exception for a refusal by the progress hub (WebSocket close codes 44xx)."""
    status = code - 4000 if 4400 <= code < 4500 else 500
    cls = _BY_STATUS.get(status, ApiError)
    return cls(status, f"ws_{code}", reason or f"closed with {code}")
