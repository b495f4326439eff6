"""How production judges a secret: long enough, not a known development value, not guessable by its shape.

An API key or the token secret is a bearer credential: whoever holds it is the tenant (or can mint stream
tokens). The checks here are cheap, deterministic estimates, made once at start-up; they refuse the values a
human types by hand (`dev-key`, 32 spaces, `'a' * 32`, `abcdabcd…`) while every generated secret passes
(`secrets.token_urlsafe(32)`, `openssl rand -hex 32`, even `secrets.token_hex(16)`).
"""

from __future__ import annotations

import math
from collections import Counter

# Production keys and secrets are at least this long (README, Configuration).
MIN_SECRET_LENGTH = 32
# Estimated bits: length x Shannon entropy of the string's own character frequencies. A random 32-character
# hex string scores about 115 (the lowest of 100,000 samples: 92); 'a' * 32 scores 0.
MIN_ENTROPY_BITS = 80.0
MIN_DISTINCT_CHARACTERS = 8
# Values that ship with Longrun (its development defaults and its documentation's examples).
KNOWN_DEVELOPMENT_VALUES = frozenset({
    "dev-key",
    "acme-key",
    "longrun-dev-token-secret-change-me-in-production",
})


def estimated_bits(value: str) -> float:
    """`len(value)` times the Shannon entropy (bits per character) of the value's character distribution."""
    if not value:
        return 0.0
    counts = Counter(value)
    n = len(value)
    return -n * sum(c / n * math.log2(c / n) for c in counts.values())


def weakness(value: str) -> str | None:
    """Why `value` is unfit to be a production credential, or None when it is fit. Never quotes the value."""
    if value in KNOWN_DEVELOPMENT_VALUES:
        return "is a development value that ships with Longrun"
    if len(value) < MIN_SECRET_LENGTH:
        return f"is {len(value)} characters; production needs at least {MIN_SECRET_LENGTH}"
    if value.strip() != value or not value.strip():
        return "has leading or trailing whitespace"
    distinct = len(set(value))
    if distinct < MIN_DISTINCT_CHARACTERS:
        return f"uses only {distinct} distinct characters; production needs at least {MIN_DISTINCT_CHARACTERS}"
    if value in (value + value)[1:-1]:
        return "is a repeated pattern"
    bits = estimated_bits(value)
    if bits < MIN_ENTROPY_BITS:
        return f"looks guessable (about {bits:.0f} bits of entropy; production needs {MIN_ENTROPY_BITS:.0f})"
    return None
