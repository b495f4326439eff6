"""Stream tokens: scope, expiry, and tampering."""

from __future__ import annotations

import time

import jwt
import pytest

from longrun_common.tokens import ALGORITHM, AUDIENCE, StreamScope, TokenError, mint, verify

pytestmark = pytest.mark.unit
SECRET = "s" * 40


def test_job_and_tenant_scopes_round_trip() -> None:
    token, expires = mint(SECRET, "acme", "job-1", 60)
    assert verify(SECRET, token) == StreamScope("acme", "job-1")
    assert expires > time.time()
    assert verify(SECRET, mint(SECRET, "acme", None, 60)[0]) == StreamScope("acme", None)


def test_expired_forged_and_incomplete_tokens_are_refused() -> None:
    with pytest.raises(TokenError, match="expired"):
        verify(SECRET, mint(SECRET, "acme", "j", -10)[0])
    with pytest.raises(TokenError, match="invalid"):
        verify("another-secret-of-enough-length-000000", mint(SECRET, "acme", "j", 60)[0])
    with pytest.raises(TokenError, match="missing"):
        verify(SECRET, "")
    now = int(time.time())
    no_exp = jwt.encode({"sub": "acme", "scope": "tenant", "aud": AUDIENCE, "iat": now}, SECRET, algorithm=ALGORITHM)
    with pytest.raises(TokenError, match="exp"):
        verify(SECRET, no_exp)
    odd_scope = jwt.encode({"sub": "acme", "scope": "admin", "aud": AUDIENCE, "iat": now, "exp": now + 60},
                           SECRET, algorithm=ALGORITHM)
    with pytest.raises(TokenError, match="scope"):
        verify(SECRET, odd_scope)
