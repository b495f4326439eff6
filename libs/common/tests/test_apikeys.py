"""API keys: the format, the keyed hash, the pepper and a key's status over its lifetime."""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from longrun_common import apikeys
from longrun_common.apikeys import KeyStatus, check_name, check_scopes, check_tenant, digest, key_id_of, matches
from longrun_common.settings import DEV_TOKEN_SECRET, Settings

pytestmark = pytest.mark.unit

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass
class Row:
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    grace_until: datetime | None = None
    replaced_by: str | None = None


def test_new_keys_have_the_documented_shape_and_are_unique() -> None:
    made = [apikeys.new_key() for _ in range(200)]
    for key_id, key in made:
        prefix, ident, secret = key.split("_", 2)
        assert (prefix, ident) == ("lr", key_id)
        assert re.fullmatch(r"[a-z0-9]{12}", key_id)
        assert len(secret) == 43 and secret.isalnum()
        assert key_id_of(key) == key_id
    assert len({key for _, key in made}) == len({key_id for key_id, _ in made}) == 200


@pytest.mark.parametrize(
    "text",
    [
        "",
        "dev-key",
        "lr_",
        "lr_abcdefghijkl",
        "lr_abcdefghijkl_" + "a" * 42,  # one short
        "lr_abcdefghijkl_" + "a" * 44,  # one long
        "lr_ABCDEFGHIJKL_" + "a" * 43,  # ids are lowercase
        "LR_abcdefghijkl_" + "a" * 43,
        "lr_abcdefghijkl_" + "a" * 42 + "-",
        "lr_abcdefghijkl_" + "a" * 43 + "\n",
        " lr_abcdefghijkl_" + "a" * 43,
    ],
)
def test_anything_but_the_exact_format_is_not_a_sql_key(text: str) -> None:
    assert key_id_of(text) is None


def test_the_hash_is_a_keyed_hmac_of_the_whole_key_and_never_contains_it() -> None:
    key_id, key = apikeys.new_key()
    stored = digest(b"p" * 32, key)
    assert stored == hmac.new(b"p" * 32, key.encode(), hashlib.sha256).hexdigest()
    assert len(stored) == 64 and key.split("_")[2] not in stored and key_id not in stored
    assert stored != hashlib.sha256(key.encode()).hexdigest()  # keyed: a database copy alone confirms nothing
    assert matches(b"p" * 32, key, stored)
    assert not matches(b"q" * 32, key, stored)  # another pepper
    assert not matches(b"p" * 32, key[:-1] + ("A" if key[-1] != "A" else "B"), stored)
    assert not matches(b"p" * 32, key, "")


def test_the_pepper_is_the_setting_or_derived_from_the_token_secret_but_never_equal_to_it() -> None:
    derived = apikeys.pepper(Settings())
    assert derived != DEV_TOKEN_SECRET.encode() and len(derived) == 32
    assert apikeys.pepper(Settings(token_secret="t" * 40)) != derived
    assert apikeys.pepper(Settings(api_key_pepper="x" * 32)) == b"x" * 32


def test_a_short_pepper_is_refused() -> None:
    with pytest.raises(ValidationError, match="LONGRUN_API_KEY_PEPPER must be at least 32"):
        Settings(api_key_pepper="short")


def test_status_over_a_keys_life() -> None:
    later = NOW + timedelta(hours=1)
    assert apikeys.status(Row(), NOW) is KeyStatus.ACTIVE
    assert apikeys.status(Row(expires_at=later), NOW) is KeyStatus.ACTIVE
    assert apikeys.status(Row(expires_at=NOW), NOW) is KeyStatus.EXPIRED
    assert apikeys.status(Row(revoked_at=NOW - timedelta(days=1), expires_at=later), NOW) is KeyStatus.REVOKED
    rotated = Row(replaced_by="x" * 12, grace_until=later)
    assert apikeys.status(rotated, NOW) is KeyStatus.ROTATED
    assert apikeys.status(rotated, later) is KeyStatus.EXPIRED
    # An expiry before the end of the grace period wins; so does a revocation during it.
    assert apikeys.status(Row(replaced_by="x", grace_until=later, expires_at=NOW), NOW) is KeyStatus.EXPIRED
    assert apikeys.status(Row(replaced_by="x", grace_until=later, revoked_at=NOW), NOW) is KeyStatus.REVOKED
    # SQLite hands back naive datetimes, written as UTC.
    assert apikeys.status(Row(expires_at=later.replace(tzinfo=None)), NOW) is KeyStatus.ACTIVE


def test_names_tenants_and_scopes_are_checked() -> None:
    assert check_scopes(["admin", "jobs", "admin"]) == ["jobs", "admin"]
    with pytest.raises(ValueError, match="unknown \\['root'\\]"):
        check_scopes(["jobs", "root"])
    with pytest.raises(ValueError, match="at least one"):
        check_scopes([])
    assert check_tenant("acme-1") == "acme-1"
    with pytest.raises(ValueError, match="tenant 'a b'"):
        check_tenant("a b")
    with pytest.raises(ValueError, match="name"):
        check_name("")
    with pytest.raises(ValueError, match="name"):
        check_name("x\n")
    with pytest.raises(ValueError, match="name"):
        check_name("x" * 129)
