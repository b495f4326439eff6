"""Settings: production refuses dev secrets; API keys and tenant names are checked at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from longrun_common.settings import DEV_API_KEYS, DEV_TOKEN_SECRET, Settings
from longrun_common.strength import KNOWN_DEVELOPMENT_VALUES, MIN_SECRET_LENGTH, estimated_bits, weakness

pytestmark = pytest.mark.unit


def test_production_refuses_development_secrets() -> None:
    with pytest.raises(ValidationError, match="LONGRUN_API_KEYS must not be the development value"):
        Settings(env="production", api_keys=DEV_API_KEYS, token_secret=SECRET)
    with pytest.raises(ValidationError, match=r"LONGRUN_API_KEY_PEPPER .*distinct characters"):
        Settings(env="production", token_secret=SECRET, api_key_pepper="ab" * 20)
    with pytest.raises(ValidationError, match="LONGRUN_TOKEN_SECRET must be set"):
        Settings(env="production", api_keys=f"acme:{KEY_A}", token_secret=DEV_TOKEN_SECRET)
    with pytest.raises(ValidationError, match="at least 32"):
        Settings(env="production", api_keys=f"acme:{KEY_A}", token_secret="short")
    settings = Settings(env="production", api_keys=f"acme:{KEY_A},beta:{KEY_B}", token_secret=SECRET)
    assert settings.tenant_by_key == {KEY_A: "acme", KEY_B: "beta"}
    # Keys in SQL only (the bootstrap variable empty) is how production is meant to run.
    assert Settings(env="production", token_secret=SECRET, api_key_pepper=KEY_B).tenant_by_key == {}


# Generated the way the README says (secrets.token_urlsafe(32)); fixed so the test is deterministic.
KEY_A = "q3Vd0n8Zr1uXwq7Jc2LkP9mE4sHt6yBa"
KEY_B = "N7fKx2Qp9LmZ4cW1vRt8YbHs3JdG6eUa"
SECRET = "Zp4mQ8vN2xLk7cR1tW9yHb3JsF6dG0eA"


@pytest.mark.parametrize(
    ("api_keys", "secret", "fragment"),
    [
        # The development key mixed in with real ones, under any tenant (the adversarial run's cases).
        (f"dev:dev-key,alpha:{KEY_A}", SECRET, "tenant 'dev' is a development value"),
        (f"alpha:{KEY_A},ops:dev-key", SECRET, "tenant 'ops' is a development value"),
        (f"alpha:{KEY_A},beta:acme-key", SECRET, "tenant 'beta' is a development value"),
        (f"alpha:{KEY_A},beta:x", SECRET, "tenant 'beta' is 1 characters; production needs at least 32"),
        (f"alpha:{'k' * 31}", SECRET, "is 31 characters"),
        (f"alpha:{'a' * 40}", SECRET, "only 1 distinct characters"),
        (f"alpha:{'abcdefgh' * 5}", SECRET, "repeated pattern"),
        (f"alpha:{KEY_A}", " " * 32, "LONGRUN_TOKEN_SECRET has leading or trailing whitespace"),
        (f"alpha:{KEY_A}", "a" * 32, "LONGRUN_TOKEN_SECRET uses only 1 distinct characters"),
        (f"alpha:{KEY_A}", "aaaaaaaaaaaaaaaaaaaaaaaabcdefghi", "LONGRUN_TOKEN_SECRET looks guessable"),
        (f"alpha:{KEY_A}", "dev-key", "LONGRUN_TOKEN_SECRET is a development value"),
        (f"alpha:{KEY_A}", KEY_A, "must not also be an API key"),
        (f"{DEV_API_KEYS},alpha:{KEY_A}", SECRET, "development value"),
    ],
)
def test_production_refuses_weak_or_development_credentials(api_keys: str, secret: str, fragment: str) -> None:
    with pytest.raises(ValidationError, match=fragment) as exc:
        Settings(env="production", api_keys=api_keys, token_secret=secret)
    # The error names the tenant, never the key itself.
    assert KEY_A not in str(exc.value) or fragment == "must not also be an API key"


def test_generated_secrets_pass_and_development_values_are_known() -> None:
    import secrets

    for _ in range(2000):
        assert weakness(secrets.token_urlsafe(32)) is None
        assert weakness(secrets.token_hex(16)) is None
    assert DEV_TOKEN_SECRET in KNOWN_DEVELOPMENT_VALUES
    assert DEV_API_KEYS.partition(":")[2] in KNOWN_DEVELOPMENT_VALUES
    assert MIN_SECRET_LENGTH == 32
    assert estimated_bits("a" * 32) == 0 and estimated_bits("") == 0
    assert 120 < estimated_bits("".join(chr(33 + i) for i in range(32))) <= 160  # 32 distinct: 5 bits each


def test_development_keeps_its_short_keys() -> None:
    assert Settings(api_keys="dev:dev-key,acme:acme-key").tenant_by_key == {"dev-key": "dev", "acme-key": "acme"}


def test_tenant_names_that_cannot_be_folders_are_refused() -> None:
    with pytest.raises(ValidationError, match="acme corp"):
        Settings(api_keys="acme corp:k1")
    with pytest.raises(ValidationError, match="not of the form tenant:key"):
        Settings(api_keys="justakey")
    assert Settings(api_keys="acme-1:k1,beta.co:k2").tenant_by_key == {"k1": "acme-1", "k2": "beta.co"}


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert Settings(database_url="postgresql://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
    assert Settings(database_url="postgres://u@h/db").sqlalchemy_url == "postgresql+psycopg://u@h/db"
