"""Stream tokens: short-lived JWTs the gateway mints and the hub verifies without a database."""

from __future__ import annotations

import time
from dataclasses import dataclass

import jwt

ALGORITHM = "HS256"
AUDIENCE = "longrun-hub"


class TokenError(ValueError):
    """The token is missing, malformed, badly signed or expired."""


@dataclass(frozen=True)
class StreamScope:
    """What a verified token opens: one job of a tenant, or all of a tenant's jobs (`job_id` None)."""

    tenant: str
    job_id: str | None


def mint(secret: str, tenant: str, job_id: str | None, ttl_seconds: int) -> tuple[str, float]:
    """A signed token and its expiry (epoch seconds)."""
    issued = time.time()
    expires = issued + ttl_seconds
    claims = {
        "sub": tenant,
        "scope": f"job:{job_id}" if job_id else "tenant",
        "aud": AUDIENCE,
        "iat": int(issued),
        "exp": int(expires),
    }
    return jwt.encode(claims, secret, algorithm=ALGORITHM), expires


def verify(secret: str, token: str) -> StreamScope:
    """The scope a token grants, or TokenError saying why not."""
    if not token:
        raise TokenError("missing stream token")
    try:
        claims = jwt.decode(token, secret, algorithms=[ALGORITHM], audience=AUDIENCE, leeway=2,
                            options={"require": ["exp", "iat", "sub", "aud", "scope"]})
    except jwt.ExpiredSignatureError as exc:
        raise TokenError("stream token expired; ask the gateway for a new one") from exc
    except jwt.PyJWTError as exc:
        raise TokenError(f"invalid stream token: {exc}") from exc
    tenant, scope = claims.get("sub"), claims.get("scope", "")
    if not isinstance(tenant, str) or not isinstance(scope, str):
        raise TokenError("invalid stream token: missing subject or scope")
    if scope == "tenant":
        return StreamScope(tenant, None)
    if scope.startswith("job:") and len(scope) > 4:
        return StreamScope(tenant, scope[4:])
    raise TokenError(f"invalid stream token scope {scope!r}")
