"""Stream tokens on hub requests: `?token=` or `Authorization: Bearer`, verified without a database."""

from __future__ import annotations

from collections.abc import Iterable

from longrun_common.tokens import StreamScope, TokenError, verify


def token_from(query: dict[str, list[str]], headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The token of a request: the query parameter wins over the header (browsers cannot set WS headers)."""
    values = query.get("token")
    if values and values[0]:
        return values[0]
    for name, value in headers:
        if name.lower() == b"authorization":
            scheme, _, credentials = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer":
                return credentials.strip()
    return ""


def authorize(secret: str, token: str, job_id: str | None) -> StreamScope:
    """The token's scope; TokenError (→ 4401) when it is missing, bad or expired.

    A job-scoped token asked for another job raises PermissionError (→ 4403) before Redis is read; the
    tenant is checked against the job's hash once it is read.
    """
    scope = verify(secret, token)
    if job_id is not None and scope.job_id is not None and scope.job_id != job_id:
        raise PermissionError("stream token is for another job")
    return scope


__all__ = ["StreamScope", "TokenError", "authorize", "token_from"]
